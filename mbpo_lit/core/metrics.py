"""Judge-free hallucination metrics: POPE, AMBER discriminative, CHAIR, and accuracy with a gap.

Plain functions over parsed predictions, so they score the embedded world and real benchmark files alike.
An unparseable prediction (None) is always counted, and always counted as wrong: for yes/no metrics it is
scored as the answer opposite to the label, and it is never a "yes" in the yes-ratio.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torchmetrics.classification import BinaryAccuracy, BinaryF1Score, BinaryPrecision, BinaryRecall


def binary_metrics(predictions: Sequence[str | None], labels: Sequence[str], positive: str) -> dict[str, float]:
    """Accuracy, precision, recall and F1 of yes/no answers with `positive` as the positive class.

    Also returns the ratio of predictions equal to `positive` and the count of unparseable predictions.
    """
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions but {len(labels)} labels")
    if not labels:
        return {}
    negative = "no" if positive == "yes" else "yes"
    bad = [lab for lab in labels if lab not in ("yes", "no")]
    if bad:
        raise ValueError(f"yes/no labels expected, got {bad[0]!r}")
    # An unparseable answer is wrong whatever the label: score it as the opposite answer.
    scored = [
        p if p in ("yes", "no") else (negative if lab == positive else positive) for p, lab in zip(predictions, labels)
    ]
    pred = torch.tensor([p == positive for p in scored], dtype=torch.long)
    target = torch.tensor([lab == positive for lab in labels], dtype=torch.long)
    return {
        "accuracy": BinaryAccuracy()(pred, target).item(),
        "precision": BinaryPrecision(zero_division=0.0)(pred, target).item(),
        "recall": BinaryRecall(zero_division=0.0)(pred, target).item(),
        "f1": BinaryF1Score(zero_division=0.0)(pred, target).item(),
        f"{positive}_ratio": sum(p == positive for p in predictions) / len(predictions),
        "unparseable": sum(p not in ("yes", "no") for p in predictions),
        "n": len(labels),
    }


def pope_metrics(predictions: Sequence[str | None], labels: Sequence[str]) -> dict[str, float]:
    """POPE: accuracy, precision, recall, F1 with "yes" positive, and the yes-ratio of the predictions."""
    return binary_metrics(predictions, labels, positive="yes")


def amber_discriminative(predictions: Sequence[str | None], labels: Sequence[str]) -> dict[str, float]:
    """AMBER's discriminative scores: the same statistics with "no" as the positive class."""
    return binary_metrics(predictions, labels, positive="no")


def named_objects(mention: str, present: Sequence[str], kind: Callable[[str], str] | None = None) -> set[str]:
    """The present objects a mention names: those it equals, or, given `kind` (object -> its kind), those whose
    kind it equals ("circle" names "red circle"). An empty set: the mention is hallucinated (CHAIR's rule)."""
    return {o for o in present if mention == o or (kind is not None and mention == kind(o))}


def chair(
    mentions: Sequence[Sequence[str]],
    truths: Sequence[Sequence[str]],
    kind: Callable[[str], str] | None = None,
) -> dict[str, float]:
    """CHAIR over captions, given the objects each caption mentions and the objects truly present.

    A mention names a present object when it equals it, or, given `kind` (object -> its kind, e.g. the last
    word: "red circle" -> "circle"), when it equals the object's kind; a mention that names no present object
    is hallucinated. CHAIR_i = hallucinated mentions / all mentions; CHAIR_s = captions with at least one
    hallucinated mention / all captions; recall = distinct true objects named by some mention / distinct true
    objects. A caption that names every present object and nothing else has CHAIR_i 0 and recall 1.
    """
    if len(mentions) != len(truths):
        raise ValueError(f"{len(mentions)} captions but {len(truths)} ground-truth object lists")
    n_mentions = n_halluc = n_bad_captions = n_recalled = n_true = 0
    for said, present in zip(mentions, truths):
        present = list(dict.fromkeys(present))
        named = [named_objects(m, present, kind) for m in said]
        halluc = sum(not objects for objects in named)
        n_mentions += len(said)
        n_halluc += halluc
        n_bad_captions += bool(halluc)
        n_recalled += len(set().union(*named))
        n_true += len(present)
    return {
        "chair_s": n_bad_captions / len(mentions) if mentions else 0.0,
        "chair_i": n_halluc / n_mentions if n_mentions else 0.0,
        "recall": n_recalled / n_true if n_true else 0.0,
        "mentions": n_mentions,
        "n": len(mentions),
    }


def accuracy(correct: Sequence[bool]) -> float:
    """Fraction correct (0.0 on an empty list, which the caller reports by its count)."""
    return sum(map(bool, correct)) / len(correct) if correct else 0.0
