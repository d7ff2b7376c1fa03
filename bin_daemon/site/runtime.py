"""The model with the site head applied: what the daemon, ``classify`` and ``evaluate`` run.

:class:`SiteClassifier` has the classifier's interface (``classify``, ``labels``,
``sha256``, ...). It fits the head from the store at start and again when the store's
change counter (:meth:`SiteStore.generation`) moves; :meth:`refresh` is that check, one
tiny SQLite query, which the daemon calls between items. Examples embedded by another model
are embedded again from their JPEGs (once, stored) before a fit. Anything wrong with the
store or the fit is logged and the model runs alone: the bin never stops over its site data.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from bin_daemon.errors import BinDaemonError
from bin_daemon.model.classifier import TOP_K, Prediction, shift_priors
from bin_daemon.site.head import SiteHead
from bin_daemon.site.store import SiteStore
from bin_daemon.site.teach import embed_jpeg

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SitePrediction(Prediction):
    site: bool = False
    """The site head changed the model's own top label."""
    model_label: str | None = None
    """The model's own top label (before the head)."""


class SiteClassifier:
    def __init__(
        self,
        classifier: Any,
        store: SiteStore | None,
        *,
        on_progress: Callable[[], None] | None = None,
        persist: bool = True,
    ) -> None:
        """``persist``: store embeddings computed again (the daemon); False keeps them in
        memory only (``classify``/``evaluate`` with another model must not rewrite the
        daemon's store)."""
        self.classifier = classifier
        self.store = store
        self.head: SiteHead | None = None
        self.examples = 0
        self.counts: dict[str, int] = {}
        self.problem: str | None = None
        """Why the store's examples are not applied (None when they are, or there are none)."""
        self.fit_ms = 0.0
        self._generation: int | None = None
        self._on_progress = on_progress
        self._persist = persist
        self._fresh: dict[int, np.ndarray] = {}

    # -- the classifier's interface --------------------------------------------------------

    def __getattr__(self, name: str) -> Any:  # model_path, version, card, runtime, ...
        if name == "classifier":  # not set yet (copying, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.classifier, name)

    @property
    def sha256(self) -> str:
        return self.classifier.sha256

    @property
    def labels(self) -> list[str]:
        return list(self.head.labels) if self.head is not None else list(self.classifier.labels)

    @property
    def unsure_threshold(self) -> float | None:
        """The head's recalibrated threshold, or None (keep the configured or card's one)."""
        return self.head.unsure_threshold if self.head is not None else None

    def classify(self, rgb: np.ndarray) -> Prediction:
        """The model's prediction, with the head applied when there is one (a
        :class:`SitePrediction`); without a head, the model's own prediction unchanged."""
        prediction = self.classifier.classify(rgb)
        if self.head is None:
            return prediction
        try:
            return apply_site_head(
                self.head, prediction, getattr(self.classifier, "class_bias", None)
            )
        except BinDaemonError as error:  # the item still gets the model's own label
            self._fail(str(error))
            return prediction

    # -- the store -------------------------------------------------------------------------

    def refresh(self, *, force: bool = False) -> bool:
        """Fit the head again if the store changed (or ``force``); True if it was refitted."""
        if self.store is None:
            return False
        try:
            generation = self.store.generation()
        except BinDaemonError as error:
            self._fail(str(error))
            return False
        if generation == self._generation and not force:
            return False
        self._generation = generation
        started = time.perf_counter()
        try:
            self._reembed()
            self._fit()
        except BinDaemonError as error:
            self._fail(str(error))
            return True
        self.fit_ms = (time.perf_counter() - started) * 1000
        return True

    def _fail(self, why: str) -> None:
        if why != self.problem:
            log.error("site store not applied, the model runs alone: %s", why)
        self.problem = why
        self.head = None

    def _reembed(self) -> None:
        assert self.store is not None
        if getattr(self.classifier, "embedding_size", None) is None:
            return
        stale = self.store.stale(self.sha256)
        if stale:
            log.info(
                "site store: computing %d embeddings again with model %s",
                len(stale),
                self.sha256[:12],
            )
        for example_id in stale:
            if example_id in self._fresh:
                continue
            jpeg = self.store.jpeg(example_id)
            if jpeg is None:  # removed meanwhile
                continue
            try:
                embedding = embed_jpeg(self.classifier, jpeg, f"site example {example_id}")
            except BinDaemonError as error:
                log.warning("site example %d skipped: %s", example_id, error)
                continue
            if self._persist:
                self.store.set_embedding(example_id, embedding, self.sha256)
            else:
                self._fresh[example_id] = embedding
            if self._on_progress is not None:
                self._on_progress()

    def _fit(self) -> None:
        assert self.store is not None
        stored = self.store.examples()
        if stored and getattr(self.classifier, "embedding_size", None) is None:
            self.examples, self.counts = 0, {}
            self._fail(
                f"model {self.classifier.version} has no embedding output, so the "
                f"{len(stored)} site examples cannot be applied"
            )
            return
        examples = [
            replace(e, embedding=self._fresh[e.id], model_sha256=self.sha256)
            if e.id in self._fresh
            else e
            for e in stored
        ]
        skipped = sum(e.model_sha256 != self.sha256 for e in examples)
        if skipped:  # their JPEG could not be embedded again (logged)
            log.warning("site store: %d examples left out (not embedded by this model)", skipped)
        examples = [e for e in examples if e.model_sha256 == self.sha256]
        self.counts = {}
        for example in examples:
            self.counts[example.label] = self.counts.get(example.label, 0) + 1
        self.examples = len(examples)
        if not examples:
            self.head = None
            self.problem = None
            return
        self.head = SiteHead.fit(
            np.stack([e.embedding for e in examples]),
            [e.label for e in examples],
            model_labels=list(self.classifier.labels),
            model_path=getattr(self.classifier, "model_path", None),
        )
        self.problem = None
        log.debug("site head fitted: %s", self.describe())

    def describe(self) -> str:
        """One line: what the store holds and whether it is applied."""
        if self.store is None:
            return "site store off"
        if self.problem is not None:
            return f"site store {self.store.path}: not applied ({self.problem})"
        if not self.examples:
            return f"site store {self.store.path}: no examples (the model alone)"
        per_label = ", ".join(f"{label} {n}" for label, n in sorted(self.counts.items()))
        how = f"; {self.head.method}" if self.head is not None and self.head.method else ""
        return f"site store {self.store.path}: {self.examples} examples applied ({per_label}){how}"


