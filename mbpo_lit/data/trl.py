"""TRL's dataset formats as record sources: `Conversations` and `Preferences`.

TRL (huggingface.co/docs/trl, "Dataset formats and types") names a dataset's format by its columns. A vision
dataset carries its images in an `images` column, and a user turn's content is a list of parts,
`{"type": "image"}` where an image goes and `{"type": "text", "text": ...}`:

* conversational language modeling: `messages`, a list of turns `{"role", "content"}` (read by `Conversations`:
  the user turn is the question, the assistant turn the answer);
* preference: `prompt`, `chosen`, `rejected`, either conversational (`prompt` a list of turns, `chosen` and
  `rejected` assistant turns) or plain strings; with an implicit prompt (no `prompt` column) the conversational
  `chosen` holds the user turn too (read by `Preferences`: the prompt is the question, `chosen` the answer and
  `rejected` the record's `rejected`).

`python -m mbpo_lit mine` writes its pairs in TRL's conversational preference format, so `Preferences` is also how
the hybrid data module reads mined pairs (with mining's extra columns: `answer_type`, `choices` as JSON, `group`,
`prior_answer`). Each record holds one image; a row with none or several is listed with the reason.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from mbpo_lit.core.answers import normalize_phrase
from mbpo_lit.data.sources import Record, Records, SourceError


def turn_text(content: Any) -> str:
    """The text of a turn's content: a string, or the text parts of a list of parts joined by spaces."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ValueError(f"a turn's content must be text or a list of parts, got {type(content).__name__}")
    return " ".join(str(p.get("text") or "") for p in content if p.get("type") == "text").strip()


def turns(messages: Any, column: str) -> list[dict]:
    """A conversational column's turns; raises ValueError naming the column if it is not a list of turns."""
    if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m for m in messages):
        raise ValueError(f"{column} is not a list of {{role, content}} turns")
    return messages


def said(messages: Any, role: str, column: str) -> str:
    """The text of the one turn of `role` in `messages` (a conversation; "" if it has none), or a plain string."""
    if isinstance(messages, str):
        return messages
    found = [m for m in turns(messages, column) if m["role"] == role]
    if len(found) > 1:
        raise ValueError(f"{column} has {len(found)} {role} turns: a record reads one question and one answer")
    return turn_text(found[0].get("content")) if found else ""  # none: the record's question or answer is missing


class Conversations(Records):
    """TRL's conversational format with images: `messages` (one user turn, the question, with an image part; one
    assistant turn, the answer; a system turn is ignored) and `images` (one image per row). The answer type is
    the `answer_type` option (default "phrase"), or an `answer_type` column. Options as `Records`."""

    LAYOUT: ClassVar[dict[str, tuple[str, ...]]] = {
        "image": ("images", "image"),
        "question": ("_question",),
        "answer": ("_answer",),
        "answer_type": ("answer_type",),
        "id": ("id",),
        "group": ("group",),
    }
    JOINED: ClassVar[tuple[str, ...]] = ("_question", "_answer")
    FORMAT_COLUMNS: ClassVar[tuple[str, ...]] = ("messages",)  # the columns the format needs

    def _column_map(self, available: list[str]) -> dict[str, str]:
        if missing := [c for c in self.FORMAT_COLUMNS if c not in available]:
            raise SourceError(f"{self}: no column {missing} ({type(self).__name__}); its columns are {available}")
        return super()._column_map(available)

    def _join(self, row: dict, cols: dict[str, str]) -> tuple[dict, str | None, str | None]:
        messages = row.get("messages")
        return (
            row | {"_question": said(messages, "user", "messages"), "_answer": said(messages, "assistant", "messages")},
            None,
            None,
        )


class Preferences(Records):
    """TRL's preference format (`prompt`, `chosen`, `rejected`; conversational or plain; `images` or `image`),
    and the pairs `python -m mbpo_lit mine` writes (`OUT/dataset`, or `OUT` itself): each record's `answer` is
    the chosen answer and `rejected` the rejected one. A pair whose rejected answer is empty, or equals the chosen
    one ("Red." for "red": training on it would push the right answer down), is listed with the reason. Records
    carry `choices` (None when the row has none) and `prior_answer` ("" when unknown). Options as `Records`."""

    LAYOUT: ClassVar[dict[str, tuple[str, ...]]] = Conversations.LAYOUT | {"choices": ("_choices",)}
    JOINED: ClassVar[tuple[str, ...]] = ("_question", "_answer", "_choices")

    def __init__(self, path: str, **kwargs: Any):
        folder = Path(path).expanduser()
        if (folder / "dataset" / "dataset_info.json").is_file() and not (folder / "dataset_info.json").is_file():
            path = str(folder / "dataset")  # a mining output's --out folder: its pairs are in dataset/
        super().__init__(path, **kwargs)

    def _column_map(self, available: list[str]) -> dict[str, str]:
        if missing := [c for c in ("chosen", "rejected") if c not in available]:
            raise SourceError(f"{self}: no column {missing} (Preferences); its columns are {available}")
        return super()._column_map(available)

    def _join(self, row: dict, cols: dict[str, str]) -> tuple[dict, str | None, str | None]:
        prompt, chosen = row.get("prompt"), row.get("chosen")
        if prompt is None and isinstance(chosen, str):
            raise ValueError("a plain preference row without a prompt: the question cannot be told from the answer")
        question = said(prompt if prompt is not None else chosen, "user", "prompt" if prompt is not None else "chosen")
        choices = row.get("choices")
        if isinstance(choices, str):  # mining writes a multiple-choice record's options as JSON
            choices = json.loads(choices or "[]")
        joined = {"_question": question, "_answer": said(chosen, "assistant", "chosen"), "_choices": choices or None}
        return row | joined, None, None

    def record(self, row: dict, i: int, cols: dict[str, str], root: Path | None, path: str | None = None) -> Record:
        rejected = row.get("rejected")
        text = said(rejected, "assistant", "rejected") if rejected is not None else ""
        if not text.strip():
            raise ValueError("missing rejected answer")
        out = super().record(row, i, cols, root, path)
        if normalize_phrase(text) == normalize_phrase(out["answer"]):
            raise ValueError("rejected answer equals the chosen one")  # training on it would push the answer down
        out["rejected"] = text
        out.setdefault("choices", None)
        out["prior_answer"] = str(row.get("prior_answer") or "")
        return out
