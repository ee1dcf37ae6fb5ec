"""Judge-free evaluation: scoring by the shared verifier (`scoring`), paired intervals (`intervals`), tables
(`tables`), and the evaluator that generates and scores (`evaluator`)."""

from mbpo_lit.evaluation.evaluator import (
    EvalConfig,
    before_after,
    evaluate_model,
    evaluate_records,
    evaluate_source,
    greedy_answers,
    load_eval_set,
)
from mbpo_lit.evaluation.intervals import paired_change
from mbpo_lit.evaluation.scoring import score, summarize
from mbpo_lit.evaluation.tables import change_column, format_table

__all__ = [
    "EvalConfig",
    "before_after",
    "change_column",
    "evaluate_model",
    "evaluate_records",
    "evaluate_source",
    "format_table",
    "greedy_answers",
    "load_eval_set",
    "paired_change",
    "score",
    "summarize",
]
