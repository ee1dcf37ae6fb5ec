"""LightningCLI for MBPO: the shipped recipes, a recipe's `prepare` hook, and the before/after table a fit prints
on its eval set (`python -m mbpo_lit fit` is `MBPOCLI` on `MBPOModule` and `HybridDataModule`)."""

from __future__ import annotations

import importlib
import inspect
import json
import logging
from importlib.resources import files
from pathlib import Path

from jsonargparse import Namespace
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from mbpo_lit.evaluation import before_after, change_column, format_table

# Lightning advertises a hosted logger at every fit; it says nothing about the run, so the console leaves it out.
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(lambda r: "litlogger" not in r.getMessage())

DEFAULT_RECIPE = "embedded"


def recipe(name: str) -> str:
    """Path of a shipped recipe, e.g. recipe("embedded")."""
    return str(files("mbpo_lit") / "recipes" / f"{name}.yaml")


def load_hook(path: str):
    """A `prepare` hook from its dotted path ("package.module.function")."""
    module_name, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module_name), name)


def _unset_save_dir(logger: Namespace) -> bool:
    """Whether a logger's config leaves its directory to us: the class takes a `save_dir`, and it is absent, null
    or at the class's own default (WandbLogger's "."), with no `dir` (WandbLogger's other name for it) given."""
    init = logger.get("init_args") or Namespace()
    if not isinstance(init, Namespace) or init.get("dir") is not None:
        return False
    value = init.get("save_dir")
    try:
        parameter = inspect.signature(load_hook(logger.class_path)).parameters.get("save_dir")
    except (ImportError, AttributeError, TypeError, ValueError):
        return False
    return parameter is not None and (value is None or value == parameter.default)


def fill_logger_dirs(config: Namespace) -> None:
    """Give every configured logger without a `save_dir` the trainer's `default_root_dir` (in place).

    So a recipe names its logger (`class_path: lightning.pytorch.loggers.CSVLogger`, no `save_dir`) and the logs go
    where the run goes, also when `--trainer.default_root_dir` changes per run (`ablate`). A `save_dir` the user
    gives stays. Not a jsonargparse link: a link target cannot be set by the user at all."""
    sections = [config, *(v for v in vars(config).values() if isinstance(v, Namespace))]  # or a subcommand's
    for section in sections:
        trainer = section.get("trainer")
        if not isinstance(trainer, Namespace):
            continue
        loggers = trainer.get("logger")
        for logger in loggers if isinstance(loggers, list) else [loggers]:
            if isinstance(logger, Namespace) and "class_path" in logger and _unset_save_dir(logger):
                logger["init_args.save_dir"] = trainer.get("default_root_dir") or "."


class MBPOArgumentParser(LightningArgumentParser):
    """LightningCLI's parser, with unset logger directories filled from `trainer.default_root_dir` before the
    configuration is checked (CSVLogger and TensorBoardLogger require a `save_dir`)."""

    def validate(self, cfg: Namespace, *args, **kwargs) -> None:
        fill_logger_dirs(cfg)
        super().validate(cfg, *args, **kwargs)


class MBPOCLI(LightningCLI):
    """LightningCLI with the recipe's `prepare` hook, loggers that write under `trainer.default_root_dir` unless
    told otherwise, and a before/after table on the eval set."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("parser_class", MBPOArgumentParser)
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--prepare",
            type=str | None,
            default=None,
            help="dotted path of a function (module, datamodule) -> None run before training, e.g. to build "
            "a model or mine pairs the recipe names (the embedded recipe's mbpo_lit.testbed.embedded.prepare)",
        )

    def before_fit(self) -> None:
        hook = self.config[self.subcommand].get("prepare") if self.subcommand else None
        if hook:
            load_hook(hook)(self.model, self.datamodule)

    def after_fit(self) -> None:
        data = self.datamodule
        if (
            not self.trainer.is_global_zero
            or self.model.policy is None
            or not self.model.evaluate_after_fit
            or not data.eval_records
        ):
            return
        model = self.model
        results = before_after(model.model, model.processor, data.val, data.eval_records, model.vocabulary)
        print(f"eval set: {data.val} ({len(data.eval_records)} records)")
        columns = {"before (start)": results["before"]["summary"], "after (MBPO)": results["after"]["summary"]}
        print(format_table(columns | {"change [95% CI]": change_column(results["change"])}))
        out = Path(self.trainer.default_root_dir) / "before_after.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2))
        print(f"results: {out}")


def with_default_recipe(argv: list[str]) -> list[str]:
    """`fit` options without a `--config` apply on top of the embedded recipe (`python -m mbpo_lit fit
    --trainer.max_steps 10`); with a `--config`, the recipes given are the whole configuration."""
    if any(a == "--config" or a.startswith("--config=") for a in argv) or any(a in ("-h", "--help") for a in argv):
        return argv
    return ["--config", recipe(DEFAULT_RECIPE), *argv]
