"""The site-head candidates compared in ``site_experiments`` (numpy; experiments only).

Every method is ``fit(ctx, E, y) -> predict`` where ``predict(E) -> probs (n, K)``; ``ctx``
holds the model's own last layer (``W0`` (K, d), ``b0`` (K,), calibrated logits =
``E @ W0.T + b0``), the training split's embedding mean/std (``mu_t``, ``sd_t``) and the
unlabelled site embeddings the bin has seen (``unlabelled``). ``y`` are class indices into
``ctx.labels`` (which may have extra, site-only classes after the model's).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

Predict = Callable[[np.ndarray], np.ndarray]


@dataclass
class Context:
    W0: np.ndarray
    b0: np.ndarray
    labels: list[str]
    mu_t: np.ndarray
    sd_t: np.ndarray
    unlabelled: np.ndarray | None = None
    extra: dict = field(default_factory=dict)

    @property
    def n_model(self) -> int:
        return self.W0.shape[0]


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def unit(E: np.ndarray) -> np.ndarray:
    return E / np.maximum(np.linalg.norm(E, axis=-1, keepdims=True), 1e-9)


def pad_model(ctx: Context, logits: np.ndarray) -> np.ndarray:
    """Model logits widened to every label (site-only labels get -inf: the model never says them)."""
    K = len(ctx.labels)
    out = np.full((logits.shape[0], K), -1e9)
    out[:, : ctx.n_model] = logits
    return out


def model_logits(ctx: Context, E: np.ndarray) -> np.ndarray:
    return pad_model(ctx, E @ ctx.W0.T + ctx.b0)


# -- baselines ---------------------------------------------------------------------------


def fit_model(ctx: Context, E: np.ndarray, y: np.ndarray) -> Predict:
    return lambda X: softmax(model_logits(ctx, X))


def fit_ncm(ctx: Context, E: np.ndarray, y: np.ndarray, scale: float = 16.0) -> Predict:
    """Nearest class mean on L2-normalised embeddings (taught classes only)."""
    K = len(ctx.labels)
    P = np.zeros((K, E.shape[1]))
    present = np.zeros(K, bool)
    for c in np.unique(y):
        P[c] = unit(unit(E[y == c]).mean(axis=0))
        present[c] = True

    def predict(X: np.ndarray) -> np.ndarray:
        z = scale * unit(X) @ P.T
        z[:, ~present] = -1e9
        return softmax(z)

    return predict


def fit_softmax_scratch(ctx: Context, E: np.ndarray, y: np.ndarray, l2: float = 1e-2) -> Predict:
    """Multinomial logistic regression from zero on standardised embeddings (taught classes)."""
    mu, sd = ctx.mu_t, ctx.sd_t + 1e-3
    X = (E - mu) / sd
    K = len(ctx.labels)
    W, b = _gd(X, y, np.zeros((K, X.shape[1])), np.zeros(K), l2, steps=300)
    absent = np.ones(K, bool)
    absent[np.unique(y)] = False

    def predict(Xn: np.ndarray) -> np.ndarray:
        z = ((Xn - mu) / sd) @ W.T + b
        z[:, absent] = -1e9
        return softmax(z)

    return predict


def fit_knn(ctx: Context, E: np.ndarray, y: np.ndarray, k: int = 5, fuse: bool = True) -> Predict:
    """k nearest taught examples (cosine), their class shares fused with the model's probabilities."""
    U = unit(E)
    K = len(ctx.labels)

    def predict(X: np.ndarray) -> np.ndarray:
        sims = unit(X) @ U.T
        kk = min(k, len(y))
        idx = np.argsort(-sims, axis=1)[:, :kk]
        votes = np.zeros((X.shape[0], K))
        for j in range(kk):
            np.add.at(votes, (np.arange(X.shape[0]), y[idx[:, j]]), 1.0)
        q = (votes + 0.5) / (kk + 0.5 * K)
        if not fuse:
            return q
        return softmax(np.log(q) + np.log(np.maximum(softmax(model_logits(ctx, X)), 1e-9)))

    return predict


# -- feature-statistics alignment -------------------------------------------------------------


