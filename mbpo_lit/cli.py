"""One command-line style for every command but `fit` (which is LightningCLI's): a settings dataclass whose
fields are the options and whose field docstrings are their help, as litgpt's `args.py` does. Every command
answers `--help`, `--config FILE.yaml` and `--print_config`, and a user's mistake ends in one line, not a
traceback.

    python -m mbpo_lit <command> [--config FILE] [--key value ...]

A command module is then a dataclass (each field followed by its docstring) and `main(argv)` calling
`run(TheConfig, function_of_the_config, argv)`.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from jsonargparse import ArgumentParser, set_parsing_settings

from mbpo_lit.core.errors import SettingsError
from mbpo_lit.data.sources import SourceError

# Field docstrings (a string literal under a dataclass field) become the options' help texts.
set_parsing_settings(docstring_parse_attribute_docstrings=True)

T = TypeVar("T")
# What a user can get wrong (a missing path, an unreachable hub id, a column that is not there): reported in one
# line with exit code 2. Anything else is a bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (SourceError, SettingsError, FileNotFoundError)
# Options every parser has, documented by jsonargparse itself.
BUILTIN_OPTIONS = ("help", "config", "print_config")


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a user mistake raised inside the block into `error: ...` on stderr and exit code 2."""
    try:
        yield
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def parser(cls: type, description: str | None = None) -> ArgumentParser:
    """The command line of a settings dataclass: one option per field, `--config` a YAML of them."""
    doc = description or (cls.__doc__ or "").strip().split("\n\n")[0]
    p = ArgumentParser(description=doc)
    p.add_argument("--config", action="config", help="a YAML file of these options (command-line options win)")
    p.add_class_arguments(cls, nested_key=None)
    return p


def parse(cls: type[T], argv: list[str] | None = None, description: str | None = None) -> T:
    """A settings dataclass from the command line; a value out of range fails in one line (`user_errors`)."""
    p = parser(cls, description)
    args = p.parse_args(argv)
    init = p.instantiate_classes(args)
    names = {f.name for f in dataclasses.fields(cls)}
    with user_errors():
        return cls(**{k: v for k, v in vars(init).items() if k in names})


def run(cls: type[T], fn: Callable[[T], Any], argv: list[str] | None = None) -> Any:
    """Parse `cls` from `argv` and call `fn` with it, a user's mistake reported in one line."""
    cfg = parse(cls, argv)
    with user_errors():
        return fn(cfg)


def undocumented_options(p: ArgumentParser) -> list[str]:
    """The options of a parser that show no help text (what `tests/test_cli.py` refuses)."""
    missing = []
    for action in p._actions:
        if action.dest in BUILTIN_OPTIONS or not action.option_strings:
            continue
        if not (action.help or "").strip() or str(action.help).startswith("%("):
            missing.append(action.option_strings[-1])
    return missing
