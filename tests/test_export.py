"""`python -m mbpo_lit export`: a short fit on a tiny checkpoint, then export, gives a folder that
`AutoModelForImageTextToText` and `AutoProcessor` load, with a model card, whose greedy answers equal base +
adapter's; quantized merges, missing adapters and a merged model that answers differently are refused in one line;
the folder is written whole or not at all; `--push_to_hub` uploads it (the hub mocked at the network boundary)."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import HfApi, ModelCard
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageTextToText, AutoProcessor, ProcessorMixin

from mbpo_lit.evaluation import greedy_answers
from mbpo_lit.export import main
from mbpo_lit.fit import main as fit
from mbpo_lit.testbed.tiny import ensure_tiny_checkpoint
from mbpo_lit.train import merge
from mbpo_lit.train.card import library_version
from mbpo_lit.vlm.arch import ARCHS
from mbpo_lit.vlm.policy import ModelConfig, load_policy, save_adapter

QUESTIONS = ["What color is it?", "Is there a cat in the image? Answer yes or no.", "Describe the image.", "How many?"]
MODEL_FILES = {"config.json", "generation_config.json", "model.safetensors", "README.md"}
PROCESSOR_FILES = {"tokenizer.json", "tokenizer_config.json", "processor_config.json", "chat_template.jinja"}


def perturb(adapter: Path, seed: int = 0, scale: float = 0.5) -> None:
    """Make an adapter change answers: random LoRA B weights (a 2-step fit, or a fresh adapter, barely moves a
    greedy answer, and a check that equal answers come out would prove nothing)."""
    file = adapter / "adapter_model.safetensors"
    weights = load_file(file)
    g = torch.Generator().manual_seed(seed)
    save_file({k: torch.randn(v.shape, generator=g) * scale if "lora_B" in k else v for k, v in weights.items()}, file)


def fresh_adapter(path: Path, arch: str, out: Path) -> Path:
    """A perturbed LoRA adapter of a tiny checkpoint, saved as fit saves one."""
    model = AutoModelForImageTextToText.from_pretrained(path)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=ARCHS[arch].lora_target_regex(), task_type="CAUSAL_LM")
    save_adapter(get_peft_model(model, lora), out)
    perturb(out)
    return out


def stock_processor(path: Path, monkeypatch) -> ProcessorMixin:
    """`AutoProcessor.from_pretrained(path)`, as a deployment calls it. Qwen-VL's stock processor also builds a
    torchvision video processor; where torchvision is missing (it is not installable beside the CPU torch wheel),
    a stand-in takes that one part's place, and every other part loads as AutoProcessor loads it."""
    try:
        import torchvision  # noqa: F401

        return AutoProcessor.from_pretrained(path)
    except ImportError:
        pass
    config = json.loads((path / "config.json").read_text())
    if config["model_type"] == "llava":
        return AutoProcessor.from_pretrained(path)
    with pytest.raises(ImportError, match="[Tt]orchvision"):  # the only part that needs the stand-in
        AutoProcessor.from_pretrained(path)
    check = ProcessorMixin.check_argument_for_proper_class
    monkeypatch.setattr(
        ProcessorMixin,
        "check_argument_for_proper_class",
        lambda self, name, arg: None if name == "video_processor" else check(self, name, arg),
    )

    class NoVideo(dict):
        def to_dict(self):
            return {}

    return AutoProcessor.from_pretrained(path, video_processor=NoVideo())


def assert_deployable(out: Path, base: str, adapter: str, photos, monkeypatch) -> list[str]:
    """The folder loads with plain transformers (no peft) and answers as base + adapter: returns the answers."""
    assert MODEL_FILES | PROCESSOR_FILES <= {p.name for p in out.iterdir()}
    assert not out.with_name(out.name + ".tmp").exists()
    model = AutoModelForImageTextToText.from_pretrained(out)
    assert not [n for n, _ in model.named_parameters() if "lora_" in n]
    processor = stock_processor(out, monkeypatch)
    assert type(processor).__name__ in ("Qwen2_5_VLProcessor", "Qwen2VLProcessor", "LlavaProcessor")
    source = json.loads((Path(base) / "tokenizer_config.json").read_text())
    assert json.loads((out / "tokenizer_config.json").read_text()).get("padding_side") == source.get("padding_side")
    merged = greedy_answers(model, processor, QUESTIONS, photos, max_new_tokens=8, progress=False)
    policy = load_policy(ModelConfig(base, "fp32", "none", lora=None, adapter_path=adapter))
    expected = greedy_answers(policy.model, policy.processor, QUESTIONS, photos, max_new_tokens=8, progress=False)
    with policy.model.disable_adapter():
        plain = greedy_answers(policy.model, policy.processor, QUESTIONS, photos, max_new_tokens=8, progress=False)
    assert plain != expected, "the adapter changes no answer: the equality below would prove nothing"
    assert merged == expected
    return merged


