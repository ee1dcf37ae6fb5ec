"""Records whose images are decoded when they are used, not when they are loaded.

A source's `load()` checks every image's header (a missing file, or one that is not an image, is skipped and
listed at load, as before) and keeps where the image is (`ImageRef`: a file, or a cell of a dataset table,
memory-mapped); a record's `image` is decoded the first time `record["image"]` is read. So 50,000 records hold
their text and the images' whereabouts, not 50,000 decoded photographs, and everything that reads records the
usual way (`r["image"]`, `r.get("image")`, `dict(r)`, pickling for a DataLoader's workers) gets a PIL image.

`LazyRecords` is the list a source returns: each item is a new `LazyRecord`, so a record taken from it, used and
dropped, frees its image; a `LazyRecord` keeps its image once decoded (a batch reads it several times).
`fresh(record)` is a copy that has not decoded it yet, for pools that hand the same record out many times.
An image damaged past its header (or changed after load) raises `SourceError` naming the record when it is used.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from mbpo_lit.data.opening import SourceError, image_header, open_image


class ImageRef:
    """Where one record's image is: a file path, or (table, row, column, item) of a `datasets` table whose
    cell holds the image's bytes; `size` is (width, height) from the header, read at load."""

    __slots__ = ("column", "item", "origin", "path", "row", "size", "table")

    def __init__(
        self,
        size: tuple[int, int],
        origin: str,
        path: str | None = None,
        table: Any = None,
        row: int = 0,
        column: str = "",
        item: int | None = None,
    ):
        self.size, self.origin, self.path = size, origin, path
        self.table, self.row, self.column, self.item = table, row, column, item

    def __getstate__(self) -> dict:
        return {k: getattr(self, k) for k in self.__slots__}

    def __setstate__(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v)

    def __repr__(self) -> str:
        where = self.path or f"row {self.row}, column {self.column!r}"
        return f"ImageRef({self.origin}: {where}, {self.size[0]}x{self.size[1]})"

    def open(self) -> Image.Image:
        """The image, decoded (RGB)."""
        if self.table is None:
            return open_image(self.path, None)
        value = self.table[self.row].column(self.column)[0].as_py()
        return open_image(value[self.item] if self.item is not None else value, None)


def reference(value: Any, root: Path | None, origin: str, table: Any = None, row: int = 0, column: str = "") -> Any:
    """An `ImageRef` for a row's image value (a path, `datasets`' {"bytes", "path"}, or a list of them: the
    first is the record's), its header checked; a decoded image is kept as it is. Raises ValueError if it is
    missing or unreadable."""
    item = None
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise ValueError(f"{len(value)} images: a record holds one")
        value, item = value[0], 0
    if value is None:
        raise ValueError("no image")
    if hasattr(value, "convert"):  # decoded already (an in-memory source)
        return value.convert("RGB")
    size = image_header(value, root)
    if isinstance(value, dict) and value.get("bytes"):
        return ImageRef(size, origin, table=table, row=row, column=column, item=item)
    path = value.get("path") if isinstance(value, dict) else value
    full = Path(str(path)).expanduser()
    return ImageRef(size, origin, path=str(full if full.is_absolute() or root is None else root / full))


class LazyRecord(dict):
    """A record whose `image` is decoded on first read (`ImageRef` until then), then kept."""

    def __getitem__(self, key: str) -> Any:
        value = dict.__getitem__(self, key)
        if isinstance(value, ImageRef):
            try:
                value = value.open()
            except Exception as err:  # noqa: BLE001 - any decoding failure names the record
                rid = dict.get(self, "id")
                where = f"record {dict.get(self, 'source_index')} (id {rid})"
                raise SourceError(f"{value.origin}: {where}: unreadable image: {err}") from err
            dict.__setitem__(self, key, value)
        return value

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else default

    def __iter__(self) -> Iterator[str]:  # not dict's own: dict(r) and {**r} then read values through __getitem__
        return dict.__iter__(self)

    def values(self) -> list[Any]:  # type: ignore[override]
        return [self[k] for k in self]

    def items(self) -> list[tuple[str, Any]]:  # type: ignore[override]
        return [(k, self[k]) for k in self]

    def copy(self) -> LazyRecord:
        return LazyRecord(dict.items(self))

    def __or__(self, other: dict) -> LazyRecord:  # type: ignore[override]
        out = self.copy()
        dict.update(out, other)
        return out

    def __reduce__(self) -> tuple:  # pickled with its ImageRef: a DataLoader worker decodes it itself
        return (LazyRecord, (list(dict.items(self)),))


def fresh(record: dict) -> dict:
    """A copy of a `LazyRecord` that decodes its own image (a pool's record stays undecoded); other records as
    they are."""
    return record.copy() if isinstance(record, LazyRecord) else record


def image_size(record: dict) -> tuple[int, int]:
    """A record's image (width, height), from the header read at load when not decoded yet."""
    value = dict.get(record, "image")
    return value.size if isinstance(value, ImageRef) else record["image"].size


class LazyRecords(Sequence):
    """The records of a source: their fields and their images' whereabouts; item i is a new `LazyRecord`."""

    def __init__(self, rows: list[dict] | None = None):
        self._rows = rows if rows is not None else []

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            return LazyRecords(self._rows[i])
        return LazyRecord(self._rows[i])

    def __add__(self, other: Sequence) -> Sequence:
        if isinstance(other, LazyRecords):
            return LazyRecords(self._rows + other._rows)
        return [*self, *other]

    def __repr__(self) -> str:
        return f"LazyRecords({len(self)} records)"


class Images(Sequence):
    """The images of a sequence of records, decoded one at a time when read (`images[i]`, `images[a:b]`)."""

    def __init__(self, records: Sequence[dict]):
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            return [self.records[j]["image"] for j in range(len(self.records))[i]]
        return self.records[i]["image"]
