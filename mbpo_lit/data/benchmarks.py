"""Benchmarks' published layouts as record sources: `Pope`, `Amber`, `AOKVQA`, `VQAv2`.

Each is a `Records` (the same options: a hub id, a local file, a glob of files or a `save_to_disk` folder, with
`split`, `columns`, `image_root`, `answer_types`, `n`, `spread`, ...) that reads one benchmark's own columns
into this library's record schema (`mbpo_lit.data.sources.Record`). A command names one by class,
`--data Pope --data.path coco_pope_adversarial.json`, a recipe by `class_path: mbpo_lit.data.benchmarks.Pope`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, ClassVar

from mbpo_lit.core.answers import LETTERS
from mbpo_lit.data.sources import Filtered, Record, Records, SourceError


class Pope(Records):
    """POPE (Li et al., 2023): yes/no existence questions about COCO val2014 images, in three subsets.

    Reads POPE's own files (github.com/RUCAIBox/POPE, e.g. coco_pope_adversarial.json: jsonl lines
    {question_id, image, text, label}, the image a file name under `image_root`; the subset, random / popular /
    adversarial, is taken from the file name, so a glob of the three files groups each by its own) and the
    hub copy lmms-lab/POPE (question, answer, category, the image decoded; config "Full" for all of it). Every
    record is a yes/no question of family "existence", grouped by its subset.
    """

    LAYOUT: ClassVar[dict[str, tuple[str, ...]]] = {
        "image": ("image",),
        "question": ("text", "question"),
        "answer": ("label", "answer"),
        "id": ("question_id", "id"),
        "group": ("category",),
    }
    FIXED_TYPE: ClassVar[str | None] = "yes_no"
    FIXED_FAMILY: ClassVar[str | None] = "existence"

    def _default_group(self, path: str | None = None) -> str:
        if self.group is not None:
            return self.group
        m = re.search(r"(random|popular|adversarial)", Path(path or self.path).name)
        return m.group(1) if m else ""


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


class Amber(Records):
    """AMBER's discriminative queries (Wang et al., 2023, github.com/junyangwang0410/AMBER): yes/no questions
    about existence, attributes and relations, scored with AMBER's "no"-positive metrics.

    Reads data/query/query_discriminative*.json (a JSON list of {id, image, query}; the images, AMBER_<k>.jpg,
    are a separate download: pass `image_root`), each query joined by id with data/annotations.json (a JSON
    list of {id, type, truth}): the answer is the annotation's truth, the group its type's part of AMBER's
    breakdown (existence / attribute / relation, also the record's `amber_type`) and the family the type
    (`AMBER_TYPES`). Queries of the generative task (query_all.json holds them too) are left out and counted,
    like an `answer_types` filter.

    Args:
        path: the query file (see `Records` for this and the other options).
        annotations: AMBER's data/annotations.json (default: annotations.json in the query file's parent
            folder, as in AMBER's repository, or in its own folder).
    """

    LAYOUT: ClassVar[dict[str, tuple[str, ...]]] = {
        "image": ("image",),
        "question": ("query", "question"),
        "answer": ("truth",),
        "id": ("id",),
    }
    NEEDS: ClassVar[tuple[str, ...]] = ("image", "question", "answer", "id")
    JOINED: ClassVar[tuple[str, ...]] = ("truth",)  # from annotations.json by id: not a column of the queries
    FIXED_TYPE: ClassVar[str | None] = "yes_no"

    def __init__(self, path: str, *, annotations: str | None = None, **kwargs: Any):
        super().__init__(path, **kwargs)
        self.annotations = annotations
        self._amber: dict[str, dict] = {}  # AMBER's annotations by id, read by `load`
        self._amber_path: Path | None = None

    def _prepare(self, paths: list[str]) -> None:
        """AMBER's annotations.json as {id: annotation}, from `annotations` or next to the query file."""
        if self.annotations is not None:
            candidates = [Path(self.annotations).expanduser()]
        else:
            query = Path(paths[0]).expanduser()
            candidates = [query.parent.parent / "annotations.json", query.parent / "annotations.json"]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise SourceError(
                f"{self}: Amber needs AMBER's data/annotations.json; not found at "
                f"{', '.join(map(str, candidates))}: pass annotations=PATH"
            )
        try:
            items = json.loads(found.read_text())
            self._amber = {str(a["id"]): a for a in items}
        except (ValueError, TypeError, KeyError) as err:
            raise SourceError(f"{found}: not AMBER's annotations (a JSON list of {{id, type, truth}}): {err}") from err
        self._amber_path = found

    def _join(self, row: dict, cols: dict[str, str]) -> tuple[dict, str | None, str | None]:
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

    def record(self, row: dict, i: int, cols: dict[str, str], root: Path | None, path: str | None = None) -> Record:
        out = super().record(row, i, cols, root, path)
        out["amber_type"] = out["group"]  # AMBER's type (existence / attribute / relation): scored "no"-positive
        return out


class AOKVQA(Records):
    """A-OKVQA (Schwenk et al., 2022; the hub's HuggingFaceM4/A-OKVQA: question_id, question, choices,
    correct_choice_idx, direct_answers, rationales, image): multiple-choice questions needing commonsense.

    Each question is rendered as a lettered multiple-choice prompt (its four choices as "A. ...", ..., then
    "Answer with the option's letter from the given choices directly."); the answer is the correct choice's
    letter, the record's `choices` the options' texts (the verifier accepts an option's text for its letter).
    Answer type and family "choice".
    """

    LAYOUT: ClassVar[dict[str, tuple[str, ...]]] = {
        "image": ("image",),
        "question": ("question",),
        "choices": ("choices",),
        "answer": ("correct_choice_idx",),
        "id": ("question_id", "id"),
    }
    NEEDS: ClassVar[tuple[str, ...]] = ("image", "question", "answer", "choices")
    FIXED_TYPE: ClassVar[str | None] = "choice"
    FIXED_FAMILY: ClassVar[str | None] = "choice"

    def _prompt(self, question: str, answer: Any, choices: list[str] | None) -> tuple[str, Any]:
        choices = choices or []
        if not 2 <= len(choices) <= len(LETTERS) or not 0 <= int(answer) < len(choices):
            raise ValueError(f"{len(choices)} choices and correct index {answer}: needs 2-4 choices and an index")
        question += "\n" + "\n".join(f"{LETTERS[j]}. {c}" for j, c in enumerate(choices))
        question += "\nAnswer with the option's letter from the given choices directly."
        return question, LETTERS[int(answer)]


class VQAv2(Records):
    """VQAv2 (Goyal et al., 2017; the hub's lmms-lab/VQAv2, parquet, splits validation / testdev / test:
    question_id, question, multiple_choice_answer, answers, answer_type, image; HuggingFaceM4/VQAv2 has the same
    columns but is a loading script, which `datasets` 4 and later refuse): open questions about COCO images.

    The answer is the consensus answer (multiple_choice_answer), the answer type VQAv2's own mapped to this
    library's: "yes/no" -> "yes_no", "number" -> "number", "other" -> "phrase" (keep the close-ended ones with
    `answer_types=[yes_no, number]`; the others are skipped and counted).
    """

    LAYOUT: ClassVar[dict[str, tuple[str, ...]]] = {
        "image": ("image",),
        "question": ("question",),
        "answer": ("multiple_choice_answer", "answer"),
        "answer_type": ("answer_type",),
        "id": ("question_id", "id"),
    }
    TYPE_NAMES: ClassVar[dict[str, str]] = {"yes/no": "yes_no", "number": "number", "other": "phrase"}
