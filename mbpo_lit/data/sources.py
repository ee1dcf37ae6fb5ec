"""Where records come from: one loader for mining, evaluation and the training data module.

A record is a dict (`Record` lists its keys): `image` (PIL, RGB), `question`, `answer`, `answer_type`
("yes_no", "number", "choice", "phrase", "color", or "description" for open-ended captions), `id`, and
optionally `family` (the question family, e.g. "existence"), `group` (the slice metrics are reported by: POPE's
random / popular / adversarial, AMBER's existence / attribute / relation, or a synthetic world's in-prior /
counter-prior), `choices` (the options' texts of a multiple-choice question, A first: the verifier accepts an
option's text for its letter), `amber_type` (AMBER's records: scored with AMBER's "no"-positive metrics) and
`objects` (the objects present, for descriptions scored by CHAIR).

Sources are classes with a `load()`, so a LightningCLI recipe names one by `class_path` (as torchgeo's
datasets are named) and a new kind of data is a new subclass, not an edit here. `Records` reads

* a Hugging Face hub dataset id (with `split` and config `name`),
* a local .jsonl / .json / .csv / .parquet file, a glob of such files ("pope/coco_pope_*.json": each file
  read in turn, ids prefixed by the file's stem), or a `datasets` `save_to_disk` folder,

in the library's schema; `columns` renames a source's columns, and a close-ended VQA file with no answer_type
column takes `answer_type` ("yes_no", "number", "phrase", ...) for all its records. A benchmark's published
layout is a subclass of `Records` in `data/benchmarks.py`, read from the same files and hub ids: `Pope`
(POPE's own files, or lmms-lab/POPE), `Amber` (AMBER's discriminative queries joined with its
annotations.json), `AOKVQA` (A-OKVQA as a lettered multiple-choice prompt) and `VQAv2`.

`data/captions.CocoChair` reads COCO's instance annotations (instances_val2014.json) as description records, whose
captions `CocoChair.mentions` parses into COCO category names for CHAIR.

Images are not decoded at load: `load()` returns `LazyRecords` (data/lazy.py), whose records decode their image
when `record["image"]` is read; at load each image's header is checked, so 50,000 records take their text and
the images' whereabouts in memory, not 50,000 photographs. A hub id with `n` (and no `spread`) streams only its
first n rows (data/opening.py). TRL's conversational and preference formats are `data/trl.py`.

Nothing is dropped silently: a record that cannot be used (no question, no answer, a missing image or one that is
not an image) is returned in the `skipped` list with its index, id and reason, and the caller reports or refuses
it; an image damaged past its header raises an error naming the record when it is used.
"""

from __future__ import annotations

import bisect
import glob
from pathlib import Path
from typing import Any, ClassVar, Literal, TypedDict

from PIL import Image

from mbpo_lit.core.answers import CLOSED_TYPES, extract, parse_choice, parse_count
from mbpo_lit.data.lazy import LazyRecords, reference
from mbpo_lit.data.opening import SourceError, open_dataset, open_image  # noqa: F401 - open_image re-exported
from mbpo_lit.vlm.hub import looks_local


class Filtered(ValueError):
    """A usable record left out on purpose (by `answer_types`): listed, but not a bad record."""


class _RecordKeys(TypedDict):
    """The keys every record has (`Record` adds the optional ones)."""

    image: Image.Image  # RGB
    question: str  # the prompt as the model sees it (A-OKVQA's: with its lettered options)
    answer: str  # the reference answer, stored as the verifier compares it ("yes", "B", "2", "orange")
    answer_type: str  # "yes_no", "number", "choice", "phrase", "color" or "description" (CHAIR-scored)
    id: str  # the source's id ("<file stem>/<id>" for a glob of files), else the row's index


