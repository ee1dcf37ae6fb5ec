"""What an exported model says about itself, and where it goes: its model card (`README.md`, the Hugging Face
hub's format) and the upload to the hub.

The card names the base model and the adapter it was merged from, the recipe of the fit (the `config.yaml`
LightningCLI saved in the run) and the data sources that recipe names, the fit's before/after table on its eval
set with each change's paired 95% interval (`before_after.json`), and the export's own check (greedy answers of
the merged model against base + adapter).
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from huggingface_hub import HfApi, ModelCard, ModelCardData

from mbpo_lit.evaluation.tables import format_change
from mbpo_lit.vlm.hub import looks_local

TAGS = ["mbpo", "mbpo_lit", "preference-optimization", "grpo", "lora", "merged", "vision-language"]
# The recipe keys under `data:` that name sources.
DATA_KEYS = {"pairs": "offline pairs", "online": "online prompts", "val": "eval set"}


@dataclass
class CardFacts:
    """What the card reports, gathered by the export."""

    base_model: str
    adapter: str
    precision: str
    recipe: dict | None = None
    recipe_path: Path | None = None
    before_after: dict | None = None
    check: dict = field(default_factory=dict)
    revision: str | None = None  # the base model's hub revision, where one was pinned


def find_recipe(run: Path) -> Path | None:
    """The fit's `config.yaml` (LightningCLI saves it in the run's log folder): the newest one under `run`."""
    found = sorted(run.rglob("config.yaml"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def read_recipe(path: Path | None) -> dict | None:
    """A saved recipe as a dict, or None."""
    return yaml.safe_load(path.read_text()) if path else None


def recipe_model_settings(recipe: dict | None) -> dict:
    """A recipe's model settings (`model.model`: name_or_path, revision, image budget, ...), {} if none."""
    return ((recipe or {}).get("model") or {}).get("model") or {}


def recipe_model(recipe: dict | None) -> str | None:
    """The base model a recipe trained (`model.model.name_or_path`)."""
    return recipe_model_settings(recipe).get("name_or_path")


def recipe_revision(recipe: dict | None) -> str | None:
    """The hub revision of the base model a recipe trained (`model.model.revision`), if it pinned one."""
    return recipe_model_settings(recipe).get("revision")


def describe_source(value) -> str:
    """A source as the recipe names it, in one line: "Pope(path=..., n=600)" or a path."""
    if isinstance(value, dict) and "class_path" in value:
        args = ", ".join(f"{k}={v!r}" for k, v in (value.get("init_args") or {}).items())
        return f"{value['class_path'].rpartition('.')[2]}({args})"
    if isinstance(value, list):
        return "; ".join(describe_source(v) for v in value)
    return str(value)


def recipe_sources(recipe: dict | None) -> dict[str, str]:
    """The data sources a recipe names (pairs, online prompts, eval set), each in one line."""
    data = (recipe or {}).get("data") or {}
    return {what: describe_source(data[key]) for key, what in DATA_KEYS.items() if data.get(key) is not None}


def hub_datasets(recipe: dict | None) -> list[str]:
    """The hub dataset ids among a recipe's sources (for the card's metadata)."""
    data = (recipe or {}).get("data") or {}
    values = [data.get(k) for k in DATA_KEYS]
    flat = [v for x in values for v in (x if isinstance(x, list) else [x])]
    paths = [v.get("init_args", {}).get("path") if isinstance(v, dict) else v for v in flat]
    return sorted({p for p in paths if isinstance(p, str) and p != "embedded" and not looks_local(p)})


def _cell(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def before_after_table(results: dict) -> str:
    """A fit's `before_after.json` as a markdown table: metric, before, after, change [95% CI]."""
    before, after, change = results["before"]["summary"], results["after"]["summary"], results.get("change", {})
    lines = ["| metric | before | after | change [95% CI] |", "| --- | --- | --- | --- |"]
    for metric in dict.fromkeys([*before, *after]):
        c = change.get(metric)
        delta = format_change(c) if c else "-"
        lines.append(f"| {metric} | {_cell(before.get(metric, '-'))} | {_cell(after.get(metric, '-'))} | {delta} |")
    return "\n".join(lines)


def library_version() -> str:
    """This library's installed version (the card says which code trained and merged the model)."""
    try:
        return importlib.metadata.version("mbpo_lit")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _body(facts: CardFacts, version: str) -> list[str]:
    lines = [
        "# MBPO: merged model",
        "",
        f"LoRA adapters trained with MBPO's hybrid GRPO (mbpo_lit {version}) merged into their base model, "
        f"saved in {facts.precision}: a plain transformers checkpoint, with its processor.",
        "",
        "```python",
        "from transformers import AutoModelForImageTextToText, AutoProcessor",
        "",
        'model = AutoModelForImageTextToText.from_pretrained("<this folder or repo>")',
        'processor = AutoProcessor.from_pretrained("<this folder or repo>")',
        "```",
        "",
        "## Provenance",
        "",
        f"- base model: `{facts.base_model}`" + (f" at revision `{facts.revision}`" if facts.revision else ""),
        f"- adapter: `{facts.adapter}`",
        f"- library: mbpo_lit {version}",
    ]
    sources = recipe_sources(facts.recipe)
    if sources:
        lines += ["", "## Data", ""] + [f"- {what}: `{text}`" for what, text in sources.items()]
    if facts.before_after:
        lines += ["", "## Before / after", "", "The fit's eval set, the starting policy against the trained one;"]
        lines += ["each change with its paired 95% bootstrap interval.", "", before_after_table(facts.before_after)]
    if facts.check:
        c = facts.check
        lines += [
            "",
            "## Export check",
            "",
            f"Greedy answers of this checkpoint equal base + adapter's on {c['records']} {c['source']} records; "
            f"the adapter changes {c['changed_by_adapter']} of them against the base.",
        ]
    if facts.recipe:
        lines += ["", "## Recipe", "", f"The fit's configuration (`{facts.recipe_path}`):", "", "<details>", ""]
        lines += ["```yaml", yaml.safe_dump(facts.recipe, sort_keys=False).rstrip(), "```", "", "</details>"]
    return lines


def model_card(facts: CardFacts) -> ModelCard:
    """The card of a merged model (see the module docstring). Metadata names the base model and datasets only
    when they are hub ids (the hub refuses anything else there)."""
    version = library_version()
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-text-to-text",
        tags=TAGS,
        base_model=None if looks_local(facts.base_model) else facts.base_model,
        datasets=hub_datasets(facts.recipe) or None,
    )
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(_body(facts, version)) + "\n")


def push_folder(folder: Path, repo: str, private: bool) -> str:
    """Upload an exported folder to a hub model repo (created if absent; an existing repo keeps its visibility)
    and return the repo id. Needs a network and a token (`hf auth login` or HF_TOKEN)."""
    api = HfApi()
    url = api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
    repo_id = getattr(url, "repo_id", None) or repo
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model", commit_message="mbpo_lit export")
    return repo_id
