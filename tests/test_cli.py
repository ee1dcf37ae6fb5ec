"""One command line: `python -m mbpo_lit <command>`, each answering --help and --print_config, none setting the
hub offline, user mistakes as one-line errors."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from mbpo_lit.__main__ import COMMANDS
from mbpo_lit.__main__ import main as entry


def run_entry(argv, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["mbpo_lit", *argv])
    with pytest.raises(SystemExit) as exit_:
        entry(argv)
    return exit_.value.code


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_answers_help_and_print_config_without_setting_the_hub_offline(command, monkeypatch, capsys):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    assert run_entry([command, "--help"], monkeypatch) in (0, None)
    assert "--print_config" in capsys.readouterr().out
    assert run_entry([command, "--print_config"], monkeypatch) in (0, None)
    assert capsys.readouterr().out.strip()
    assert "HF_HUB_OFFLINE" not in os.environ and "HF_DATASETS_OFFLINE" not in os.environ


def test_the_entry_point_lists_the_commands_and_refuses_an_unknown_one(capsys):
    entry([])
    listing = capsys.readouterr().out
    assert all(c in listing for c in COMMANDS)
    with pytest.raises(SystemExit) as exit_:
        entry(["fitt"])
    assert exit_.value.code == 2 and "unknown command 'fitt'" in capsys.readouterr().err


@pytest.mark.slow  # a fresh interpreter
def test_python_dash_m_runs_a_command():
    out = subprocess.run(
        [sys.executable, "-m", "mbpo_lit", "mine", "--help"], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0 and "--source" in out.stdout


@pytest.mark.parametrize(
    "argv, says",
    [
        (
            ["mine", "--model", "no/such/dir", "--source", "missing.jsonl", "--out", "{tmp}/m"],
            "data path 'missing.jsonl' does not exist",
        ),
        (
            ["evaluate", "--model", "{tmp}/no-model", "--data", "{tmp}/x.jsonl"],
            "data path '{tmp}/x.jsonl' does not exist",
        ),
        (
            ["evaluate", "--model", "{tmp}/no-model", "--data", "{tmp}/d.jsonl"],
            "model path '{tmp}/no-model' does not exist",
        ),
        (
            ["evaluate", "--model", "{tmp}/no-model", "--adapter", "{tmp}/no-adapter", "--data", "{tmp}/d.jsonl"],
            "adapter path '{tmp}/no-adapter' holds no adapter_config.json",
        ),
        (["mine", "--model", "m", "--source", "{tmp}/d.jsonl", "--epsilon", "-1"], "--epsilon -1.0 must be > 0"),
        (["mine", "--model", "m", "--source", "{tmp}/d.jsonl", "--iig_fraction", "0"], "--iig_fraction 0.0 must be in"),
        (["fit", "--model.optim.lr", "-1"], "optim: lr=-1.0 and max_grad_norm=1.0 must be > 0"),
        (["fit", "--model.sampling.group_size", "1"], "sampling.group_size=1: must be >= 2"),
        (["fit", "--model.sampling.top_p", "0"], "sampling: temperature=1.0 must be > 0, top_p=0.0 in (0, 1]"),
        (["fit", "--model.loss.eps_low", "-0.1"], "loss: beta=0.1, eps_low=-0.1"),
    ],
)
def test_a_user_mistake_is_one_line_with_exit_code_2(argv, says, tmp_path, monkeypatch, capsys):
    """Missing paths (data, model, adapter) and out-of-range options: one line naming the option or path, exit 2,
    no traceback, before any model loads (docs/reference/errors.md lists each). Run in this process through the
    entry point (`test_an_unreachable_model_hub_id_says_so` runs one in a fresh interpreter)."""
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    (tmp_path / "d.jsonl").write_text('{"image": "a.png", "question": "Is it?", "answer": "yes"}\n')
    argv = [a.format(tmp=tmp_path) for a in argv]
    # Exit code 2 comes only from `cli.user_errors` after its one line; any other exception fails the test here.
    assert run_entry(argv, monkeypatch) == 2
    assert f"error: {says.format(tmp=tmp_path)}" in capsys.readouterr().err


@pytest.mark.slow  # a fresh interpreter
def test_an_unreachable_model_hub_id_says_so(tmp_path, photos):
    photos[0].save(tmp_path / "a.png")
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    (tmp_path / "d.jsonl").write_text('{"image": "a.png", "question": "q", "answer": "yes"}\n')
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "mbpo_lit",
            "evaluate",
            "--model",
            "someone/no-such-model",
            "--data",
            str(tmp_path / "d.jsonl"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "model 'someone/no-such-model' is not a local path and could not be loaded from the hub" in out.stderr


def options_without_help(help_text: str) -> list[str]:
    """The options of a `--help` page that show no help text of their own: argparse prints an option's help after
    it on its line or, for a long invocation, on the next line; jsonargparse then adds "(type: ...)", which is
    all that an undocumented option shows."""
    lines = help_text.splitlines()
    missing = []
    for i, line in enumerate(lines):
        if not line.startswith("  -"):
            continue
        parts = line.strip().split("  ", 1)
        text = parts[1].strip() if len(parts) > 1 else (lines[i + 1].strip() if i + 1 < len(lines) else "")
        if not text or text.startswith(("(type:", "(required, type:")):
            missing.append(parts[0].split(",")[0].split()[0])
    return missing


def test_the_help_check_sees_an_option_without_help():
    page = "options:\n  --n N                 (type: int, default: 3)\n  --model MODEL         a model. (type: str)\n"
    page += "  --a_very_long_option_name A_VERY_LONG_OPTION_NAME\n                        (type: int, default: 1)\n"
    assert options_without_help(page) == ["--n", "--a_very_long_option_name"]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_option_of_every_command_has_help_text(command, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "200")
    assert run_entry([command, "--help"], monkeypatch) in (0, None)
    page = capsys.readouterr().out
    assert page.count("\n  --") > 3, page  # the check reads a real options listing
    missing = options_without_help(page)
    assert not missing, f"`{command} --help`: options without help text: {missing}"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_the_command_reference_lists_every_option(command, monkeypatch, capsys):
    """docs/reference/commands.md is generated from `--help` (docs/reference/make_commands.py): an option added
    without regenerating it fails here."""
    reference = (Path(__file__).parents[1] / "docs" / "reference" / "commands.md").read_text()
    assert run_entry([command, "--help"], monkeypatch) in (0, None)
    options = set(re.findall(r"^  (--[\w.+-]+)", capsys.readouterr().out, re.M))
    assert options and not {o for o in options if o not in reference}, f"regenerate the reference for `{command}`"


@pytest.mark.parametrize("command", ["mine", "evaluate", "export", "export --model"])
def test_a_pinned_hub_revision_reaches_the_hub(command, tmp_path, monkeypatch):
    """`--revision` of mine and evaluate, and for export the recipe's `model.model.revision` (the fit pinned it;
    with `--model` naming the recipe's model too), is the revision the base model's hub files are asked for; a
    model card names a pinned revision."""
    import yaml

    from mbpo_lit.evaluation import EvalConfig, evaluate_model
    from mbpo_lit.mining import MineConfig, mine_pairs
    from mbpo_lit.testbed.world_source import WorldSource
    from mbpo_lit.train.card import CardFacts, model_card
    from mbpo_lit.train.export import ExportConfig, export_model
    from mbpo_lit.vlm import policy

    asked = []

    class Hub:  # the hub, as AutoConfig reaches it: record what is asked for, then be unreachable
        @staticmethod
        def from_pretrained(name, **kwargs):
            asked.append((name, kwargs.get("revision")))
            raise OSError("offline")

    monkeypatch.setattr(policy, "AutoConfig", Hub)
    if command == "mine":
        cfg = MineConfig(
            model="someone/vlm", revision="abc123", source=WorldSource(["train"], 2), n=2, out=str(tmp_path)
        )
        run = lambda: mine_pairs(cfg, progress=False)  # noqa: E731
    elif command == "evaluate":
        cfg = EvalConfig(model="someone/vlm", revision="abc123", data=WorldSource(["eval_in_prior"], 2))
        run = lambda: evaluate_model(cfg)  # noqa: E731
    else:
        (tmp_path / "adapter").mkdir()
        (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
        recipe = {"model": {"model": {"name_or_path": "someone/vlm", "revision": "abc123"}}}
        (tmp_path / "logs").mkdir()
        (tmp_path / "logs" / "config.yaml").write_text(yaml.safe_dump(recipe))
        model = "someone/vlm" if command == "export --model" else None
        run = lambda: export_model(ExportConfig(run=str(tmp_path), model=model))  # noqa: E731
    with pytest.raises(FileNotFoundError, match="someone/vlm"):
        run()
    assert asked == [("someone/vlm", "abc123")]
    card = str(model_card(CardFacts("someone/vlm", "adapter", "bf16", revision="abc123")))
    assert "- base model: `someone/vlm` at revision `abc123`" in card
