"""One command-line style for every command: jsonargparse (LightningCLI for `fit`), so each one has `--help`,
`--config FILE.yaml` and `--print_config`, and a user's mistake ends in one line, not a traceback.

    python -m mbpo_lit <command> [--config FILE] [--key value ...]
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from jsonargparse import CLI, ArgumentParser

from mbpo_lit.data.sources import SourceError
from mbpo_lit.train.settings import SettingsError

T = TypeVar("T")
# What a user can get wrong (a missing path, an unreachable hub id, a column that is not there): reported in one
# line with exit code 2. Anything else is a bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (SourceError, SettingsError, FileNotFoundError)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a user mistake raised inside the block into `error: ...` on stderr and exit code 2."""
    try:
        yield
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def run_function(fn: Callable[..., Any], argv: list[str] | None = None) -> Any:
    """Run `fn` as a command: its typed arguments become options, its docstring the help."""
    with user_errors():
        return CLI(fn, args=argv, as_positional=False)


def parse_dataclass(cls: type[T], description: str, argv: list[str] | None = None) -> T:
    """A settings dataclass from the command line (each field an option, `--config` a YAML of them)."""
    parser = ArgumentParser(description=description)
    parser.add_argument("--config", action="config")
    parser.add_class_arguments(cls, nested_key=None)
    args = parser.parse_args(argv)
    init = parser.instantiate_classes(args)
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in vars(init).items() if k in names})