class Record(_RecordKeys, total=False):
    """One record, as every `RecordSource` gives it (the module docstring describes them)."""

    source_index: int  # the row's index in the source (over all files of a glob): where to find it again
    family: str  # the question family ("existence", "attribute-state", "choice", "describe", ...)
    group: str  # the slice metrics are reported by (POPE's subset, AMBER's type, the world's in/counter-prior)
    choices: list[str]  # a multiple-choice question's options' texts, A first
    amber_type: str  # AMBER's records: existence / attribute / relation, scored "no"-positive
    objects: list[str]  # the objects present (descriptions scored by CHAIR)
    prior_answer: str  # the language prior's answer where the source knows it (the world's typical colour)
    pope_type: str  # the world's POPE subset (random / popular / adversarial), else ""
    follows_prior: bool  # the world's records: does the queried object wear its kind's typical colour
    query_kind: str  # the world's records: the kind of object asked about


class Skipped(TypedDict, total=False):
    """A source row that gave no record."""

    index: int  # the row's index in the source
    id: str  # its id, as the record's would have been
    reason: str  # why it cannot be used ("empty question", "unreadable image: ...")
    filtered: bool  # True: left out on purpose (`answer_types`, AMBER's generative queries), not a bad record


FIELDS = ("image", "question", "answer", "answer_type", "id", "family", "group", "choices")
# The values of Records' former `format` option -> the class that reads that layout now (data/benchmarks.py).
FORMAT_CLASSES = {"pope": "Pope", "amber": "Amber", "aokvqa": "AOKVQA", "vqav2": "VQAv2"}
# Columns that mark a published layout -> the class that reads it, named when `Records` cannot map a file.
LAYOUT_HINTS = (
    ({"question_id", "image", "text", "label"}, "Pope"),
    ({"question", "answer", "category", "image_source"}, "Pope"),
    ({"choices", "correct_choice_idx"}, "AOKVQA"),
    ({"question", "multiple_choice_answer"}, "VQAv2"),
    ({"id", "image", "query"}, "Amber"),
    ({"index", "question", "hint", "A", "B"}, "MMBench"),
    ({"question", "options", "answer"}, "AI2D"),
    ({"messages"}, "Conversations"),
    ({"chosen", "rejected"}, "Preferences"),
)


def layout_hint(columns: list[str]) -> str:
    """ "; these columns are <class>'s layout: use ..." when a file's columns match a published layout, else ""."""
    name = next((cls for marks, cls in LAYOUT_HINTS if marks <= set(columns)), None)
    return f"; these columns are {name}'s layout: use {name}(...) / --data {name}" if name else ""


def refuse_removed(cls: type, options: dict[str, Any]) -> None:
    """Refuse options a `Records` class does not take, naming what to use instead: `format` became classes
    (`Pope`, `Amber`, `AOKVQA`, `VQAv2`) and `annotations` is `Amber`'s own."""
    if "format" in options:
        value = options["format"]
        if (use := FORMAT_CLASSES.get(str(value))) is None:
            raise SourceError(f"format={value!r} is gone: Records reads its own schema; benchmark layouts are classes")
        raise SourceError(
            f"format={value!r} is now a class: use {use}(...) / --data {use} "
            f"(class_path mbpo_lit.data.benchmarks.{use}) instead of {cls.__name__}(format=...)"
        )
    if "annotations" in options:
        raise SourceError(f"annotations={options['annotations']!r} is an option of Amber, not {cls.__name__}")
    if options:
        raise TypeError(f"{cls.__name__}() got unexpected keyword arguments {sorted(options)}")


def typed_answer(answer: str, answer_type: str) -> str:
    """The reference answer as the verifier compares it: yes/no and choice labels normalized ("Yes." -> "yes",
    "(b)" -> "B"); raises ValueError if it does not read as its type."""
    readable = {
        "yes_no": lambda a: extract(a, "yes_no"),
        "number": parse_count,
        "choice": lambda a: parse_choice(a.strip().upper()),
    }
    if answer_type not in readable:
        return answer
    label = readable[answer_type](answer)
    if label is None:
        raise ValueError(f"answer {answer!r} is not a {answer_type} answer")
    return label if answer_type != "number" else answer


class RecordSource:
    """Base class of record sources. Subclasses implement `load`; the rest has defaults.

    `vocabulary`: the answer words of "color"/"phrase" answers when the source has a closed set (the first such
    word in a completion is its answer); None compares whole normalized phrases.
    """

    vocabulary: list[str] | None = None

    def load(self) -> tuple[list[Record], list[Skipped]]:
        """(records, skipped): usable records, and {"index", "id", "reason"} for each one that is not."""
        raise NotImplementedError

    def mentions(self, text: str) -> list[str] | None:
        """Object mentions in a free-form description (for CHAIR), or None if the source cannot parse them."""
        return None

    def __str__(self) -> str:
        return type(self).__name__