@pytest.fixture(scope="module")
def fitted_run(tiny_pairs, tmp_path_factory):
    """A 2-step 4-bit fit of the tiny Qwen2.5-VL on the world, validated on 4 records: its run folder."""
    path, pairs = tiny_pairs
    root = tmp_path_factory.mktemp("run")

    def world(splits, n):
        args = {"splits": splits, "n": n, "families": ["attribute"], "world": {"image_size": 56}}
        return {"class_path": "mbpo_lit.testbed.world_source.WorldSource", "init_args": args}

    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "max_steps": 2,
            "default_root_dir": str(root),
            "val_check_interval": 2,
            "limit_val_batches": 1,
            "num_sanity_val_steps": 0,
            "enable_progress_bar": False,
            "enable_model_summary": False,
        },
        "model": {
            "model": {"name_or_path": path, "precision": "fp32", "quantization": "4bit", "lora": {"r": 4, "alpha": 8}},
            "sampling": {"group_size": 2, "max_new_tokens": 4},
            "sample_table_every": 0,
        },
        "data": {
            "pairs": pairs,
            "online": world(["train"], 8),
            "val": world(["eval_in_prior", "eval_counter_prior"], 2),
            "offline_per_batch": 1,
            "online_per_batch": 1,
            "val_n": 2,
        },
    }
    (root / "recipe.yaml").write_text(yaml.safe_dump(config))
    fit(["--config", str(root / "recipe.yaml")])
    perturb(root / "adapter")
    return path, root


def test_a_short_fit_exports_a_deployable_model_with_its_card(fitted_run, photos, monkeypatch, capsys):
    base, run = fitted_run
    result = main(["--run", str(run), "--precision", "fp32"])
    out = run / "merged"
    assert result["out"] == str(out) and result["check"]["records"] == 4
    assert (
        result["check"]["source"] == "world[eval_in_prior,eval_counter_prior]"
        and result["check"]["changed_by_adapter"] > 0
    )
    assert "the same greedy answers as base + adapter on 4" in capsys.readouterr().out
    assert_deployable(out, base, str(run / "adapter"), photos, monkeypatch)
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "transformers" and {"mbpo", "mbpo_lit"} <= set(card.data.tags)
    assert card.data.base_model is None  # a local folder is no hub id: named in the text only
    text = card.text
    assert f"base model: `{base}`" in text and f"adapter: `{run / 'adapter'}`" in text
    results = json.loads((run / "before_after.json").read_text())
    accuracy = results["change"]["accuracy"]
    row = f"{accuracy['change']:+.3f} [{accuracy['ci95_low']:+.3f}, {accuracy['ci95_high']:+.3f}]"
    assert "## Before / after" in text and f"| accuracy | {results['before']['summary']['accuracy']:.3f} |" in text
    assert row in text
    assert "eval set: `WorldSource(splits=['eval_in_prior', 'eval_counter_prior']" in text
    assert "max_steps: 2" in text and f"library: mbpo_lit {library_version()}" in text


@pytest.mark.parametrize("arch", ["llava", "qwen2_vl"])
def test_other_architectures_export_too(arch, tiny_root, tmp_path, photos, monkeypatch):
    base = ensure_tiny_checkpoint(arch, tiny_root)
    adapter = fresh_adapter(base, arch, tmp_path / "adapter")
    out = tmp_path / "merged"
    result = main(["--model", str(base), "--adapter", str(adapter), "--out", str(out), "--precision", "fp32"])
    assert result["check"] == {"records": 4, "source": "synthetic", "changed_by_adapter": 4}
    assert_deployable(out, str(base), str(adapter), photos, monkeypatch)
    assert "## Before / after" not in ModelCard.load(out / "README.md").text  # no run: no table


