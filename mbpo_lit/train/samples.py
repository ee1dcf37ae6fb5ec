"""The sample table of a training step: what the policy answered online, with its reward and advantage."""

from __future__ import annotations

import json
from pathlib import Path


def sample_rows(step: int, scored) -> list[dict]:
    """One row per online row of a scored step (`scored.Scored`): question, answer, completion, reward,
    advantage; and, in a step whose online rows are not all samples from the clean image (`sampling.perturbed_k`,
    `loss.offline_as: mixed_groups`), each row's kind ("clean", "perturbed", "chosen", "rejected")."""
    rows = zip(scored.records, scored.texts, scored.rewards, scored.advantages)
    out = [
        {"step": step, "question": r["question"], "answer": r["answer"], "completion": t}
        | {"reward": float(w), "advantage": float(a)}
        for r, t, w, a in rows
    ][: scored.n_online]
    if any(kind != "clean" for kind in scored.kinds):
        out = [row | {"kind": kind} for row, kind in zip(out, scored.kinds)]
    return out


def format_samples(rows: list[dict], limit: int = 8) -> str:
    """The first `limit` rows as the console shows them."""
    head = f"step {rows[0]['step']} samples (question | answer | completion | reward):\n" if rows else ""
    return head + "\n".join(
        f"  {x['question'][:40]:<40} | {x['answer']:<8} | {x['completion'][:24]!r:<26} | {x['reward']:+.2f}"
        for x in rows[:limit]
    )


def append_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.writelines(json.dumps(x) + "\n" for x in rows)


def log_samples(loggers: list, rows: list[dict], step: int) -> None:
    """The sample table to each logger that shows tables or text: Weights & Biases gets a table, TensorBoard a
    markdown table under "samples". Others (CSV) have no place for it: `samples.jsonl` holds the rows."""
    if not rows:
        return
    columns = list(rows[0])
    for logger in loggers:
        if hasattr(logger, "log_table"):  # WandbLogger
            logger.log_table(key="samples", columns=columns, data=[[r[c] for c in columns] for r in rows], step=step)
        elif hasattr(getattr(logger, "experiment", None), "add_text"):  # TensorBoardLogger's SummaryWriter
            lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
            lines += ["| " + " | ".join(str(r[c]).replace("|", "\\|") for c in columns) + " |" for r in rows]
            logger.experiment.add_text("samples", "\n".join(lines), global_step=step)