class Records(RecordSource):
    """Records in this library's schema from a hub dataset id, a local file (or a glob of files) or a
    `save_to_disk` folder (see the module docstring). A benchmark's published layout is a subclass
    (`mbpo_lit.data.benchmarks`: `Pope`, `Amber`, `AOKVQA`, `VQAv2`) with the same options.

    Args:
        path: hub dataset id (e.g. "lmms-lab/POPE"), local .jsonl/.json/.csv/.parquet file, a glob of local
            files (e.g. "pope/coco_pope_*.json": POPE's three subsets in one go, each grouped by its file name;
            ids become "<file stem>/<id>", as POPE's files number their questions alike), or folder.
        split: split of a hub dataset.
        name: config name of a hub dataset (e.g. "Full" for lmms-lab/POPE).
        columns: record field -> source column, on top of the layout's (e.g. {"question": "prompt"}).
        image_root: folder that relative image paths are resolved against (default: the data file's folder;
            for folders and hub ids, the working directory). AMBER's images are a separate download: pass it.
        answer_type: answer type of records whose source has none ("yes_no", "number", "choice", "phrase").
        answer_types: keep only records of these answer types; the others are skipped *and listed*.
        group: metrics slice of every record when the source has none (POPE: taken from the file name; AMBER:
            its type, existence / attribute / relation).
        n: at most this many records (None: all): the first n, or with `spread` n spread evenly over the data.
        spread: take every (len / n)-th record instead of the first n, so a file ordered by category (POPE's
            hub copy: adversarial, then popular, then random) gives a sample of every category.
        vocabulary: closed answer vocabulary for "color"/"phrase" answers (see `RecordSource`).
        revision: hub revision of a hub dataset (a branch, tag or commit; "refs/convert/parquet" is the hub's
            parquet copy of a dataset whose own files a loading script reads).

    A hub id with `n` and no `spread` streams its first n rows and no more; `spread` needs every row's position,
    so it prepares the whole split (downloaded once, memory-mapped, not held in memory).
    """

    # The layout read, which a benchmark's subclass overrides: record field -> candidate source columns (the
    # first present wins), the fields that need a column, and what the layout fixes for all its records.
    LAYOUT: ClassVar[dict[str, tuple[str, ...]]] = {f: (f,) for f in FIELDS}
    NEEDS: ClassVar[tuple[str, ...]] = ("image", "question", "answer")
    JOINED: ClassVar[tuple[str, ...]] = ()  # columns joined from another file by `_join`, not in the data
    FIXED_TYPE: ClassVar[str | None] = None  # the answer type of every record
    FIXED_FAMILY: ClassVar[str | None] = None  # the family of every record without a family column
    TYPE_NAMES: ClassVar[dict[str, str]] = {}  # the source's answer-type names -> ours
    _table: tuple[Any, int, str] = (None, 0, "")  # the row `record` reads: (image table, row, column), by `load`

    def __init__(
        self,
        path: str,
        *,
        split: str = "train",
        name: str | None = None,
        columns: dict[str, str] | None = None,
        image_root: str | None = None,
        answer_type: str | None = None,
        answer_types: list[str] | None = None,
        group: str | None = None,
        n: int | None = None,
        spread: bool = False,
        vocabulary: list[str] | None = None,
        revision: str | None = None,
        **removed: Any,
    ):
        refuse_removed(type(self), removed)  # e.g. the former format="pope": names the class to use instead
        if n is not None and n < 1:
            raise SourceError(f"n={n}: must be >= 1 (or None for all records)")
        self.path, self.split, self.name = path, split, name
        self.columns, self.image_root, self.answer_type = dict(columns or {}), image_root, answer_type
        self.answer_types, self.group, self.n, self.spread = answer_types, group, n, spread
        self.vocabulary, self.revision = vocabulary, revision

    def __str__(self) -> str:
        return self.path if self.split == "train" or looks_local(self.path) else f"{self.path}[{self.split}]"

    def _paths(self) -> list[str]:
        """The files a glob `path` matches (sorted), or [path]."""
        if not (looks_local(self.path) and glob.has_magic(self.path)):
            return [self.path]
        found = sorted(glob.glob(str(Path(self.path).expanduser())))
        if not found:
            raise SourceError(f"data path {self.path!r} matches no file")
        return found

    def _column_map(self, available: list[str]) -> dict[str, str]:
        """Record field -> source column present in the data; a user-named column must exist."""
        if bad := sorted(set(self.columns) - set(FIELDS)):
            raise SourceError(f"{self}: columns names unknown record fields {bad}; the fields are {list(FIELDS)}")
        unknown = {k: v for k, v in self.columns.items() if v not in available}
        if unknown:
            raise SourceError(f"{self}: columns {unknown} not in the data; its columns are {available}")
        available = [*available, *self.JOINED]
        found = {k: next((c for c in cands if c in available), None) for k, cands in self.LAYOUT.items()}
        mapping = {k: c for k, c in found.items() if c is not None} | self.columns
        missing = [k for k in self.NEEDS if k not in mapping]
        if missing:
            hint = layout_hint(available) if type(self) is Records else ""
            raise SourceError(
                f"{self}: no column for {missing} (layout of {type(self).__name__}); its columns are "
                f"{available}; map them with columns={{field: column}}{hint}"
            )
        return mapping

    def _default_group(self, path: str | None = None) -> str:
        """The group of a record whose row has none (`Pope`: the subset in the file name)."""
        return self.group if self.group is not None else ""

    def _prepare(self, paths: list[str]) -> None:
        """Read what the layout needs besides the data files, before the first record (`Amber`: annotations)."""

    def _join(self, row: dict, cols: dict[str, str]) -> tuple[dict, str | None, str | None]:
        """The row with the `JOINED` columns, and its group and family if the join decides them."""
        return row, None, None

    def _prompt(self, question: str, answer: Any, choices: list[str] | None) -> tuple[str, Any]:
        """The question as the model sees it and the answer to it (`AOKVQA`: lettered options, a letter)."""
        return question, answer

    def record(self, row: dict, i: int, cols: dict[str, str], root: Path | None, path: str | None = None) -> Record:
        """One source row (of the file `path`, for the default group) as a record; raises ValueError with the
        reason if it cannot be used."""
        row, group, family = self._join(row, cols)
        question = row.get(cols["question"])
        if question is None or not str(question).strip():
            raise ValueError("empty question")
        answer = row.get(cols["answer"])
        if answer is None or not str(answer).strip():
            raise ValueError("missing answer")
        answer_type = (
            self.FIXED_TYPE
            or self.TYPE_NAMES.get(str(row.get(cols.get("answer_type", ""), "")), None)
            or row.get(cols.get("answer_type", ""))
            or self.answer_type
            or "phrase"
        )
        choices = row.get(cols["choices"]) if "choices" in cols else None
        if choices is not None and not isinstance(choices, (list, tuple)):
            raise ValueError(f"choices must be a list of the options' texts, got {type(choices).__name__}")
        choices = [str(c) for c in choices] if choices else None
        question, answer = self._prompt(str(question), answer, choices)
        if answer_type not in CLOSED_TYPES:
            # Open-ended answers (descriptions) are scored by CHAIR, which needs a source that parses object
            # mentions (`RecordSource.mentions`, e.g. `CocoChair`); this one cannot.
            raise ValueError(f"answer_type {answer_type!r} is not close-ended {CLOSED_TYPES}")
        if self.answer_types is not None and answer_type not in self.answer_types:
            raise Filtered(f"answer_type {answer_type!r} not in answer_types={self.answer_types}")
        answer = typed_answer(str(answer), answer_type)
        try:  # the header only: the pixels are decoded when the record's image is used (data/lazy.py)
            image = reference(row.get(cols["image"]), root, str(path or self), *self._table)
        except Exception as err:  # noqa: BLE001 - any failure to open it is this record's reason
            raise ValueError(f"unreadable image: {err}") from err
        rid = row.get(cols["id"]) if "id" in cols else None
        out = Record(
            image=image,
            question=question,
            answer=str(answer),
            answer_type=answer_type,
            id=str(rid if rid is not None else i),
            source_index=i,
            family=family or row.get(cols.get("family", "")) or self.FIXED_FAMILY or answer_type,
            group=str(group or row.get(cols.get("group", "")) or self._default_group(path)),
        )
        if choices:
            out["choices"] = choices
        return out

    def _open_parts(self, paths: list[str]) -> list[tuple[str, Any, Any, dict[str, str], Path | None]]:
        """Each file's (path, its rows without the image column, the image column as an undecoded arrow table,
        column map, image root): rows are read without decoding an image."""
        parts = []
        for path in paths:
            n = None if self.spread else self.n  # spread needs the whole split's length
            data = open_dataset(path, self.split, self.name, n=n, revision=self.revision)
            local = Path(path).expanduser()
            root = Path(self.image_root) if self.image_root else (local.parent if local.is_file() else None)
            cols = self._column_map(list(data.column_names))
            image = cols["image"]
            parts.append(
                (path, data.remove_columns([image]), data.select_columns([image]).with_format("arrow"), cols, root)
            )
        return parts

    def load(self) -> tuple[LazyRecords, list[Skipped]]:
        """(records, skipped): the records as `LazyRecords` (images decoded when used), every row left out listed."""
        paths = self._paths()
        parts = self._open_parts(paths)
        self._prepare(paths)
        starts = [0]
        for part in parts:
            starts.append(starts[-1] + len(part[1]))
        total = starts[-1]
        records: list[Record] = []
        skipped: list[Skipped] = []
        n = total if self.n is None else min(self.n, total)
        for i in range(n) if not self.spread else sorted({k * total // n for k in range(n)}):
            part = bisect.bisect_right(starts, i) - 1
            path, text, images, cols, root = parts[part]
            j, prefix = i - starts[part], (f"{Path(path).stem}/" if len(parts) > 1 else "")
            try:
                row = dict(text[j]) | {cols["image"]: images[j].column(0)[0].as_py()}
            except Exception as err:  # noqa: BLE001 - an unreadable row
                skipped.append({"index": i, "id": f"{prefix}{j}", "reason": f"unreadable record: {err}"})
                continue
            self._table = (images, j, cols["image"])  # where `record` finds embedded image bytes again
            try:
                rec = self.record(row, i, cols, root, path)
                rec["id"] = prefix + rec["id"]
                records.append(rec)
            except ValueError as err:
                rid = row.get(cols["id"]) if "id" in cols else None
                entry = Skipped(index=i, id=prefix + str(rid if rid is not None else i), reason=str(err))
                skipped.append(entry | ({"filtered": True} if isinstance(err, Filtered) else {}))
        self._table = (None, 0, "")
        return LazyRecords(records), skipped


def as_source(source: RecordSource | str | None) -> RecordSource | None:
    """A source from a config value: a `RecordSource`, a path / hub id string (`Records(path)`), or None."""
    if source is None or isinstance(source, RecordSource):
        return source
    return Records(str(source))


def report_skipped(skipped: list[Skipped], source: object, bad_records: Literal["skip", "error"]) -> None:
    """Print every skipped record with its reason; with bad_records="error", refuse the unusable ones in one
    error (records left out by an `answer_types` filter are only counted: they were left out on purpose)."""
    filtered = [s for s in skipped if s.get("filtered")]
    if filtered:
        print(
            f"{source}: {len(filtered)} records left out by answer_types (first: record {filtered[0]['index']}, "
            f"{filtered[0]['reason']})"
        )
    skipped = [s for s in skipped if not s.get("filtered")]
    if not skipped:
        return
    lines = [f"{source}: record {s['index']} (id {s.get('id')}): {s['reason']}" for s in skipped]
    if bad_records == "error":
        raise SourceError(f"{len(skipped)} unusable records (bad_records='error'):\n  " + "\n  ".join(lines))
    more = f"\n  ... and {len(lines) - 20} more" if len(lines) > 20 else ""
    print(f"skipping {len(skipped)} unusable records:\n  " + "\n  ".join(lines[:20]) + more)
