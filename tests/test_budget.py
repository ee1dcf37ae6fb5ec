"""The image budget (`min_pixels` / `max_pixels`): it caps a large image's tokens, mining, training and evaluation
apply the same one, mining records it and refuses to resume under another, and bad values are named."""

import dataclasses
import json
import shutil
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

import mbpo_lit.vlm.policy as policy_module
from mbpo_lit.core.errors import SettingsError
from mbpo_lit.evaluation.evaluator import EvalConfig, evaluate_model
from mbpo_lit.mining import MineConfig, mine_pairs
from mbpo_lit.mining.config import budget_mismatch, settings_json
from mbpo_lit.mining.job import claim_output
from mbpo_lit.testbed.tiny import ensure_tiny_checkpoint
from mbpo_lit.testbed.world_source import WorldSource
from mbpo_lit.train.remine import Remine
from mbpo_lit.vlm.arch import load_processor, pixel_budget
from mbpo_lit.vlm.chat import encode_prompts
from mbpo_lit.vlm.policy import ModelConfig, load_policy

# The released Qwen-VL checkpoints' own bounds: 56x56 px up to 12.8 M px (a 4K photograph is about 10,000 tokens).
RELEASED = {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 16384}


def released_copy(arch: str, root: Path, out: Path) -> Path:
    """A tiny checkpoint whose image processor keeps each resolution as the released ones do (the tiny ones pin
    every image to 56x56 px)."""
    src = ensure_tiny_checkpoint(arch, root)
    out.mkdir(exist_ok=True)
    for f in src.iterdir():
        if f.name != "preprocessor_config.json" and not (out / f.name).exists():
            shutil.copy(f, out / f.name)
    config = json.loads((src / "preprocessor_config.json").read_text()) | {"size": RELEASED}
    (out / "preprocessor_config.json").write_text(json.dumps(config))
    return out


@pytest.fixture(scope="module")
def released(tiny_root, tmp_path_factory):
    return str(released_copy("qwen2_5_vl", tiny_root, tmp_path_factory.mktemp("released")))


def image_tokens(processor, image) -> tuple[int, int]:
    """(image tokens in the prompt, patches of 14 px in pixel_values) of one prompt with `image`."""
    batch = encode_prompts(processor, ["What is in the picture?"], [image])
    return int((batch["input_ids"] == processor.image_token_id).sum()), int(batch["pixel_values"].shape[0])


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen2_vl"])
def test_a_budget_caps_a_large_images_tokens_and_lifts_a_small_ones(arch, tiny_root, tmp_path):
    path = released_copy(arch, tiny_root, tmp_path / arch)
    photo = Image.fromarray((np.random.default_rng(0).random((768, 1024, 3)) * 255).astype("uint8"))
    budget = 256 * 28 * 28
    capped = load_processor(path, arch, max_pixels=budget)
    ip = capped.image_processor
    per_token, per_patch = (ip.patch_size * ip.merge_size) ** 2, ip.patch_size**2
    tokens, patches = image_tokens(capped, photo)
    assert 0 < tokens <= budget // per_token and patches <= budget // per_patch
    uncapped_tokens, _ = image_tokens(load_processor(path, arch), photo)
    assert uncapped_tokens > budget // per_token  # the same photograph costs more without the budget
    floor = 64 * 28 * 28
    tiny = Image.fromarray(np.zeros((56, 56, 3), dtype="uint8"))
    lifted, _ = image_tokens(load_processor(path, arch, min_pixels=floor), tiny)
    assert lifted * per_token >= floor and image_tokens(load_processor(path, arch), tiny)[0] < lifted


def record_budgets(monkeypatch) -> list[dict]:
    """Every processor that `load_policy` builds from now on, as its `pixel_budget`, in order."""
    seen: list[dict] = []

    def spy(*args, **kwargs):
        processor = load_processor(*args, **kwargs)
        seen.append(pixel_budget(processor))
        return processor

    monkeypatch.setattr(policy_module, "load_processor", spy)
    return seen


def test_mining_training_and_evaluation_apply_the_same_budget(released, tmp_path, monkeypatch, capsys):
    from test_module import module

    budget = {"min_pixels": 56 * 56, "max_pixels": 2 * 56 * 56}
    assert pixel_budget(load_processor(released, "qwen2_5_vl")) != budget  # the checkpoint's own is another
    seen = record_budgets(monkeypatch)
    world = WorldSource(["train"], 2)
    mine_cfg = MineConfig(model=released, source=world, out=str(tmp_path / "m"), n=2, steps=1, iig_filter="none")
    mine_pairs(dataclasses.replace(mine_cfg, **budget), progress=False)
    summary = json.loads((tmp_path / "m" / "summary.json").read_text())
    assert {k: summary[k] for k in budget} == budget  # the budget the pairs were mined under is recorded
    evaluate_model(EvalConfig(model=released, data=WorldSource(["eval_counter_prior"], 2), max_new_tokens=2, **budget))
    fit = module(released)
    fit.model_config = dataclasses.replace(fit.model_config, quantization="none", **budget)
    fit.configure_model()
    assert seen == [budget] * 3  # mining, evaluation, training
    assert pixel_budget(fit.processor) == budget


