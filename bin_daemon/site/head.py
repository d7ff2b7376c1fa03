"""The site head: the model's own last layer, re-fitted in numpy on what this site taught it.

Chosen by measurement (docs/SITE.md, docs/site_experiments.json). Three steps, all numpy:

1. **Re-centre** (when every model label has been taught at least once and the model card
   carries the training split's mean logits): the site's class-balanced mean embedding is
   subtracted and the training split's mean logits take its place, so a consistent site
   shift (background, colour cast, blur) no longer moves every item towards one class.
   In logits: ``z = W0 (x - mean_site) + mean_train_logits``.
2. **Fine-tune the model's own last layer** (``W0``, ``b0`` read from the ``.tflite``,
   dequantised; the calibration temperature is folded into it) on the taught examples,
   class-balanced cross-entropy with an L2 pull towards where it started (the pull is
   per example taught: few examples move it little). A label the model does not know gets
   a new row, *imprinted* (Qi, Brown & Lowe 2018) from its examples' mean embedding, then
   fine-tuned with the rest.
3. **Recalibrate**: with enough examples (``MIN_FOR_RECALIBRATION``), a temperature fitted
   on cross-validated logits of the taught examples (never sharper than the model's own), so
   the model card's unsure threshold keeps its meaning; ``unsure_threshold`` stays None.

While some model label has fewer than ``ALIGN_BELOW`` taught frames (and the store holds
no label of its own), the head does less: it only **re-centres in feature space**, ``z = W0
max(x - mean_site + mean_train, 0) + b0`` with the training split's plain mean embedding
from the card, and keeps the model's layer and threshold. Measured on fresh draws, that is
ahead of fine-tuning below about 10 frames per class (+1.1 points at 1, +0.6 at 3, +0.3 at
5 on the simulated site) and costs nothing under random camera conditions, where the
fine-tuning costs 0.6-1.3 points (docs/SITE.md).

Without the model file (``model_path=None``) the head falls back to nearest class means of
the L2-normalised embeddings fused with the model's probabilities (measured weaker).
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bin_daemon.errors import BinDaemonError
from bin_daemon.model.classifier import load_interpreter_class

CARD_FILE = "model_card.json"
REFERENCE_KEY = "embedding_reference"  # {"mean_logits": [K], "mean_embedding": [d], "n": ...}
ALIGN_BELOW = 10  # fewer taught frames of some model label than this: re-centring only
L2_PER_EXAMPLE = 5.0  # the pull towards the model's layer, divided by the examples taught
BIAS_L2 = 1.0  # the biases' pull, relative to the weights'
STEPS = 100  # full-batch gradient steps (Nesterov momentum); 200 measured no better
MIN_FOR_RECALIBRATION = 20  # taught examples before a temperature is fitted on them
FOLDS = 3  # 5 measured no better, and each fold is a refit
TEMPERATURES = np.exp(np.linspace(0.0, np.log(4.0), 29))  # 1 .. 4: only ever softer
NEW_ROW_L2 = 0.1  # a site-only label's row: its pull towards the imprint, relative to the rest
# The new row's bias: its examples' mean logit IMPRINT_MARGIN above the model's winning logit
# on them (or, if IMPRINT_EVERY_EXAMPLE, every example's: measured to take over other classes).
IMPRINT_EVERY_EXAMPLE = False
IMPRINT_MARGIN = 2.0  # a new row's logit on its own examples, above the model's winning logit
NCM_SCALE = 16.0
# A frame (nearly) identical to a taught one gets its label: cosine similarity of embeddings
# >= this. Between different TrashNet test images the largest is 0.89, between a photo and
# its site or camera view at most 0.93, so only the same frame (or a re-encoded copy) reaches it.
MEMORY_SIMILARITY = 0.97
MEMORY_SHARE = 0.98  # the taught label's probability for such a frame  # cosine-similarity logits of the fallback without a model file


@dataclass(frozen=True)
class SiteDecision:
    labels: tuple[str, ...]  # the head's labels: the model's labels first, then site-only labels
    probs: np.ndarray  # float probabilities over `labels`, summing to 1
    changed: bool  # the head's top label differs from the model's own top label


def read_last_layer(model_path: Path, n_classes: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """The classifier layer of an int8 ``.tflite``, dequantised: ``W`` (K, d) and ``b`` (K,).

    The model's last FULLY_CONNECTED operation (its weights and, if it has one, its bias).
    The calibration temperature is folded into this layer at export, so ``E @ W.T + b`` are
    the calibrated logits whose softmax is the model's output.
    """
    interpreter_class, _ = load_interpreter_class()
    module = importlib.import_module(interpreter_class.__module__)
    try:
        # Without the default delegate, so the operations are listed one by one.
        interpreter = interpreter_class(
            model_path=str(model_path),
            experimental_op_resolver_type=module.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        )
        layers = [op for op in interpreter._get_ops_details() if op["op_name"] == "FULLY_CONNECTED"]
    except (ValueError, RuntimeError, OSError, AttributeError) as error:
        raise BinDaemonError(f"{model_path}: cannot read the model's layers ({error})") from None
    if not layers:
        raise BinDaemonError(f"{model_path}: the model has no fully-connected classifier layer")
    inputs = [int(i) for i in layers[-1]["inputs"]]
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    w = details[inputs[1]]
    if tuple(w["shape"]) != (n_classes, dim):
        raise BinDaemonError(
            f"{model_path}: the classifier layer is {' x '.join(map(str, w['shape']))}, but "
            f"there are {n_classes} labels and embeddings of {dim} values"
        )

    def dequantised(d: dict) -> np.ndarray:
        q = d["quantization_parameters"]
        values = interpreter.get_tensor(d["index"]).astype(np.float64)
        if not len(q["scales"]):  # a float tensor
            return values
        scale = np.asarray(q["scales"], np.float64)
        zero = np.asarray(q["zero_points"], np.float64)
        if values.ndim == 2:
            scale, zero = scale.reshape(-1, 1), zero.reshape(-1, 1)
        return (values - zero) * scale

    bias = np.zeros(n_classes)
    if len(inputs) > 2 and inputs[2] >= 0:
        bias = dequantised(details[inputs[2]]).reshape(n_classes)
    return dequantised(w), bias


def read_reference(model_path: Path, n_classes: int) -> np.ndarray | None:
    """The training split's mean calibrated logits from the card beside the model, if recorded."""
    return _card_vector(model_path, "mean_logits", n_classes)


