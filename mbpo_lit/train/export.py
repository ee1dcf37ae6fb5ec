"""Export a fit as a deployable model: base + trained LoRA adapters merged into one checkpoint, with its
processor and a model card, checked to answer as base + adapters did, and optionally pushed to the hub.

`export_model` is `python -m mbpo_lit export`. It finds what a fit left in its run folder (`--run`: the adapter
`<run>/adapter`, the recipe LightningCLI saved, `before_after.json`), loads the base model in full precision with
the adapter on top, answers the check records greedily, merges (`merge.merge`), saves model and processor into a
temporary folder beside the output, loads that folder back as a deployment would and answers the same records:
only when every answer is the same does the folder get its model card and its final name (an atomic rename, so a
kill leaves the previous folder or none, never half of one).
"""

from __future__ import annotations

import gc
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from jsonargparse import ArgumentParser

from mbpo_lit.core.errors import SettingsError
from mbpo_lit.data.sources import Record, RecordSource, as_source
from mbpo_lit.evaluation import load_eval_set
from mbpo_lit.train import card, merge
from mbpo_lit.vlm.hub import looks_local
from mbpo_lit.vlm.policy import ModelConfig, Policy, check_adapter_path, load_policy


@dataclass
class ExportConfig:
    """Merge a fit's LoRA adapters into their base model and save a deployable checkpoint with its model card."""

    run: str | None = None
    """a fit's `default_root_dir`: gives the adapter (`<run>/adapter`), the base model, the recipe and the
    before/after table (`before_after.json`) unless given below."""
    model: str | None = None
    """the base model, hub id or checkpoint directory (default: the run's recipe's `model.model.name_or_path`)."""
    revision: str | None = None
    """hub revision (branch, tag or commit) of the base model where it is a hub id (default: the recipe's
    `model.model.revision` when the base model is the recipe's)."""
    adapter: str | None = None
    """the peft adapter folder to merge (default: `<run>/adapter`; a checkpoint's is `<ckpt>-adapter`)."""
    out: str | None = None
    """the folder to write (default: `<run>/merged`); it must not exist unless `overwrite`."""
    precision: str = "bf16"
    """dtype of the merge and of the saved weights: bf16, fp16 or fp32. Never 4-bit or 8-bit (refused):
    adapters trained with QLoRA are merged into the unquantized base."""
    data: RecordSource | str | None = None
    """the check's records: a path / hub id or a source with options, as `evaluate --data` (default: the run's
    eval set `data.val`; without either, synthetic questions on a generated image)."""
    check_records: int = 4
    """records whose greedy answers must be the same from the merged model as from base + adapter (0: no check)."""
    check_max_new_tokens: int = 16
    """longest greedy answer of the check."""
    device: str | None = None
    """where to load the model: a torch device such as "cuda:0" or "cpu" (default: the GPU if any, else the CPU)."""
    overwrite: bool = False
    """replace `out` if it exists (only once the new folder is complete and checked)."""
    push_to_hub: str | None = None
    """a hub model repo ("user/name") to upload the folder to once it is written (needs a network and a token)."""
    private: bool = True
    """create the `push_to_hub` repo private (an existing repo keeps its visibility); false to publish."""


@dataclass
class Inputs:
    """What an export reads, resolved from `--run` and the explicit options."""

    model: str
    revision: str | None
    adapter: str
    out: Path
    recipe: dict | None
    recipe_path: Path | None
    before_after: dict | None


def resolve(cfg: ExportConfig) -> Inputs:
    """The base model, adapter, output folder, recipe and before/after results of an export, or one line naming
    the option at fault."""
    merge.check_precision(cfg.precision)
    if cfg.check_records < 0:
        raise SettingsError(f"--check_records {cfg.check_records}: give 0 (no check) or more")
    run = Path(cfg.run).expanduser() if cfg.run else None
    if run is not None and not run.is_dir():
        raise FileNotFoundError(f"--run {cfg.run!r} is not a folder; give a fit's default_root_dir")
    recipe_path = card.find_recipe(run) if run else None
    recipe = card.read_recipe(recipe_path)
    model = cfg.model or card.recipe_model(recipe)
    if model is None:
        raise SettingsError("--model: no base model given, and no recipe of a --run names one")
    if model == "embedded":
        raise SettingsError(
            "--model: the run's recipe names 'embedded'; give the base model's folder (under runs/base)"
        )
    adapter = cfg.adapter or (str(run / "adapter") if run else None)
    if adapter is None:
        raise SettingsError("--adapter: give the adapter folder to merge, or a --run that holds one")
    if looks_local(adapter) and not Path(adapter).expanduser().exists():
        raise FileNotFoundError(f"--adapter {adapter!r} does not exist (fit writes <run>/adapter when it ends)")
    check_adapter_path(adapter)
    out = Path(cfg.out).expanduser() if cfg.out else (run / "merged" if run else None)
    if out is None:
        raise SettingsError("--out: give the folder to write, or a --run to write <run>/merged in")
    if out.exists() and not cfg.overwrite:
        raise SettingsError(f"--out {str(out)!r} exists; give another folder or --overwrite true")
    found = run / "before_after.json" if run else None
    before_after = json.loads(found.read_text()) if found and found.is_file() else None
    # The recipe's pinned revision goes with the recipe's model, named by --model or not.
    revision = cfg.revision or (card.recipe_revision(recipe) if model == card.recipe_model(recipe) else None)
    return Inputs(model, revision, adapter, out, recipe, recipe_path, before_after)