def test_resuming_a_mining_job_under_another_budget_is_refused(tmp_path):
    cfg = MineConfig(model="m", source="records.jsonl", out=str(tmp_path / "m"), max_pixels=200704)
    claim_output(cfg)
    (tmp_path / "m" / "shards" / "00000000-00000016.parquet").write_bytes(b"")
    claim_output(cfg)  # the same budget resumes
    for other in ({"max_pixels": 100352}, {"max_pixels": None}, {"min_pixels": 6272}):
        with pytest.raises(SettingsError, match="other settings"):
            claim_output(dataclasses.replace(cfg, **other))
    # A job's settings without a budget are those written before the budget existed: such a job still resumes.
    assert "pixels" not in settings_json(dataclasses.replace(cfg, max_pixels=None))


def test_pairs_mined_under_another_budget_are_named_and_remining_uses_the_fits(tiny_pairs, tmp_path):
    path, pairs = tiny_pairs
    folder = Path(pairs).parent
    mined = pixel_budget(load_processor(path, "qwen2_5_vl"))
    assert budget_mismatch(folder, mined) is None
    assert budget_mismatch(tmp_path, {"min_pixels": 1, "max_pixels": 2}) is None  # nothing recorded: no claim
    fit_cfg = ModelConfig(path, max_pixels=4 * 56 * 56)
    fit = SimpleNamespace(model_config=fit_cfg, processor=load_processor(path, "qwen2_5_vl", max_pixels=4 * 56 * 56))
    note = budget_mismatch(folder, pixel_budget(fit.processor))
    assert note and "'max_pixels': 3136" in note and "'max_pixels': 12544" in note
    with pytest.warns(UserWarning, match="Remine: the pairs in .* were mined under the image budget"):
        cfg = Remine(every_n_steps=1).config(fit, pairs, step=1)
    assert cfg.max_pixels == 4 * 56 * 56 and cfg.min_pixels is None  # the budget the re-mined pairs are mined under
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Remine(every_n_steps=1).config(SimpleNamespace(model_config=ModelConfig(path), processor=None), pairs, 1)


def test_a_fit_whose_pairs_were_mined_under_another_budget_warns_as_the_model_loads(tiny_pairs):
    """The fit's processor resizes the pairs' images to its own budget: a fit names the mismatch as its model
    loads (before any step), and says nothing when the budgets agree."""
    from test_module import module

    path, pairs = tiny_pairs
    for max_pixels, warns in [(4 * 56 * 56, True), (None, False)]:
        fit = module(path)
        fit.model_config = dataclasses.replace(fit.model_config, max_pixels=max_pixels)
        fit._trainer = SimpleNamespace(datamodule=SimpleNamespace(pairs_path=pairs))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fit.configure_model()
        said = [str(w.message) for w in caught if str(w.message).startswith("data.pairs: ")]
        assert len(said) == warns and all("were mined under the image budget" in m for m in said), said


@pytest.mark.parametrize(
    "budget, message",
    [
        ({"min_pixels": 0}, r"min_pixels=0 must be a positive whole number"),
        ({"max_pixels": 2.5e5}, r"max_pixels=250000.0 must be a positive whole number"),
        ({"min_pixels": 10_000, "max_pixels": 5_000}, r"min_pixels=10000 is above max_pixels=5000"),
        ({"min_pixels": 2 * 12845056}, r"min_pixels=25690112: min_pixels 25690112 would be above max_pixels"),
        ({"min_pixels": 100, "max_pixels": 500}, r"max_pixels=500 is below one image token \(784 pixels"),
    ],
)
def test_a_bad_budget_is_refused_in_one_line_naming_the_option(released, budget, message):
    with pytest.raises(SettingsError, match=message) as err:
        load_policy(ModelConfig(released, precision="fp32", quantization="none", lora=None, device="cpu", **budget))
    assert "\n" not in str(err.value)


def test_the_mine_and_evaluate_options_are_checked_before_any_model_loads(tmp_path):
    with pytest.raises(SettingsError, match=r"--min_pixels 9 is above --max_pixels 8"):
        mine_pairs(MineConfig(model="none", source="none", out=str(tmp_path / "m"), min_pixels=9, max_pixels=8))
    assert not (tmp_path / "m").exists()
    with pytest.raises(SettingsError, match=r"--max_pixels -1 must be a positive"):
        evaluate_model(EvalConfig(model="none", data="no-such-data", max_pixels=-1))


def test_llava_takes_a_budget_its_one_size_meets_and_refuses_one_it_breaks(tiny_root):
    path = ensure_tiny_checkpoint("llava", tiny_root)  # every image becomes 56x56 px: 3136 pixels
    own = pixel_budget(load_processor(path, "llava"))
    assert own == {"min_pixels": 3136, "max_pixels": 3136}
    assert pixel_budget(load_processor(path, "llava", min_pixels=1000, max_pixels=1003520)) == own  # no effect
    with pytest.raises(SettingsError, match=r"max_pixels=3000: this model resizes every image to 56x56"):
        load_processor(path, "llava", max_pixels=3000)
    with pytest.raises(SettingsError, match=r"min_pixels=4000: this model resizes every image to 56x56"):
        load_policy(ModelConfig(str(path), quantization="none", lora=None, device="cpu", min_pixels=4000))


def test_the_qwen_recipes_set_the_usual_budget_and_llavas_none():
    import yaml

    from mbpo_lit.fit import recipe

    for name in ("qwen2_5_vl_7b_qlora", "qwen2_vl_7b_qlora", "qwen2_5_vl_7b_ddp", "llava_1_5_7b_qlora"):
        model = yaml.safe_load(Path(recipe(name)).read_text())["model"]["model"]
        expected = (None, None) if name.startswith("llava") else (56 * 56, 1280 * 28 * 28)
        assert (model.get("min_pixels"), model.get("max_pixels")) == expected, name
