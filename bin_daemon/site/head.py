"""The site head: what the site taught, combined with the model's own classes (numpy only).

A first, minimal version of the agreed interface (``SiteHead.fit`` / ``apply`` /
``SiteDecision``) so the store, the CLI and the daemon can be built and tested against it;
the method chosen by measurement replaces it. This one imprints weights as in Qi, Brown &
Lowe (2018): each taught label's weight is the mean of its examples' L2-normalised
embeddings. An item's cosine similarities to those means, and a fixed "none of these"
similarity ``OTHER_SIMILARITY``, go through a sharp softmax; the site's share ``SITE_WEIGHT``
of the result goes to the taught labels by those probabilities and, for "none of these", to
the model's own probabilities; the rest is the model's own. Labels the model does not have
(site-only labels) get their own class means and so can be predicted. It keeps the model
card's unsure threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bin_daemon.errors import BinDaemonError

SHARPNESS = 20.0
"""Inverse softmax temperature over cosine similarities (which lie in -1..1)."""
SITE_WEIGHT = 0.6
"""Share of the site's probabilities in the mix; the model's own has the rest."""
OTHER_SIMILARITY = 0.3
"""Similarity of "none of the taught labels" (the pooled features are sparse: two views of
one class typically score 0.3-0.7, different classes 0.1-0.3 on tests/data/samples)."""


@dataclass(frozen=True)
class SiteDecision:
    labels: tuple[str, ...]
    """The head's labels: the model's labels first, then site-only labels."""
    probs: np.ndarray
    """Float probabilities over ``labels``, summing to 1."""
    changed: bool
    """The head's top label differs from the model's own top label."""


def _normalise(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=-1, keepdims=True)
    return rows / np.maximum(norms, 1e-12)


class SiteHead:
    """Class means of the taught examples, fused with the model's probabilities."""

    def __init__(
        self,
        labels: tuple[str, ...],
        model_labels: tuple[str, ...],
        taught: tuple[str, ...],
        means: np.ndarray,
    ) -> None:
        self.labels = labels
        self.unsure_threshold: float | None = None
        self._n_model = len(model_labels)
        self._taught_index = np.array([labels.index(label) for label in taught], dtype=np.int64)
        self._means = means

    @classmethod
    def fit(
        cls,
        embeddings: np.ndarray,
        labels: Sequence[str],
        *,
        model_labels: Sequence[str],
        model_path: Path | None = None,
    ) -> SiteHead:
        x = np.asarray(embeddings, dtype=np.float32)
        if x.ndim != 2:
            raise BinDaemonError(
                f"site head: embeddings must be a 2-D array (n, d), got shape {x.shape}"
            )
        if len(labels) != len(x):
            raise BinDaemonError(
                f"site head: {len(x)} embeddings but {len(labels)} labels (one label each)"
            )
        if len(x) == 0:
            raise BinDaemonError("site head: no examples to fit on")
        if x.shape[1] == 0 or not np.isfinite(x).all():
            raise BinDaemonError("site head: embeddings are empty or not finite")
        model = tuple(model_labels)
        site_only = tuple(dict.fromkeys(label for label in labels if label not in model))
        all_labels = model + site_only
        taught = tuple(label for label in all_labels if label in set(labels))
        normalised = _normalise(x)
        names = np.asarray(list(labels))
        means = np.stack([normalised[names == label].mean(axis=0) for label in taught])
        return cls(all_labels, model, taught, _normalise(means))

    @property
    def dimension(self) -> int:
        return int(self._means.shape[1])

    def apply(self, embedding: np.ndarray, model_probs: np.ndarray) -> SiteDecision:
        e = np.asarray(embedding, dtype=np.float32).reshape(-1)
        if e.shape[0] != self.dimension:
            raise BinDaemonError(
                f"site head: embedding has {e.shape[0]} values, the head was fitted on "
                f"{self.dimension}"
            )
        model = np.asarray(model_probs, dtype=np.float64).reshape(-1)
        if model.shape[0] != self._n_model:
            raise BinDaemonError(
                f"site head: {model.shape[0]} model probabilities, expected {self._n_model}"
            )
        similarity = np.append(self._means @ _normalise(e), OTHER_SIMILARITY)
        logits = SHARPNESS * similarity.astype(np.float64)
        site = np.exp(logits - logits.max())
        site /= site.sum()
        probs = np.zeros(len(self.labels), dtype=np.float64)
        total = model.sum()
        own = model / total if total > 0 else np.full_like(model, 1 / len(model))
        probs[: self._n_model] = (1 - SITE_WEIGHT + SITE_WEIGHT * site[-1]) * own
        probs[self._taught_index] += SITE_WEIGHT * site[:-1]
        probs /= probs.sum()
        changed = int(np.argmax(probs)) != int(np.argmax(model))
        return SiteDecision(labels=self.labels, probs=probs, changed=changed)