def read_mean_embedding(model_path: Path, dim: int) -> np.ndarray | None:
    """The training split's plain mean embedding from the card beside the model, if recorded."""
    return _card_vector(model_path, "mean_embedding", dim)


def _card_vector(model_path: Path, key: str, length: int) -> np.ndarray | None:
    try:
        card = json.loads(model_path.with_name(CARD_FILE).read_text())
        values = np.asarray(card[REFERENCE_KEY][key], np.float64)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return values if values.shape == (length,) and np.all(np.isfinite(values)) else None


def reference_entry(
    model_path: Path,
    embeddings: np.ndarray,
    example_labels: Sequence[str],
    model_labels: Sequence[str],
    split: str = "train",
) -> dict:
    """The card's ``embedding_reference``: the class-balanced mean of the calibrated logits
    ``E @ W.T + b`` of the model's own (clean) training images, the site head's centre, and
    the images' plain mean embedding (its centre while few frames are taught).

    Training writes it into the card of every model it exports; it must describe the exact
    ``.tflite`` at ``model_path``, since ``W`` and ``b`` are read from it."""
    E = _check(embeddings, example_labels, model_labels)
    missing = [label for label in model_labels if label not in set(example_labels)]
    if missing:
        raise BinDaemonError(f"embedding reference: no example of {', '.join(missing)}")
    W, b = read_last_layer(model_path, len(model_labels), E.shape[1])
    z = E @ W.T + b
    y = np.asarray(example_labels)
    mean = np.mean([z[y == label].mean(axis=0) for label in model_labels], axis=0)
    return {
        "mean_logits": [round(float(v), 4) for v in mean],
        "mean_embedding": [round(float(v), 5) for v in E.mean(axis=0)],
        "split": split,
        "n": len(y),
        "what": f"class-balanced mean of the calibrated logits, and plain mean embedding, of "
        f"the clean {split} images; the site head's centres",
    }


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-9)