def apply_site_head(
    head: SiteHead, prediction: Prediction, class_bias: Mapping[str, float] | None = None
) -> Prediction:
    """``prediction`` with ``head`` applied: a :class:`SitePrediction` (the model's own
    prediction unchanged when it carries no embedding). ``class_bias`` is the classifier's prior
    shift, already in ``prediction`` and applied again to the head's own probabilities. The head
    is only read, so the console's thread may apply the loop's head.
    :class:`BinDaemonError` when the embedding does not fit the head."""
    if getattr(prediction, "embedding", None) is None:
        return prediction
    decision = head.apply(prediction.embedding, prediction.scores)
    probs = decision.probs
    if class_bias and head.from_model_layer:  # (the fallback fused the shifted probabilities)
        probs = shift_priors(probs, decision.labels, class_bias)
    order = np.argsort(-probs, kind="stable")
    top = [(decision.labels[i], float(probs[i])) for i in order[:TOP_K]]
    own = {f.name: getattr(prediction, f.name) for f in fields(Prediction)}
    own.update(label=top[0][0], confidence=top[0][1], top=top, scores=probs)
    changed = top[0][0] != prediction.label
    return SitePrediction(**own, site=changed, model_label=prediction.label)


def site_labels(classifier: Any) -> list[str]:
    """The labels a (site) classifier can output that its model alone cannot."""
    inner = getattr(classifier, "classifier", classifier)
    return [label for label in classifier.labels if label not in inner.labels]