def site_stats(E: np.ndarray, y: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Class-balanced mean and std of site embeddings (plain ones when unlabelled)."""
    if y is None:
        return E.mean(axis=0), E.std(axis=0)
    means = np.stack([E[y == c].mean(axis=0) for c in np.unique(y)])
    mu = means.mean(axis=0)
    var = np.mean([((E[y == c] - mu) ** 2).mean(axis=0) for c in np.unique(y)], axis=0)
    return mu, np.sqrt(var)


def aligner(ctx: Context, mu_s: np.ndarray, sd_s: np.ndarray, scale: bool) -> Callable:
    if scale:
        ratio = np.clip(ctx.sd_t / np.maximum(sd_s, 1e-4), 0.25, 4.0)
        return lambda X: np.maximum((X - mu_s) * ratio + ctx.mu_t, 0.0)
    return lambda X: np.maximum(X - mu_s + ctx.mu_t, 0.0)


def fit_align(
    ctx: Context, E: np.ndarray, y: np.ndarray, source: str = "unlabelled", scale: bool = False
) -> Predict:
    """Re-centre (and optionally re-scale) site embeddings to the training statistics."""
    if source == "unlabelled":
        mu_s, sd_s = site_stats(ctx.unlabelled, None)
    else:
        mu_s, sd_s = site_stats(E, y)
    align = aligner(ctx, mu_s, sd_s, scale)
    return lambda X: softmax(model_logits(ctx, align(X)))


# -- the model's own last layer, fine-tuned with L2 towards it ------------------------------------


def _gd(
    X: np.ndarray,
    y: np.ndarray,
    W_init: np.ndarray,
    b_init: np.ndarray,
    l2: float,
    steps: int = 200,
    lr: float = 0.5,
    weights: np.ndarray | None = None,
    active: np.ndarray | None = None,
    bias_l2: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """Full-batch gradient descent (Nesterov momentum) on mean cross-entropy + l2/2 |W - W_init|^2.

    ``active`` masks classes that take part in the softmax (the rest stay at -inf)."""
    n = X.shape[0]
    K = W_init.shape[0]
    Y = np.zeros((n, K))
    Y[np.arange(n), y] = 1.0
    w = np.ones(n) / n if weights is None else weights / weights.sum()
    W, b = W_init.copy(), b_init.copy()
    vW, vb = np.zeros_like(W), np.zeros_like(b)
    # Step size from the data's scale: the Hessian of the CE is at most ~ mean |x|^2 / 2.
    step = lr / (0.5 * float((w[:, None] * X**2).sum()) + 1.0 + l2)
    mom = 0.9
    for _ in range(steps):
        Wl, bl = W + mom * vW, b + mom * vb
        z = X @ Wl.T + bl
        if active is not None:
            z[:, ~active] = -1e9
        G = (softmax(z) - Y) * w[:, None]
        gW = G.T @ X + l2 * (Wl - W_init)
        gb = G.sum(axis=0) + l2 * bias_l2 * (bl - b_init)
        vW = mom * vW - step * gW
        vb = mom * vb - step * gb
        W, b = W + vW, b + vb
    return W, b


def imprint(ctx: Context, E: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The last layer widened to every label; a site-only class's row is imprinted.

    Imprinting (Qi, Brown & Lowe 2018) on this un-normalised layer: the new row points along
    the class's mean embedding minus the taught examples' overall mean (or the training mean),
    scaled to the model's typical row norm; its bias puts the taught examples' mean logit
    at the known classes' typical winning logit."""
    K, d = len(ctx.labels), E.shape[1]
    W = np.zeros((K, d))
    b = np.zeros(K)
    W[: ctx.n_model], b[: ctx.n_model] = ctx.W0, ctx.b0
    norm = float(np.linalg.norm(ctx.W0, axis=1).mean())
    known = E @ ctx.W0.T + ctx.b0
    for c in range(ctx.n_model, K):
        members = E[y == c]
        if not len(members):
            b[c] = -1e3
            continue
        centre = ctx.mu_t
        direction = unit(members.mean(axis=0) - centre)
        W[c] = norm * direction
        # Where the known classes' logits typically win on their own items (training mean).
        target = float(np.median(known.max(axis=1))) + ctx.extra.get("imprint_margin", 2.0)
        b[c] = target - float((members @ W[c]).mean())
    return W, b


def fit_ft(
    ctx: Context,
    E: np.ndarray,
    y: np.ndarray,
    l2: float = 1.0,
    align: str | None = None,
    steps: int = 200,
    per_example: bool = False,
    bias_l2: float = 0.1,
) -> Predict:
    """The model's last layer (site-only rows imprinted), fine-tuned on the taught examples
    with an L2 pull towards where it started; optionally after re-centring the embeddings."""
    if align == "unlabelled":
        f = aligner(ctx, *site_stats(ctx.unlabelled, None), scale=False)
    elif align == "taught":
        f = aligner(ctx, *site_stats(E, y), scale=False)
    else:

        def f(X):
            return X

    X = f(E)
    W_init, b_init = imprint(ctx, X, y)
    active = np.ones(len(ctx.labels), bool)
    active[ctx.n_model :] = np.isin(np.arange(ctx.n_model, len(ctx.labels)), y)
    counts = np.bincount(y, minlength=len(ctx.labels)).astype(float)
    weights = 1.0 / counts[y]  # class-balanced
    if per_example:  # a pull that weakens as examples accumulate: l2 is per example taught
        l2 = l2 / len(y)
    W, b = _gd(
        X, y, W_init, b_init, l2, steps=steps, weights=weights, active=active, bias_l2=bias_l2
    )

    def predict(Xn: np.ndarray) -> np.ndarray:
        z = f(Xn) @ W.T + b
        z[:, ~active] = -1e9
        return softmax(z)

    return predict


def fit_fuse(ctx: Context, E: np.ndarray, y: np.ndarray, base: Callable = fit_ncm) -> Predict:
    """A site-only classifier's log-probabilities added to the model's."""
    head = base(ctx, E, y)

    def predict(X: np.ndarray) -> np.ndarray:
        a = np.log(np.maximum(head(X), 1e-9))
        m = np.log(np.maximum(softmax(model_logits(ctx, X)), 1e-9))
        return softmax(a + m)

    return predict


def fit_gated(
    ctx: Context,
    E: np.ndarray,
    y: np.ndarray,
    weight: float = 0.6,
    other: float = 0.3,
    sharpness: float = 20.0,
) -> Predict:
    """The site branch's first head: cosine similarity to each taught label's mean of
    normalised embeddings plus a fixed "none of these" similarity, a sharp softmax, mixed
    with the model's probabilities (the site gets ``weight``; "none" returns it to the model)."""
    taught = np.unique(y)
    P = unit(np.stack([unit(E[y == c]).mean(axis=0) for c in taught]))

    def predict(X: np.ndarray) -> np.ndarray:
        sims = np.concatenate([unit(X) @ P.T, np.full((len(X), 1), other)], axis=1)
        site = softmax(sharpness * sims)
        model = softmax(model_logits(ctx, X))
        probs = (1 - weight + weight * site[:, -1:]) * model
        probs[:, taught] += weight * site[:, :-1]
        return probs / probs.sum(axis=1, keepdims=True)

    return predict
