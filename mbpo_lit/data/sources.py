"""Where records come from: one loader for mining, evaluation and the training data module.

A record is a dict: `image` (PIL, RGB), `question`, `answer`, `answer_type` ("yes_no", "number", "choice",
"phrase", "color", or "description" for open-ended captions), `id`, and optionally `family` (the question
family, e.g. "existence"), `group` (the slice metrics are reported by: POPE's random / popular /
adversarial, AMBER's existence / attribute / relation, or a synthetic world's in-prior / counter-prior),
`choices` (the options' texts of a multiple-choice question, A first: the verifier accepts an option's text
for its letter), `amber_type` (AMBER's records: scored with AMBER's "no"-positive metrics) and `objects` (the
objects present, for descriptions scored by CHAIR).

Sources are classes with a `load()`, so a LightningCLI recipe names one by `class_path` (as torchgeo's
datasets are named) and a new kind of data is a new subclass, not an edit here. `Records` reads

* a Hugging Face hub dataset id (with `split` and config `name`),
* a local .jsonl / .json / .csv / .parquet file, a glob of such files ("pope/coco_pope_*.json": each file
  read in turn, ids prefixed by the file's stem), or a `datasets` `save_to_disk` folder,

in the library's schema or in a benchmark's published layout (`format`): "pope" (POPE's files: question_id,
image, text, label, the subset from the file name; or lmms-lab/POPE's question / answer / category), "amber"
(AMBER's discriminative queries, data/query/query_discriminative*.json: id, image, query, joined by id with
data/annotations.json's type and truth), "aokvqa" (A-OKVQA: question, choices, correct_choice_idx, rendered
as a lettered multiple-choice prompt) and "vqav2" (VQAv2: question, multiple_choice_answer, answer_type).
`columns` renames a source's columns on top of the format's; a close-ended VQA file in the library's schema
with no answer_type column takes `answer_type` ("yes_no", "number", "phrase", ...) for all its records.

`data/captions.CocoChair` reads COCO's instance annotations (instances_val2014.json) as description records, whose
captions `CocoChair.mentions` parses into COCO category names for CHAIR.

Nothing is dropped silently: a record that cannot be used (no question, no answer, an unreadable image) is
returned in the `skipped` list with its index, id and reason, and the caller reports or refuses it.
"""

from __future__ import annotations

import bisect
import glob
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from PIL import Image

from mbpo_lit.core.answers import CLOSED_TYPES, LETTERS, extract, parse_choice, parse_count
from mbpo_lit.vlm.hub import hub_failure, looks_local

FormatName = Literal["records", "pope", "amber", "aokvqa", "vqav2"]


class SourceError(ValueError):
    """A data source that cannot be opened (missing path, unreachable hub id, unknown column)."""


class Filtered(ValueError):
    """A usable record left out on purpose (by `answer_types`): listed, but not a bad record."""


FIELDS = ("image", "question", "answer", "answer_type", "id", "family", "group", "choices")


@dataclass(frozen=True)
class Format:
    """A dataset layout: candidate source columns for each record field (first present wins)."""

    columns: dict[str, tuple[str, ...]]
    answer_type: str | None = None  # fixed answer type of the whole format
    family: str | None = None
    answer_types: dict[str, str] = field(default_factory=dict)  # the source's answer-type names -> ours


FORMATS: dict[str, Format] = {
    "records": Format(
        {
            "image": ("image",),
            "question": ("question",),
            "answer": ("answer",),
            "answer_type": ("answer_type",),
            "id": ("id",),
            "family": ("family",),
            "group": ("group",),
            "choices": ("choices",),
        }
    ),
    # POPE's own jsonl files (github.com/RUCAIBox/POPE: question_id, image, text, label; the category is in the
    # file name, coco_pope_adversarial.json) and the hub copy lmms-lab/POPE (question, answer, category).
    "pope": Format(
        {
            "image": ("image",),
            "question": ("text", "question"),
            "answer": ("label", "answer"),
            "id": ("question_id", "id"),
            "group": ("category",),
        },
        answer_type="yes_no",
        family="existence",
    ),
    # AMBER's discriminative queries (github.com/junyangwang0410/AMBER, data/query/query_discriminative*.json:
    # a JSON list of {id, image, query}); the answer ("truth") and the type come from data/annotations.json by id
    # (`Records(annotations=...)`), so "truth" is not a column of the query file.
    "amber": Format(
        {"image": ("image",), "question": ("query", "question"), "answer": ("truth",), "id": ("id",)},
        answer_type="yes_no",
    ),
    # A-OKVQA (HuggingFaceM4/A-OKVQA): four choices and the index of the correct one.
    "aokvqa": Format(
        {
            "image": ("image",),
            "question": ("question",),
            "choices": ("choices",),
            "answer": ("correct_choice_idx",),
            "id": ("question_id", "id"),
        },
        answer_type="choice",
        family="choice",
    ),
    # VQAv2 (HuggingFaceM4/VQAv2): the consensus answer and the question's answer type.
    "vqav2": Format(
        {
            "image": ("image",),
            "question": ("question",),
            "answer": ("multiple_choice_answer", "answer"),
            "answer_type": ("answer_type",),
            "id": ("question_id", "id"),
        },
        answer_types={"yes/no": "yes_no", "number": "number", "other": "phrase"},
    ),
}