def run_cli(argv, capsys) -> str:
    """A command line that must fail as a user's mistake: its one error line."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err.strip()
    errors = [line for line in err.splitlines() if line.startswith("error:")]  # beside transformers' progress bars
    assert exit_.value.code == 2 and len(errors) == 1 and err.endswith(errors[0]), err
    return errors[0]


@pytest.mark.parametrize("precision", ["4bit", "8bit", "nf4"])
def test_a_quantized_merge_is_refused_saying_why(precision, tmp_path, capsys):
    argv = [
        "--model",
        str(tmp_path),
        "--adapter",
        str(tmp_path),
        "--out",
        str(tmp_path / "m"),
        "--precision",
        precision,
    ]
    err = run_cli(argv, capsys)
    assert f"--precision {precision!r}" in err and "full-precision" in err and "rounds away" in err


def test_a_missing_adapter_folder_is_named(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    err = run_cli(["--run", str(tmp_path / "run"), "--model", str(tmp_path)], capsys)
    assert f"--adapter {str(tmp_path / 'run' / 'adapter')!r} does not exist" in err
    (tmp_path / "empty").mkdir()
    err = run_cli(
        ["--model", str(tmp_path), "--adapter", str(tmp_path / "empty"), "--out", str(tmp_path / "m")], capsys
    )
    assert "holds no adapter_config.json" in err
    assert not (tmp_path / "m").exists()


def test_an_existing_output_is_kept_unless_overwrite(tmp_path, capsys):
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    (tmp_path / "out").mkdir()
    err = run_cli(
        ["--model", str(tmp_path), "--adapter", str(tmp_path / "adapter"), "--out", str(tmp_path / "out")], capsys
    )
    assert "--out" in err and "--overwrite true" in err


@pytest.fixture
def qwen_adapter(tiny_root, tmp_path):
    base = ensure_tiny_checkpoint("qwen2_5_vl", tiny_root)
    return base, fresh_adapter(base, "qwen2_5_vl", tmp_path / "adapter")


def test_a_merged_model_that_answers_differently_fails_naming_the_record(qwen_adapter, tmp_path, monkeypatch, capsys):
    base, adapter = qwen_adapter
    merged = merge.merge

    def corrupted(model):
        model = merged(model)
        with torch.no_grad():
            model.lm_head.weight.add_(torch.randn_like(model.lm_head.weight))
        return model

    monkeypatch.setattr(merge, "merge", corrupted)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old").write_text("the previous export")
    argv = ["--model", str(base), "--adapter", str(adapter), "--out", str(tmp_path / "out"), "--overwrite", "true"]
    err = run_cli([*argv, "--precision", "fp32", "--check_records", "2"], capsys)
    assert "answers" in err and "record 'synthetic-0': base + adapter" in err and "nothing was written" in err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["old"]  # the previous folder, whole
    assert not (tmp_path / "out.tmp").exists()


def test_a_kill_while_writing_leaves_no_half_folder(qwen_adapter, tmp_path, monkeypatch):
    base, adapter = qwen_adapter
    seen = []

    def killed(processor, folder, *args, **kwargs):  # the model is written, the processor not yet
        seen.append((sorted(p.name for p in tmp_path.iterdir()), sorted(p.name for p in folder.iterdir())))
        raise KeyboardInterrupt

    monkeypatch.setattr(merge, "save_processor", killed)
    with pytest.raises(KeyboardInterrupt):
        main(["--model", str(base), "--adapter", str(adapter), "--out", str(tmp_path / "out"), "--precision", "fp32"])
    # At the kill, the half-written model lay in out.tmp only (a SIGKILL would leave that, never `out`) ...
    assert seen[0][0] == ["adapter", "out.tmp"] and "model.safetensors" in seen[0][1]
    # ... and an interrupted export removes it.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


@pytest.mark.parametrize("private", [None, "false"])
def test_push_to_hub_uploads_model_processor_and_card(private, qwen_adapter, tmp_path, monkeypatch):
    base, adapter = qwen_adapter
    calls, remote = [], tmp_path / "remote"

    class Url(str):
        repo_id = "me/tiny-mbpo"

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs))
        return Url(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, **kwargs):
        calls.append(("upload_folder", kwargs["repo_id"], kwargs))
        shutil.copytree(kwargs["folder_path"], remote)

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    argv = ["--model", str(base), "--adapter", str(adapter), "--out", str(tmp_path / "out"), "--precision", "fp32"]
    argv += ["--check_records", "1", "--push_to_hub", "me/tiny-mbpo"] + (["--private", private] if private else [])
    result = main(argv)
    assert result["repo"] == "me/tiny-mbpo"
    (_, repo, create), (_, uploaded, upload) = calls
    assert repo == uploaded == "me/tiny-mbpo" and create["private"] is (private is None) and create["exist_ok"]
    assert Path(upload["folder_path"]) == tmp_path / "out" and upload.get("repo_type", "model") == "model"
    assert MODEL_FILES | PROCESSOR_FILES <= {p.name for p in remote.iterdir()}
    assert ModelCard.load(remote / "README.md").data.library_name == "transformers"
