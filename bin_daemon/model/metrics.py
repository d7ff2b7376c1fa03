"""Classification metrics from labels alone (numpy only): used by `evaluate` and training."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ClassMetrics:
    precision: float
    recall: float
    f1: float
    support: int


@dataclass
class Report:
    labels: list[str]
    confusion: np.ndarray  # rows = true label, columns = predicted

    @property
    def n(self) -> int:
        return int(self.confusion.sum())

    @property
    def accuracy(self) -> float:
        return float(np.trace(self.confusion) / max(self.n, 1))

    @property
    def per_class(self) -> dict[str, ClassMetrics]:
        out = {}
        for i, label in enumerate(self.labels):
            tp = float(self.confusion[i, i])
            predicted = float(self.confusion[:, i].sum())
            support = int(self.confusion[i, :].sum())
            precision = tp / predicted if predicted else 0.0
            recall = tp / support if support else 0.0
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            out[label] = ClassMetrics(precision, recall, f1, support)
        return out

    @property
    def macro_f1(self) -> float:
        scores = [m.f1 for m in self.per_class.values() if m.support]
        return float(np.mean(scores)) if scores else 0.0

    @property
    def min_recall(self) -> float:
        return min((m.recall for m in self.per_class.values() if m.support), default=0.0)

    def as_dict(self) -> dict:
        return {
            "n": self.n,
            "accuracy": round(self.accuracy, 4),
            "macro_f1": round(self.macro_f1, 4),
            "labels": list(self.labels),
            "per_class": {
                label: {
                    "precision": round(m.precision, 4),
                    "recall": round(m.recall, 4),
                    "f1": round(m.f1, 4),
                    "support": m.support,
                }
                for label, m in self.per_class.items()
            },
            "confusion": self.confusion.astype(int).tolist(),
        }


def report(
    labels: list[str], true: list[str] | np.ndarray, predicted: list[str] | np.ndarray
) -> Report:
    """Confusion matrix and per-class metrics; true and predicted are label names or indices."""
    index = {label: i for i, label in enumerate(labels)}
    confusion = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for t, p in zip(true, predicted, strict=True):
        ti = index[t] if isinstance(t, str) else int(t)
        pi = index[p] if isinstance(p, str) else int(p)
        confusion[ti, pi] += 1
    return Report(list(labels), confusion)