# AMBER's annotation types -> (group: AMBER's breakdown, family). AMBER's annotations.json labels some relation
# queries "relation" rather than "discriminative-relation"; its own evaluation counts both as relation.
AMBER_TYPES = {
    "discriminative-hallucination": ("existence", "existence"),
    "discriminative-attribute-state": ("attribute", "attribute-state"),
    "discriminative-attribute-number": ("attribute", "attribute-number"),
    "discriminative-attribute-action": ("attribute", "attribute-action"),
    "discriminative-relation": ("relation", "relation"),
    "relation": ("relation", "relation"),
}


def open_dataset(source: str, split: str = "train", name: str | None = None):
    """A `datasets.Dataset` from a local data file, a `save_to_disk` folder or a hub dataset id.

    Raises `SourceError` with one line that says which it was: a local path that does not exist, or a hub id
    that could not be loaded (offline, private, misspelt).
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
        return load_dataset(source, name, split=split)
    except Exception as err:  # noqa: BLE001 - any hub failure becomes one line naming the id
        raise SourceError(hub_failure("dataset", source, err)) from err


def open_image(value, root: Path | None) -> Image.Image:
    """An RGB image from a decoded image, `datasets`' {"bytes", "path"} dict, or a path (relative to `root`)."""
    if isinstance(value, dict):
        value = io.BytesIO(value["bytes"]) if value.get("bytes") else value.get("path")
    if isinstance(value, str):
        path = Path(value).expanduser()
        value = path if path.is_absolute() or root is None else root / path
    if isinstance(value, (str, Path, io.BytesIO)):
        value = Image.open(value)
    if not hasattr(value, "convert"):
        raise ValueError(f"not an image ({type(value).__name__})")
    return value.convert("RGB")


class RecordSource:
    """Base class of record sources. Subclasses implement `load`; the rest has defaults.

    `vocabulary`: the answer words of "color"/"phrase" answers when the source has a closed set (the first such
    word in a completion is its answer); None compares whole normalized phrases.
    """

    vocabulary: list[str] | None = None

    def load(self) -> tuple[list[dict], list[dict]]:
        """(records, skipped): usable records, and {"index", "id", "reason"} for each one that is not."""
        raise NotImplementedError

    def mentions(self, text: str) -> list[str] | None:
        """Object mentions in a free-form description (for CHAIR), or None if the source cannot parse them."""
        return None

    def __str__(self) -> str:
        return type(self).__name__