def source_of(value) -> RecordSource | None:
    """A recipe's source value (a path, or `class_path` / `init_args`) as a `RecordSource`, as fit builds it."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--source", type=RecordSource | str | None)
    return as_source(parser.instantiate_classes(parser.parse_object({"source": value})).source)


def check_set(cfg: ExportConfig, recipe: dict | None) -> tuple[list[Record], str]:
    """The check's records and where they come from: `--data`, the recipe's eval set, or synthetic ones."""
    if cfg.check_records == 0:
        return [], "no"
    val = ((recipe or {}).get("data") or {}).get("val")
    source = as_source(cfg.data) if cfg.data is not None else source_of(val) if val is not None else None
    if source is None:
        return merge.synthetic_records(cfg.check_records), "synthetic"
    records, _ = load_eval_set(source)
    return merge.spread(records, cfg.check_records), str(source)


def recipe_budget(recipe: dict | None) -> dict[str, int]:
    """The image budget a fit's recipe set (`model.model.min_pixels` / `max_pixels`), if any."""
    model = card.recipe_model_settings(recipe)
    return {k: model[k] for k in ("min_pixels", "max_pixels") if model.get(k) is not None}


def write_folder(tmp: Path, out: Path) -> None:
    """Give the finished `tmp` folder its final name (replacing an old `out` only now)."""
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


def adapter_answers(policy: Policy, records: list[Record], new_tokens: int) -> tuple[list[str], list[str]]:
    """Greedy answers of base + adapter, and of the base alone (how many the adapter changes, for the report)."""
    if not records:
        return [], []
    expected = merge.answers(policy.model, policy.processor, records, new_tokens)
    with policy.model.disable_adapter():
        return expected, merge.answers(policy.model, policy.processor, records, new_tokens)


def merge_and_reload(policy: Policy, inputs: Inputs, tmp: Path, cfg: ExportConfig, records: list[Record]) -> list:
    """Merge the policy's adapters, save model and processor into `tmp`, free the policy (a 7B model is not held
    twice), load `tmp` back as a deployment would and return its greedy answers to `records`."""
    model, device = policy.model, next(policy.model.parameters()).device
    policy.model = None
    merged = merge.merge(model)
    del model
    merged.save_pretrained(tmp)
    source = str(Path(inputs.model).expanduser()) if looks_local(inputs.model) else inputs.model
    merge.save_processor(policy.processor, tmp, source)
    del merged
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if not records:
        return []
    reloaded, processor = merge.load_merged(tmp, policy.arch, cfg.precision, device)
    return merge.answers(reloaded, processor, records, cfg.check_max_new_tokens)


def export_model(cfg: ExportConfig) -> dict:
    """Merge, save, check, write the card, rename into place and push (see the module docstring)."""
    inputs = resolve(cfg)
    records, where = check_set(cfg, inputs.recipe)  # before the model: a data mistake should not wait for a 7B load
    budget = recipe_budget(inputs.recipe)  # the deployed processor keeps the image budget the fit trained under
    policy = load_policy(
        ModelConfig(
            inputs.model,
            cfg.precision,
            "none",
            lora=None,
            adapter_path=inputs.adapter,
            device=cfg.device,
            revision=inputs.revision,
            **budget,
        )
    )
    expected, base = adapter_answers(policy, records, cfg.check_max_new_tokens)
    tmp = inputs.out.with_name(inputs.out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        got = merge_and_reload(policy, inputs, tmp, cfg, records)
        merge.refuse_mismatches(merge.mismatches(records, expected, got), len(records), cfg.precision)
        changed = sum(a != b for a, b in zip(expected, base))
        check = {"records": len(records), "source": where, "changed_by_adapter": changed} if records else {}
        facts = card.CardFacts(
            inputs.model,
            inputs.adapter,
            cfg.precision,
            inputs.recipe,
            inputs.recipe_path,
            inputs.before_after,
            check,
            inputs.revision,
        )
        card.model_card(facts).save(tmp / "README.md")
        write_folder(tmp, inputs.out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"merged {inputs.adapter} into {inputs.model} ({cfg.precision}): {inputs.out}")
    if records:
        print(
            f"check: the same greedy answers as base + adapter on {len(records)} {where} records "
            f"(the adapter changes {changed} of them against the base)"
        )
    result = {"out": str(inputs.out), "check": check, "answers": got, "base_answers": base}
    if cfg.push_to_hub:
        result["repo"] = card.push_folder(inputs.out, cfg.push_to_hub, cfg.private)
        print(f"pushed to https://huggingface.co/{result['repo']} ({'private' if cfg.private else 'public'})")
    return result
