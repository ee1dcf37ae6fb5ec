"""Local path or hub id: one rule for models and datasets, and one-line errors that say which it was.

Nothing here sets the hub offline: a user with a network downloads hub ids as usual.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def looks_local(name: str) -> bool:
    """A hub id is `name` or `org/name`; anything else (absolute, ./, ~, deeper paths, a data file, an
    existing path) is local."""
    return (
        os.path.isabs(name)
        or name.startswith((".", "~"))
        or name.count("/") > 1
        or Path(name).exists()
        or Path(name).suffix in DATA_SUFFIXES
    )


def hub_failure(kind: str, name: str, err: BaseException) -> str:
    """One line for a hub id that could not be loaded: what, which id, whether the hub is offline, and the
    first line of the underlying error (Hugging Face errors run over several lines)."""
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return (
        f"{kind} {name!r} is not a local path and could not be loaded from the hub"
        f"{' (HF_HUB_OFFLINE is set)' if offline else ''}: {reason}"
    )