def _check(embeddings: object, labels: Sequence[str], model_labels: Sequence[str]) -> np.ndarray:
    if not len(model_labels) or len(set(model_labels)) != len(model_labels):
        raise BinDaemonError("site head: the model's labels must be non-empty and distinct")
    try:
        E = np.asarray(embeddings, dtype=np.float64)
    except (TypeError, ValueError):
        raise BinDaemonError("site head: embeddings must be a numeric (n, d) array") from None
    if E.ndim != 2 or E.shape[1] == 0:
        raise BinDaemonError(
            f"site head: embeddings must be a 2-D array (n, d), got shape {E.shape}"
        )
    if E.shape[0] == 0:
        raise BinDaemonError("site head: no examples to fit on")
    if len(labels) != E.shape[0]:
        raise BinDaemonError(
            f"site head: {E.shape[0]} embeddings but {len(labels)} labels (one label each)"
        )
    bad = [i for i, label in enumerate(labels) if not isinstance(label, str) or not label.strip()]
    if bad:
        raise BinDaemonError(f"site head: example {bad[0]} has an empty label")
    if not np.all(np.isfinite(E)):
        raise BinDaemonError("site head: embeddings contain NaN or infinite values")
    return E


def _fit_layer(
    gram: np.ndarray,
    Z0: np.ndarray,
    y: np.ndarray,
    b_init: np.ndarray,
    n_model: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Class-balanced cross-entropy + (L2_PER_EXAMPLE / n) / 2 |W - W_init|^2, gradient descent.

    Run in the span of the taught examples: every gradient of W is ``(G^T + l2 A) X``, so
    ``W = W_init + A X`` throughout and the logits are ``Z0 + gram A^T + b`` with
    ``gram = X X^T`` and ``Z0 = X W_init^T``. The same steps as in W, at n^2 K instead of
    n d K per step (d = 1280). Returns ``A`` (K, n) and ``b``."""
    n, K = len(y), Z0.shape[1]
    gram, Z0 = gram.astype(np.float32), Z0.astype(np.float32)
    b_init = b_init.astype(np.float32)
    Y = np.zeros((n, K), np.float32)
    Y[np.arange(n), y] = 1.0
    counts = np.bincount(y, minlength=K).astype(np.float32)
    w = 1.0 / counts[y]
    w /= w.sum()
    l2 = np.full(K, L2_PER_EXAMPLE / n, np.float32)
    l2[n_model:] *= NEW_ROW_L2
    # Step from the curvature bound of the weighted cross-entropy (<= mean |x|^2 / 2) + l2.
    step = 0.5 / (0.5 * float(w @ np.diag(gram)) + 1.0 + float(l2.max()))
    A, b = np.zeros((K, n), np.float32), b_init.copy()
    vA, vb = np.zeros_like(A), np.zeros_like(b)
    for _ in range(STEPS):
        Al, bl = A + 0.9 * vA, b + 0.9 * vb
        G = (softmax(Z0 + gram @ Al.T + bl) - Y) * w[:, None]
        vA = 0.9 * vA - step * (G.T + l2[:, None] * Al)
        vb = 0.9 * vb - step * (G.sum(axis=0) + l2 * BIAS_L2 * (bl - b_init))
        A, b = A + vA, b + vb
    return A.astype(np.float64), b.astype(np.float64)


class SiteHead:
    """The model's classes plus what the site taught; ``apply`` runs per frame, in numpy."""

    def __init__(
        self,
        labels: tuple[str, ...],
        n_model: int,
        *,
        W: np.ndarray | None,
        b: np.ndarray | None,
        centre: np.ndarray | None,
        temperature: float,
        prototypes: np.ndarray | None = None,
        present: np.ndarray | None = None,
        method: str = "",
        shift: np.ndarray | None = None,
    ) -> None:
        self.labels = labels
        self.unsure_threshold: float | None = None
        self.temperature = temperature
        self.method = method
        self._n_model = n_model
        self._W, self._b, self._centre = W, b, centre
        self._shift = shift  # feature-space re-centring: max(x + shift, 0)
        self._prototypes, self._present = prototypes, present
        self._memory = np.zeros((0, 1), np.float32)
        self._memory_labels = np.zeros(0, np.int64)
        self._active = np.ones(len(labels), bool) if present is None else present

    # -- fitting ---------------------------------------------------------------------------

    @classmethod
    def fit(
        cls,
        embeddings: np.ndarray,
        labels: Sequence[str],
        *,
        model_labels: Sequence[str],
        model_path: Path | None = None,
    ) -> SiteHead:
        E = _check(embeddings, labels, model_labels)
        extra = sorted({label for label in labels} - set(model_labels))
        head_labels = (*model_labels, *extra)
        index = {label: i for i, label in enumerate(head_labels)}
        y = np.array([index[label] for label in labels])
        K = len(model_labels)
        if model_path is None:
            return cls._remember(E, y, cls._fit_prototypes(E, y, head_labels, K))
        W0, b0 = read_last_layer(Path(model_path), K, E.shape[1])
        counts = np.bincount(y, minlength=len(head_labels))
        mean_train = read_mean_embedding(Path(model_path), E.shape[1])
        if not extra and mean_train is not None and 1 <= counts.min() < ALIGN_BELOW:
            mean_site = _site_mean(E, y, K)
            head = cls(
                head_labels,
                K,
                W=W0,
                b=b0,
                centre=None,
                temperature=_recalibrate_aligned(E, y, W0, b0, mean_train),
                shift=mean_train - mean_site,
                method=f"recentred in feature space (under {ALIGN_BELOW} frames of a label)",
            )
            return cls._remember(E, y, head)
        reference = read_reference(Path(model_path), K)
        E32 = E.astype(np.float32)
        gram_E = (E32 @ E32.T).astype(np.float64)  # shared by the fit and its cross-validation
        W, b, centre, active = _fit(E, y, W0, b0, reference, len(head_labels), gram_E)
        temperature = _recalibrate(E, y, W0, b0, reference, len(head_labels), gram_E)
        if not np.any(y < K):
            method = "new labels imprinted (no model label taught)"
        elif centre is not None:
            method = "recentred + fine-tuned last layer"
        else:
            method = "fine-tuned last layer"
        head = cls(
            head_labels,
            K,
            W=W,
            b=b,
            centre=centre,
            temperature=temperature,
            present=active,
            method=method,
        )
        return cls._remember(E, y, head)

    @staticmethod
    def _remember(E: np.ndarray, y: np.ndarray, head: SiteHead) -> SiteHead:
        """Keep the taught frames (normalised) so that showing one again gives its label."""
        head._memory = _unit(E).astype(np.float32)
        head._memory_labels = y
        return head

    @classmethod
    def _fit_prototypes(
        cls, E: np.ndarray, y: np.ndarray, head_labels: tuple[str, ...], n_model: int
    ) -> SiteHead:
        P = np.zeros((len(head_labels), E.shape[1]))
        present = np.zeros(len(head_labels), bool)
        for c in np.unique(y):
            P[c] = _unit(_unit(E[y == c]).mean(axis=0))
            present[c] = True
        present[:n_model] = True  # the model's own labels stay possible through its probabilities
        return cls(
            head_labels,
            n_model,
            W=None,
            b=None,
            centre=None,
            temperature=1.0,
            prototypes=P,
            present=present,
            method="class means fused with the model (no model file)",
        )

    # -- applying --------------------------------------------------------------------------

    @property
    def from_model_layer(self) -> bool:
        """The probabilities come from the model's own (re-fitted) layer, not from the
        model's output fused with class means (the fallback without a model file)."""
        return self._W is not None

    def logits(self, embeddings: np.ndarray) -> np.ndarray:
        """The head's logits for (n, d) embeddings (temperature applied)."""
        X = np.asarray(embeddings, np.float64)
        if self._shift is not None:
            X = np.maximum(X + self._shift, 0.0)
        if self._centre is not None:
            X = X - self._centre
        z = (X @ self._W.T + self._b) / self.temperature
        return np.where(self._active, z, -1e9)

    def apply(self, embedding: np.ndarray, model_probs: np.ndarray) -> SiteDecision:
        x = np.asarray(embedding, np.float64)
        p_model = np.asarray(model_probs, np.float64)
        dim = self._W.shape[1] if self._W is not None else self._prototypes.shape[1]
        if x.shape != (dim,) or p_model.shape != (self._n_model,):
            raise BinDaemonError(
                f"site head: expected an embedding of {dim} values and {self._n_model} model "
                f"probabilities, got shapes {x.shape} and {p_model.shape}"
            )
        if self._W is not None:
            probs = softmax(self.logits(x[None])[0])
        else:
            site = NCM_SCALE * (_unit(x) @ self._prototypes.T)
            site = np.where(self._present, site, -1e9)
            model = np.full(len(self.labels), np.log(1e-6))
            model[: self._n_model] = np.log(np.maximum(p_model, 1e-6))
            taught = self._present.copy()
            fused = model + np.where(taught, site - site[taught].max(), 0.0)
            probs = softmax(fused)
        if len(self._memory_labels):
            similarity = self._memory @ _unit(x).astype(np.float32)
            nearest = int(np.argmax(similarity))
            if similarity[nearest] >= MEMORY_SIMILARITY:
                taught = np.zeros(len(self.labels))
                taught[self._memory_labels[nearest]] = 1.0
                probs = MEMORY_SHARE * taught + (1.0 - MEMORY_SHARE) * probs
        top = int(np.argmax(probs))
        return SiteDecision(self.labels, probs, bool(top != int(np.argmax(p_model))))


def _fit(
    E: np.ndarray,
    y: np.ndarray,
    W0: np.ndarray,
    b0: np.ndarray,
    reference: np.ndarray | None,
    n_labels: int,
    gram_E: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    """(W, b, centre, active labels): re-centre if possible, imprint new rows, fine-tune.

    ``gram_E`` is ``E E^T`` when the caller has it (cross-validation shares one)."""
    K, d = W0.shape
    taught = np.unique(y)
    centre = None
    b_start = b0
    if reference is not None and np.all(np.isin(np.arange(K), taught)):
        # Class-balanced over the model's labels: the site's mean item.
        centre = _site_mean(E, y, K)
        b_start = reference
    X = E - centre if centre is not None else E
    W_init = np.zeros((n_labels, d))
    b_init = np.full(n_labels, 0.0)
    W_init[:K], b_init[:K] = W0, b_start
    known = X @ W0.T + b_start
    norm = float(np.linalg.norm(W0, axis=1).mean())
    for c in range(K, n_labels):
        members = y == c
        # Imprinting: the class's mean direction (minus the other taught items' mean when there
        # are any), at the model's typical row norm; the bias puts its examples' mean logit a
        # margin above the model's winning logit on them.
        others = X[~members].mean(axis=0) if np.any(~members) else 0.0
        W_init[c] = norm * _unit(X[members].mean(axis=0) - others)
        gaps = known[members].max(axis=1) - X[members] @ W_init[c]
        gap = float(gaps.max()) if IMPRINT_EVERY_EXAMPLE else float(gaps.mean())
        b_init[c] = gap + IMPRINT_MARGIN
    active = np.ones(n_labels, bool)
    if not np.any(taught < K):
        # Only site-only labels taught: no negatives, and fine-tuning would only raise the new
        # rows everywhere (measured: the other classes fell from 86% to 64%). Imprint only.
        return W_init, b_init, centre, active
    if gram_E is None:
        gram_E = E @ E.T
    gram = gram_E
    if centre is not None:  # (E - c)(E - c)^T from E E^T: no second n x n x d product
        ec = E @ centre
        gram = gram_E - ec[:, None] - ec[None, :] + float(centre @ centre)
    A, b = _fit_layer(gram, X @ W_init.T, y, b_init, K)
    return W_init + A @ X, b, centre, active


def _recalibrate(
    E: np.ndarray,
    y: np.ndarray,
    W0: np.ndarray,
    b0: np.ndarray,
    reference: np.ndarray | None,
    n_labels: int,
    gram_E: np.ndarray,
) -> float:
    """A temperature (>= 1) minimising the cross-validated NLL of the taught examples."""
    counts = np.bincount(y, minlength=n_labels)
    if len(y) < MIN_FOR_RECALIBRATION or np.count_nonzero(counts) < 2:
        return 1.0
    fold = _folds(y)
    held_logits = np.zeros((len(y), n_labels))
    scored = np.zeros(len(y), bool)
    for f in range(FOLDS):
        test = fold == f
        if not test.any() or test.all():
            continue
        train = np.flatnonzero(~test)
        W, b, centre, _ = _fit(
            E[train], y[train], W0, b0, reference, n_labels, gram_E[np.ix_(train, train)]
        )
        X = E[test] - centre if centre is not None else E[test]
        held_logits[test] = X @ W.T + b
        # Only held-out examples of labels this fold still taught can be scored.
        scored[test] = np.isin(y[test], y[~test])
    return _best_temperature(held_logits[scored], y[scored])


def _recalibrate_aligned(
    E: np.ndarray, y: np.ndarray, W0: np.ndarray, b0: np.ndarray, mean_train: np.ndarray
) -> float:
    """The same for the feature-space re-centring: each fold's held-out frames re-centred on
    the site mean of the other folds' frames."""
    K = W0.shape[0]
    if len(y) < MIN_FOR_RECALIBRATION:
        return 1.0
    fold = _folds(y)
    held_logits = np.zeros((len(y), K))
    scored = np.zeros(len(y), bool)
    for f in range(FOLDS):
        test, train = fold == f, fold != f
        if not test.any() or not np.all(np.isin(np.arange(K), y[train])):
            continue
        mean_site = _site_mean(E[train], y[train], K)
        held_logits[test] = np.maximum(E[test] - mean_site + mean_train, 0.0) @ W0.T + b0
        scored[test] = True
    return _best_temperature(held_logits[scored], y[scored])


def _site_mean(E: np.ndarray, y: np.ndarray, n_model: int) -> np.ndarray:
    """The taught frames' class-balanced mean embedding over the model's labels (each taught):
    the site's mean item, whatever the mix of labels taught."""
    return np.mean([E[y == c].mean(axis=0) for c in range(n_model)], axis=0)


def _folds(y: np.ndarray) -> np.ndarray:
    """Stratified fold numbers (0 .. FOLDS-1), reproducible for a given store."""
    rng = np.random.default_rng(len(y))
    fold = np.empty(len(y), int)
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        fold[members] = np.arange(len(members)) % FOLDS
    return fold


def _best_temperature(z: np.ndarray, t_y: np.ndarray) -> float:
    if len(t_y) < MIN_FOR_RECALIBRATION // 2:
        return 1.0
    nll = [
        -np.log(np.maximum(softmax(z / t)[np.arange(len(t_y)), t_y], 1e-12)).mean()
        for t in TEMPERATURES
    ]
    return float(TEMPERATURES[int(np.argmin(nll))])
