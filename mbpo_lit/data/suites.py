"""The suites MBPO's paper reports its gains on, in their hub copies' layouts: `MMStar`, `MMBench`, `AI2D`, `MME`.

Each is a `Records` (so a hub id, a local parquet file of the hub copy, a glob of its shards or a `save_to_disk`
folder, with `split`, `name`, `n`, `spread`, `answer_types` and the commands' `bad_records` all work) that reads
one benchmark's own columns into this library's record schema and carries the benchmark's own grouping on each
record, for its official scores (`mbpo_lit.evaluation.official`):

* `benchmark`: "mmstar", "mmbench", "ai2d" or "mme" (what `evaluation/official.py` scores each record by);
* `category` (MMStar's core capability, MMBench's leaf category, AI2D's category where the copy has one, MME's
  sub-task) and `l2_category` (MMStar's and MMBench's second level);
* `mmbench_index` and `rotation`: MMBench's question (index modulo 1,000,000) and which circular shift of its
  options this row is (index // 1,000,000): a question counts under circular evaluation only if all its rows
  are answered right;
* `mme_image`: MME's image (its question_id), whose two questions make one acc+ pair.

Multiple-choice records have answer type "choice", the right letter as answer and the options' texts as
`choices` (the verifier accepts an option's text for its letter); MME's are yes/no questions.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, ClassVar

from mbpo_lit.core.answers import LETTERS
from mbpo_lit.data.sources import Record, Records

# The instruction LLaVA's and lmms-eval's multiple-choice prompts end with (A-OKVQA's records use it too).
LETTER_PROMPT = "Answer with the option's letter from the given choices directly."
# MME's sub-tasks (its eval_tool/calculation.py): perception's ten and cognition's four, as lmms-lab/MME names them.
MME_PERCEPTION = (
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
)
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
CIRCULAR_STRIDE = 1_000_000  # MMBench: rotation k of question i has index i + k * 1,000,000


def present(value: Any) -> bool:
    """Whether a cell holds a value: not None, not NaN, not empty, not the string "nan" (pandas' export of NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    return bool(str(value).strip()) and str(value).strip().lower() != "nan"


def lettered(question: str, choices: list[str]) -> str:
    """The question with its options as "A. ...", one a line, then `LETTER_PROMPT` (as `AOKVQA` renders)."""
    options = "\n".join(f"{LETTERS[j]}. {c}" for j, c in enumerate(choices))
    return f"{question}\n{options}\n{LETTER_PROMPT}"


class Suite(Records):
    """A benchmark of the paper's table: a `Records` that adds `benchmark` and the `EXTRA` fields to each record.

    `EXTRA`: record key -> candidate source columns (the first present wins); a row without them leaves them out.
    """

    BENCHMARK: ClassVar[str] = ""
    EXTRA: ClassVar[dict[str, tuple[str, ...]]] = {}

    def record(self, row: dict, i: int, cols: dict[str, str], root: Path | None, path: str | None = None) -> Record:
        out = super().record(row, i, cols, root, path)
        out["benchmark"] = self.BENCHMARK
        for key, candidates in self.EXTRA.items():
            value = next((row[c] for c in candidates if c in row and present(row[c])), None)
            if value is not None:
                out[key] = str(value).strip()
        return self._finish(out, row)

    def _finish(self, out: Record, row: dict) -> Record:
        """The record with what the benchmark adds (`MMBench`: its index and rotation; `MME`: its image)."""
        return out


class MMStar(Suite):
    """MMStar (Chen et al., 2024, arXiv 2403.20330): 1,500 vision-indispensable multiple-choice questions in six
    core capabilities (`category`) and eighteen axes (`l2_category`).

    Layout of the hub copy Lin-Chen/MMStar (split "val"; lmms-lab/MMStar, gated, mirrors it), one parquet file with
    the images embedded: index (int), question (the options inline: "...\\nOptions: A: ..., B: ..., C: ..., D:
    ..."), image, answer (a letter), category, l2_category, meta_info (source, split, image_path). Confirmed from
    the dataset card's features and lmms-eval's tasks/mmstar (utils.py reads question, answer, category,
    l2_category, index). The prompt is the question as published, then `LETTER_PROMPT` (lmms-eval's); the
    options are parsed out of it into `choices`, so the verifier accepts an option's text too (a question whose
    options do not parse is still scored by its letter).
    """

    LAYOUT: ClassVar[dict[str, tuple[str, ...]]] = {
        "image": ("image",),
        "question": ("question",),
        "answer": ("answer",),
        "id": ("index", "id"),
    }
    FIXED_TYPE: ClassVar[str | None] = "choice"
    FIXED_FAMILY: ClassVar[str | None] = "choice"
    BENCHMARK: ClassVar[str] = "mmstar"
    EXTRA: ClassVar[dict[str, tuple[str, ...]]] = {"category": ("category",), "l2_category": ("l2_category",)}

    def _prompt(self, question: str, answer: Any, choices: list[str] | None) -> tuple[str, Any]:
        return f"{question.strip()}\n{LETTER_PROMPT}", answer

    def _finish(self, out: Record, row: dict) -> Record:
        if options := inline_options(out["question"].removesuffix(f"\n{LETTER_PROMPT}")):
            out["choices"] = options
        return out


def inline_options(question: str) -> list[str] | None:
    """MMStar's inline options ("Options: A: red, B: blue, C: green") as ["red", "blue", "green"], or None if
    the question holds no "Options:" part whose letters run A, B, ... (at most four)."""
    at = question.rfind("Options:")
    if at < 0:
        return None
    parts = re.split(r"(?:^|,\s*)([A-D]):\s*", question[at + len("Options:") :].strip())
    letters, texts = parts[1::2], [p.strip() for p in parts[2::2]]
    if parts[0].strip() or len(letters) < 2 or "".join(letters) != LETTERS[: len(letters)] or not all(texts):
        return None
    return texts


class MMBench(Suite):
    """MMBench (Liu et al., 2023, arXiv 2307.06281), its dev split (the one with answers), scored with circular
    evaluation.

    Layout of the hub copy lmms-lab/MMBench, config "en", split "dev" (parquet, images embedded): index, question,
    hint, answer (a letter), A, B, C, D (the options, C and D empty for two- and three-option questions), category,
    image, source, L2-category, comment, split. Confirmed from the dataset card's features and lmms-eval's
    tasks/mmbench (en_utils.py builds the prompt from hint, question and A-D; mmbench_evals.py groups a question's
    rows by index % 1e6, as VLMEvalKit's mcq_circular_eval does). lmms-lab/MMBench_EN and HuggingFaceM4/MMBench
    spell the second level "l2-category"; both are read. A question appears once per circular shift of its
    options, row k of question i having index i + k * 1,000,000.

    The prompt is LLaVA's: the hint (when there is one) on its own line, the question, the options as "A. ...",
    then `LETTER_PROMPT`. Records carry `mmbench_index` (i) and `rotation` (k).
    """

    LAYOUT: ClassVar[dict[str, tuple[str, ...]]] = {
        "image": ("image",),
        "question": ("question",),
        "answer": ("answer",),
        "choices": ("_options",),
        "id": ("index",),
    }
    NEEDS: ClassVar[tuple[str, ...]] = ("image", "question", "answer", "id")
    JOINED: ClassVar[tuple[str, ...]] = ("_options",)  # built from the A-D columns by `_join`
    FIXED_TYPE: ClassVar[str | None] = "choice"
    FIXED_FAMILY: ClassVar[str | None] = "choice"
    BENCHMARK: ClassVar[str] = "mmbench"
    EXTRA: ClassVar[dict[str, tuple[str, ...]]] = {
        "category": ("category",),
        "l2_category": ("L2-category", "l2-category", "l2_category"),
    }

    def _join(self, row: dict, cols: dict[str, str]) -> tuple[dict, str | None, str | None]:
        """The row with its options as a list (A first; a gap before a later option is refused) and its hint
        put before the question."""
        given = [row.get(letter) for letter in LETTERS]
        n = next((j for j, v in enumerate(given) if not present(v)), len(given))
        if any(present(v) for v in given[n:]):
            raise ValueError(f"options {[letter for letter, v in zip(LETTERS, given) if present(v)]}: not A, B, ...")
        question = row.get(cols["question"])
        if present(row.get("hint")) and present(question):
            question = f"{str(row['hint']).strip()}\n{question}"
        return dict(row) | {"_options": [str(v).strip() for v in given[:n]], cols["question"]: question}, None, None

    def _prompt(self, question: str, answer: Any, choices: list[str] | None) -> tuple[str, Any]:
        if not choices or len(choices) < 2:
            raise ValueError(f"{len(choices or [])} options: MMBench questions have 2-4 (columns A-D)")
        if str(answer).strip().upper() not in LETTERS[: len(choices)]:
            raise ValueError(f"answer {answer!r} is not one of the options' letters {LETTERS[: len(choices)]}")
        return lettered(question.strip(), choices), answer

    def _finish(self, out: Record, row: dict) -> Record:
        try:
            index = int(str(row.get("index")).strip())
        except ValueError as err:
            raise ValueError(f"index {row.get('index')!r} is not an integer (MMBench's circular groups)") from err
        out["mmbench_index"], out["rotation"] = index % CIRCULAR_STRIDE, index // CIRCULAR_STRIDE
        return out


class AI2D(Suite):
    """AI2D (Kembhavi et al., 2016, arXiv 1603.07396): multiple-choice questions about science diagrams.

    Layout of the hub copy lmms-lab/ai2d (split "test", 3,088 questions; parquet, images embedded): question,
    options (a list of the options' texts), answer (the right option's index, as a string), image. Confirmed from
    the dataset card's features and lmms-eval's tasks/ai2d (utils.py renders "A. ..." lines and takes the letter
    of int(answer)). That copy has no category; a copy with a `category` column (VLMEvalKit's AI2D_TEST) is
    reported per category too. The prompt is the question, the options as "A. ...", then `LETTER_PROMPT`.
    """

    LAYOUT: ClassVar[dict[str, tuple[str, ...]]] = {
        "image": ("image",),
        "question": ("question",),
        "choices": ("options", "choices"),
        "answer": ("answer",),
        "id": ("index", "id"),
    }
    NEEDS: ClassVar[tuple[str, ...]] = ("image", "question", "answer", "choices")
    FIXED_TYPE: ClassVar[str | None] = "choice"
    FIXED_FAMILY: ClassVar[str | None] = "choice"
    BENCHMARK: ClassVar[str] = "ai2d"
    EXTRA: ClassVar[dict[str, tuple[str, ...]]] = {"category": ("category",)}

    def _prompt(self, question: str, answer: Any, choices: list[str] | None) -> tuple[str, Any]:
        choices = choices or []
        index = str(answer).strip()
        if not 2 <= len(choices) <= len(LETTERS) or not index.isdigit() or not int(index) < len(choices):
            raise ValueError(f"{len(choices)} options and answer {answer!r}: needs 2-4 options and an option's index")
        return lettered(question.strip(), choices), LETTERS[int(index)]


class MME(Suite):
    """MME (Fu et al., 2023, arXiv 2306.13394): yes/no questions in 14 sub-tasks (10 of perception, 4 of
    cognition), two questions per image, one answered yes and one no.

    Layout of the hub copy lmms-lab/MME (split "test", 2,374 questions; parquet shards, images embedded):
    question_id (the image, e.g. "artwork/10002.jpg", shared by its two questions), image, question (ending
    " Please answer yes or no."), answer ("Yes" / "No"), category (the sub-task). Confirmed from the dataset
    card's features and lmms-eval's tasks/mme (utils.py groups a sub-task's answers by question_id, two per
    image). The prompt is the question as published. Records carry `category` (the sub-task, one of
    `MME_PERCEPTION` + `MME_COGNITION`; another is refused) and `mme_image`; ids are "<question_id>#<row>".
    """

    LAYOUT: ClassVar[dict[str, tuple[str, ...]]] = {
        "image": ("image",),
        "question": ("question",),
        "answer": ("answer",),
        "id": ("question_id",),
    }
    NEEDS: ClassVar[tuple[str, ...]] = ("image", "question", "answer", "id")
    FIXED_TYPE: ClassVar[str | None] = "yes_no"
    FIXED_FAMILY: ClassVar[str | None] = "yes_no"
    BENCHMARK: ClassVar[str] = "mme"
    EXTRA: ClassVar[dict[str, tuple[str, ...]]] = {"category": ("category",)}

    def _finish(self, out: Record, row: dict) -> Record:
        task = out.get("category")
        if task not in MME_PERCEPTION + MME_COGNITION:
            raise ValueError(f"MME sub-task {task!r} is none of {list(MME_PERCEPTION + MME_COGNITION)}")
        out["mme_image"] = out["id"]
        out["id"] = f"{out['id']}#{out['source_index']}"
        return out
