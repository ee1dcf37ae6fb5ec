"""Opening what a source reads: a data file, a `save_to_disk` folder or a hub dataset, and an image's header.

Nothing here decodes an image's pixels. A hub dataset read for its first `n` rows is streamed, and only those
rows are kept (in `datasets`' cache, on disk); an image is checked by opening its header (`Image.open` reads the
format and the size, not the pixels), so a missing file or one that is not an image is named at load, while the
pixels are decoded when a record's image is used (`mbpo_lit.data.lazy`).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from PIL import Image

from mbpo_lit.vlm.hub import hub_failure, looks_local


class SourceError(ValueError):
    """A data source that cannot be opened (missing path, unreachable hub id, unknown column)."""


def open_dataset(
    source: str, split: str = "train", name: str | None = None, *, n: int | None = None, revision: str | None = None
):
    """A `datasets.Dataset` from a local data file, a `save_to_disk` folder or a hub dataset id.

    A hub id with `n` streams its split and keeps the first n rows (`first_rows`), so 4,000 records of a
    440,000-row split download only the shards that hold them; without `n` the whole split is prepared, as
    `load_dataset` does. `revision` is the hub revision (a branch, a tag, a commit, or "refs/convert/parquet",
    the hub's parquet copy of a dataset). Raises `SourceError` with one line that says which it was: a local
    path that does not exist, or a hub id that could not be loaded (offline, private, misspelt).
    """
    from datasets import DatasetDict, load_dataset, load_from_disk

    if looks_local(source):
        path = Path(source).expanduser()
        if path.is_file():
            fmt = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}.get(path.suffix, "json")
            return load_dataset(fmt, data_files=str(path), split="train")
        if not path.is_dir():
            raise SourceError(f"data path {source!r} does not exist (a local file or save_to_disk folder was expected)")
        data = load_from_disk(str(path))
        if isinstance(data, DatasetDict):  # a saved DatasetDict: its splits are sub-folders
            if split not in data:
                raise SourceError(f"{source}: no split {split!r}; its splits are {sorted(data)}")
            data = data[split]
        return data
    try:
        if n is not None:
            return first_rows(source, split, name, n, revision)
        return load_dataset(source, name, split=split, revision=revision)
    except Exception as err:  # noqa: BLE001 - any hub failure becomes one line naming the id
        raise SourceError(hub_failure("dataset", source, err)) from err


def first_rows(source: str, split: str, name: str | None, n: int, revision: str | None = None):
    """The first `n` rows of a hub dataset's split, streamed (images undecoded) into `datasets`' cache: a
    `Dataset` on disk, read again without a download when the same rows are asked for."""
    from datasets import Dataset

    features = _stream(source, split, name, revision).features
    kwargs = {"source": source, "split": split, "name": name, "n": n, "revision": revision}
    return Dataset.from_generator(_streamed, features=features, gen_kwargs=kwargs)


def _stream(source: str, split: str, name: str | None, revision: str | None):
    """The split as an `IterableDataset`, its images left undecoded (bytes) when its features are known."""
    from datasets import load_dataset

    stream = load_dataset(source, name, split=split, revision=revision, streaming=True)
    return stream.decode(False) if stream.features is not None else stream


def _streamed(source: str, split: str, name: str | None, n: int, revision: str | None):
    """The rows `first_rows` keeps (a module-level generator, so `datasets` can fingerprint it by its arguments)."""
    yield from _stream(source, split, name, revision).take(n)


def resolve(value: Any, root: Path | None) -> Any:
    """An image value as something `Image.open` takes: `datasets`' {"bytes", "path"} as bytes or a path, a
    relative path joined to `root`; a decoded image is returned as it is."""
    if isinstance(value, dict):
        value = io.BytesIO(value["bytes"]) if value.get("bytes") else value.get("path")
    if isinstance(value, str):
        path = Path(value).expanduser()
        value = path if path.is_absolute() or root is None else root / path
    return value


def open_image(value: Any, root: Path | None) -> Image.Image:
    """An RGB image (decoded) from a decoded image, `datasets`' {"bytes", "path"} dict, or a path (relative to
    `root`)."""
    value = resolve(value, root)
    if isinstance(value, (str, Path, io.BytesIO)):
        value = Image.open(value)
    if not hasattr(value, "convert"):
        raise ValueError(f"not an image ({type(value).__name__})")
    return value.convert("RGB")


def image_header(value: Any, root: Path | None) -> tuple[int, int]:
    """The (width, height) of an image from its header, without decoding its pixels; raises if the file is
    missing or not an image PIL can read."""
    value = resolve(value, root)
    if hasattr(value, "size") and hasattr(value, "convert"):
        return tuple(value.size)
    if not isinstance(value, (str, Path, io.BytesIO)):
        raise ValueError(f"not an image ({type(value).__name__})")
    with Image.open(value) as image:
        return tuple(image.size)
