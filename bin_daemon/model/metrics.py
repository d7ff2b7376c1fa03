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


# -- bin level: where items went, not what they were called ---------------------------------


@dataclass
class BinReport:
    """Items by the bin they belong in (rows) and the bin they were sent to (columns).

    Every bin except ``fallback_bin`` counts as a recycling bin: it collects one kind of
    material, so anything else in it contaminates it. The fallback bin takes what is left and
    what the classifier is unsure of, so nothing in it counts as contamination.
    """

    bins: list[str]
    fallback_bin: str
    confusion: np.ndarray  # rows = true bin, columns = bin sent to

    @property
    def n(self) -> int:
        return int(self.confusion.sum())

    @property
    def accuracy(self) -> float:
        """Share of items sent to the bin their true label belongs in."""
        return float(np.trace(self.confusion) / max(self.n, 1))

    @property
    def recycling_bins(self) -> list[str]:
        return [b for b in self.bins if b != self.fallback_bin]

    def _foreign(self, columns: list[int]) -> tuple[int, int]:
        sent = int(self.confusion[:, columns].sum())
        right = int(sum(self.confusion[j, j] for j in columns))
        return sent, sent - right

    @property
    def contamination(self) -> dict[str, Contamination]:
        """Per recycling bin: how many items went in, and how many belong in another bin."""
        out = {}
        for j, name in enumerate(self.bins):
            if name != self.fallback_bin:
                out[name] = Contamination(*self._foreign([j]))
        return out

    @property
    def recycling_contamination(self) -> Contamination:
        """All recycling bins together."""
        columns = [j for j, name in enumerate(self.bins) if name != self.fallback_bin]
        return Contamination(*self._foreign(columns))

    def as_dict(self) -> dict:
        return {
            "n": self.n,
            "bin_accuracy": round(self.accuracy, 4),
            "contamination": {name: c.as_dict() for name, c in self.contamination.items()},
            "recycling_contamination": self.recycling_contamination.as_dict(),
            "bins": list(self.bins),
            "confusion": self.confusion.astype(int).tolist(),
        }


@dataclass(frozen=True)
class Contamination:
    sent: int  # items that went into the bin
    foreign: int  # of them, items whose true label belongs in another bin

    @property
    def share(self) -> float | None:
        """``foreign / sent``; None for a bin nothing went into."""
        return self.foreign / self.sent if self.sent else None

    def as_dict(self) -> dict:
        share = self.share
        return {
            "sent": self.sent,
            "foreign": self.foreign,
            "share": None if share is None else round(share, 4),
        }


def bin_report(
    bins: list[str],
    fallback_bin: str,
    true_bins: list[str] | np.ndarray,
    sent_bins: list[str] | np.ndarray,
) -> BinReport:
    """The bin confusion of items whose true bins and chosen bins are given by name."""
    if fallback_bin not in bins:
        raise ValueError(f"fallback bin {fallback_bin!r} is not one of {bins}")
    index = {name: i for i, name in enumerate(bins)}
    confusion = np.zeros((len(bins), len(bins)), dtype=np.int64)
    for t, s in zip(true_bins, sent_bins, strict=True):
        confusion[index[t], index[s]] += 1
    return BinReport(list(bins), fallback_bin, confusion)


@dataclass(frozen=True)
class Coverage:
    """At an unsure threshold: how many items are sorted, and how well.

    An item whose confidence is below the threshold is "unsure" and goes to the fallback bin
    whatever its label; ``coverage`` is the share of items that are not, ``accuracy`` the
    top-1 accuracy on those.
    """

    threshold: float
    n: int
    covered: int
    correct: int  # covered items whose top-1 label is right

    @property
    def coverage(self) -> float:
        return self.covered / self.n if self.n else 0.0

    @property
    def accuracy(self) -> float | None:
        """Top-1 accuracy on the covered items; None when none is covered."""
        return self.correct / self.covered if self.covered else None

    def as_dict(self) -> dict:
        accuracy = self.accuracy
        return {
            "threshold": self.threshold,
            "n": self.n,
            "covered": self.covered,
            "coverage": round(self.coverage, 4),
            "accuracy_covered": None if accuracy is None else round(accuracy, 4),
        }


def coverage_at(
    threshold: float, confidences: list[float] | np.ndarray, correct: list[bool] | np.ndarray
) -> Coverage:
    """Items with ``confidence >= threshold`` are covered (the daemon's rule for "sure")."""
    confidence = np.asarray(confidences, dtype=np.float64)
    right = np.asarray(correct, dtype=bool)
    if confidence.shape != right.shape:
        raise ValueError(f"{confidence.size} confidences but {right.size} correct flags")
    covered = confidence >= threshold
    return Coverage(threshold, int(confidence.size), int(covered.sum()), int(right[covered].sum()))


@dataclass
class BinMetrics:
    """Bin-level figures under one policy: top-1 labels' bins, and the daemon's own decisions."""

    policy: dict  # bin_for_label, fallback_bin, unsure_threshold, recycling_bins, rule
    top1: BinReport  # each item to its top-1 label's bin, whatever the confidence
    decided: BinReport  # as the daemon decides: unsure items to the fallback bin
    coverage: Coverage

    def as_dict(self) -> dict:
        return {
            "policy": self.policy,
            "top1": self.top1.as_dict(),
            "at_threshold": {**self.coverage.as_dict(), **self.decided.as_dict()},
        }