class Records(RecordSource):
    """Records from a hub dataset id, a local file (or a glob of files) or a `save_to_disk` folder (see the
    module docstring).

    Args:
        path: hub dataset id (e.g. "lmms-lab/POPE"), local .jsonl/.json/.csv/.parquet file, a glob of local
            files (e.g. "pope/coco_pope_*.json": POPE's three subsets in one go, each grouped by its file name;
            ids become "<file stem>/<id>", as POPE's files number their questions alike), or folder.
        split: split of a hub dataset.
        name: config name of a hub dataset (e.g. "Full" for lmms-lab/POPE).
        format: the layout: "records" (this library's schema), "pope", "amber", "aokvqa" or "vqav2".
        columns: record field -> source column, on top of the format's (e.g. {"question": "prompt"}).
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
        annotations: format "amber": AMBER's data/annotations.json (default: annotations.json in the query
            file's parent folder, as in AMBER's repository, or in its own folder). Queries of the generative
            task are left out and counted, like an `answer_types` filter.
    """

    def __init__(
        self,
        path: str,
        split: str = "train",
        name: str | None = None,
        format: FormatName = "records",
        columns: dict[str, str] | None = None,
        image_root: str | None = None,
        answer_type: str | None = None,
        answer_types: list[str] | None = None,
        group: str | None = None,
        n: int | None = None,
        spread: bool = False,
        vocabulary: list[str] | None = None,
        annotations: str | None = None,
    ):
        if format not in FORMATS:
            raise SourceError(f"format={format!r}: one of {sorted(FORMATS)}")
        if n is not None and n < 1:
            raise SourceError(f"n={n}: must be >= 1 (or None for all records)")
        if annotations is not None and format != "amber":
            raise SourceError(f"annotations={annotations!r} is an option of format 'amber', not {format!r}")
        self.path, self.split, self.name, self.format = path, split, name, format
        self.columns, self.image_root, self.answer_type = dict(columns or {}), image_root, answer_type
        self.answer_types, self.group, self.n, self.spread = answer_types, group, n, spread
        self.vocabulary, self.annotations = vocabulary, annotations
        self._amber: dict[str, dict] = {}  # AMBER's annotations by id, read by `load`
        self._amber_path: Path | None = None

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
        fmt = FORMATS[self.format]
        if bad := sorted(set(self.columns) - set(FIELDS)):
            raise SourceError(f"{self}: columns names unknown record fields {bad}; the fields are {list(FIELDS)}")
        unknown = {k: v for k, v in self.columns.items() if v not in available}
        if unknown:
            raise SourceError(f"{self}: columns {unknown} not in the data; its columns are {available}")
        if self.format == "amber":
            available = [*available, "truth"]  # joined from annotations.json by id
        found = {k: next((c for c in cands if c in available), None) for k, cands in fmt.columns.items()}
        mapping = {k: c for k, c in found.items() if c is not None} | self.columns
        needed = ("image", "question", "answer") + {"aokvqa": ("choices",), "amber": ("id",)}.get(self.format, ())
        missing = [k for k in needed if k not in mapping]
        if missing:
            raise SourceError(
                f"{self}: no column for {missing} (format {self.format!r}); its columns are "
                f"{available}; map them with columns={{field: column}}"
            )
        return mapping

    def _default_group(self, path: str | None = None) -> str:
        if self.group is not None:
            return self.group
        name = Path(path or self.path).name
        if self.format == "pope" and (m := re.search(r"(random|popular|adversarial)", name)):
            return m.group(1)
        return ""

    def _load_amber_annotations(self, path: str) -> None:
        """AMBER's annotations.json as {id: annotation}, from `annotations` or next to the query file."""
        if self.annotations is not None:
            candidates = [Path(self.annotations).expanduser()]
        else:
            query = Path(path).expanduser()
            candidates = [query.parent.parent / "annotations.json", query.parent / "annotations.json"]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise SourceError(
                f"{self}: format 'amber' needs AMBER's data/annotations.json; not found at "
                f"{', '.join(map(str, candidates))}: pass annotations=PATH"
            )
        try:
            items = json.loads(found.read_text())
            self._amber = {str(a["id"]): a for a in items}
        except (ValueError, TypeError, KeyError) as err:
            raise SourceError(f"{found}: not AMBER's annotations (a JSON list of {{id, type, truth}}): {err}") from err
        self._amber_path = found

    def _amber_row(self, row: dict, cols: dict[str, str]) -> tuple[dict, str, str]:
        """The query row joined with its annotation: (row with "truth", group, family)."""
        rid = row.get(cols["id"])
        ann = self._amber.get(str(rid))
        if ann is None:
            raise ValueError(f"id {rid} is not in {self._amber_path}")
        kind = AMBER_TYPES.get(str(ann.get("type")))
        if kind is None:
            if ann.get("type") == "generative":
                raise Filtered("a generative query (AMBER's generative task is not scored by this evaluator)")
            raise ValueError(f"AMBER type {ann.get('type')!r} is none of {sorted(AMBER_TYPES)}")
        return dict(row) | {"truth": ann.get("truth")}, *kind

    def record(self, row: dict, i: int, cols: dict[str, str], root: Path | None, path: str | None = None) -> dict:
        """One source row (of the file `path`, for the default group) as a record; raises ValueError with the
        reason if it cannot be used."""
        fmt = FORMATS[self.format]
        group = family = None
        if self.format == "amber":
            row, group, family = self._amber_row(row, cols)
        question = row.get(cols["question"])
        if question is None or not str(question).strip():
            raise ValueError("empty question")
        answer = row.get(cols["answer"])
        if answer is None or not str(answer).strip():
            raise ValueError("missing answer")
        answer_type = (
            fmt.answer_type
            or fmt.answer_types.get(str(row.get(cols.get("answer_type", ""), "")), None)
            or row.get(cols.get("answer_type", ""))
            or self.answer_type
            or "phrase"
        )
        question = str(question)
        choices = row.get(cols["choices"]) if "choices" in cols else None
        if choices is not None and not isinstance(choices, (list, tuple)):
            raise ValueError(f"choices must be a list of the options' texts, got {type(choices).__name__}")
        choices = [str(c) for c in choices] if choices else None
        if self.format == "aokvqa":  # a lettered multiple-choice prompt; the answer is the correct letter
            choices = choices or []
            if not 2 <= len(choices) <= len(LETTERS) or not 0 <= int(answer) < len(choices):
                raise ValueError(f"{len(choices)} choices and correct index {answer}: needs 2-4 choices and an index")
            question += "\n" + "\n".join(f"{LETTERS[j]}. {c}" for j, c in enumerate(choices))
            question += "\nAnswer with the option's letter from the given choices directly."
            answer = LETTERS[int(answer)]
        if answer_type not in CLOSED_TYPES:
            # Open-ended answers (descriptions) are scored by CHAIR, which needs a source that parses object
            # mentions (`RecordSource.mentions`, e.g. `CocoChair`); this one cannot.
            raise ValueError(f"answer_type {answer_type!r} is not close-ended {CLOSED_TYPES}")
        if self.answer_types is not None and answer_type not in self.answer_types:
            raise Filtered(f"answer_type {answer_type!r} not in answer_types={self.answer_types}")
        # The reference answer must read as its type; yes/no and choice labels are stored normalized ("Yes." ->
        # "yes", "(b)" -> "B"), as the verifier compares them.
        readable = {
            "yes_no": lambda a: extract(a, "yes_no"),
            "number": parse_count,
            "choice": lambda a: parse_choice(a.strip().upper()),
        }
        if answer_type in readable:
            label = readable[answer_type](str(answer))
            if label is None:
                raise ValueError(f"answer {answer!r} is not a {answer_type} answer")
            answer = label if answer_type != "number" else answer
        try:
            image = open_image(row.get(cols["image"]), root)
        except Exception as err:  # noqa: BLE001 - any decoding failure is this record's reason
            raise ValueError(f"unreadable image: {err}") from err
        rid = row.get(cols["id"]) if "id" in cols else None
        out = dict(
            image=image,
            question=question,
            answer=str(answer),
            answer_type=answer_type,
            id=str(rid if rid is not None else i),
            source_index=i,
            family=family or row.get(cols.get("family", "")) or fmt.family or answer_type,
            group=str(group or row.get(cols.get("group", "")) or self._default_group(path)),
        )
        if choices:
            out["choices"] = choices
        if self.format == "amber":
            out["amber_type"] = group
        return out

    def load(self) -> tuple[list[dict], list[dict]]:
        paths = self._paths()
        parts = []  # (path, dataset, column map, image root)
        for path in paths:
            data = open_dataset(path, self.split, self.name)
            local = Path(path).expanduser()
            root = Path(self.image_root) if self.image_root else (local.parent if local.is_file() else None)
            parts.append((path, data, self._column_map(list(data.column_names)), root))
        if self.format == "amber":
            self._load_amber_annotations(paths[0])
        starts = [0]
        for _, data, _, _ in parts:
            starts.append(starts[-1] + len(data))
        total = starts[-1]
        records, skipped = [], []
        n = total if self.n is None else min(self.n, total)
        for i in range(n) if not self.spread else sorted({k * total // n for k in range(n)}):
            part = bisect.bisect_right(starts, i) - 1
            path, data, cols, root = parts[part]
            prefix = f"{Path(path).stem}/" if len(parts) > 1 else ""
            try:
                row = data[i - starts[part]]
            except Exception as err:  # noqa: BLE001 - an undecodable row (e.g. corrupt image bytes)
                skipped.append({"index": i, "id": f"{prefix}{i - starts[part]}", "reason": f"unreadable record: {err}"})
                continue
            try:
                rec = self.record(row, i, cols, root, path)
                rec["id"] = prefix + rec["id"]
                records.append(rec)
            except ValueError as err:
                rid = row.get(cols["id"]) if "id" in cols else None
                entry = {"index": i, "id": prefix + str(rid if rid is not None else i), "reason": str(err)}
                skipped.append(entry | ({"filtered": True} if isinstance(err, Filtered) else {}))
        return records, skipped


def as_source(source: RecordSource | str | None) -> RecordSource | None:
    """A source from a config value: a `RecordSource`, a path / hub id string (`Records(path)`), or None."""
    if source is None or isinstance(source, RecordSource):
        return source
    return Records(str(source))


def report_skipped(skipped: list[dict], source: object, bad_records: Literal["skip", "error"]) -> None:
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
