"""Site adaptation, measured: which head, taught how many frames, gains what (issue 17).

``python -m bin_daemon.training.site_experiments`` embeds the project's test split three
ways with the shipped model (clean, the consistent site copy, a random camera-conditions
copy; plus the clean training split for its statistics), caches the embeddings under
``runs/site_cache/``, then runs the few-shot curves, the clean-accuracy check, the
new-class experiment (a 5-class model trained without ``metal``, if ``runs/no_metal/model``
exists) and the refit timing, and writes ``docs/site_experiments.json`` and
``docs/site_curves.png``. Numpy only besides the interpreter; the methods compared are in
``site_methods``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bin_daemon.model.preprocess import load_image, to_model_input
from bin_daemon.site import head as head_module
from bin_daemon.site.head import REFERENCE_KEY, SiteHead, read_last_layer, reference_entry
from bin_daemon.training import site_methods as M
from bin_daemon.training.camera_effects import TEST_VIEWS_SEED_OFFSET, bin_camera_view
from bin_daemon.training.site_views import Embedder, site_view
from bin_daemon.training.split import read_split, sha256_file
from bin_daemon.training.tflite_eval import TFLiteModel, embedding_reference

DATA = Path("../shared/datasets/trashnet")
MODEL = Path("models/waste_classifier.tflite")
SPLIT = Path("models/split.csv")
CACHE = Path("runs/site_cache")
SEED = 20261124


def _log(message: str) -> None:
    print(f"[site {time.strftime('%H:%M:%S')}] {message}", flush=True)


def embed_copy(
    embedder: Embedder, data: Path, samples: list, copy: str, cache: Path
) -> dict[str, np.ndarray]:
    """Embeddings, probabilities and labels of one copy of ``samples``, cached as .npz."""
    if cache.exists():
        with np.load(cache) as stored:
            return {k: stored[k] for k in stored.files}
    started = time.monotonic()
    embeddings, probs = [], []
    for i, sample in enumerate(samples):
        image = load_image(data / sample.path)
        if copy == "clean":
            x = to_model_input(image, embedder.size)
        elif copy == "site":
            x = to_model_input(site_view(image), embedder.size)
        elif copy == "camera":
            rng = np.random.default_rng(SEED + TEST_VIEWS_SEED_OFFSET + i)
            x = bin_camera_view(image, embedder.size, rng)
        else:
            raise ValueError(copy)
        e, p = embedder(x)
        embeddings.append(e)
        probs.append(p)
    out = {
        "embeddings": np.stack(embeddings),
        "probs": np.stack(probs),
        "labels": np.array([s.label for s in samples]),
        "paths": np.array([s.path for s in samples]),
    }
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(cache, **out)
    _log(f"{cache.name}: {len(samples)} images in {time.monotonic() - started:.0f} s")
    return out


def collect(data: Path = DATA, cache_dir: Path = CACHE) -> dict[str, dict[str, np.ndarray]]:
    """The shipped model's embeddings of the test split's three copies and the clean train split."""
    embedder = Embedder(MODEL)
    test = [s for s in read_split(SPLIT) if s.subset == "test"]
    copies = {}
    for copy in ("clean", "site", "camera"):
        cache = _model_cache(cache_dir) / f"test_{copy}.npz"
        copies[copy] = embed_copy(embedder, data, test, copy, cache)
    copies["train"] = collect_train(data, cache_dir, embedder)
    return copies


def collect_train(
    data: Path = DATA, cache_dir: Path = CACHE, embedder: Embedder | None = None
) -> dict[str, np.ndarray]:
    """The shipped model's embeddings of its clean training split (a whole-pool model's only one)."""
    train = [s for s in read_split(SPLIT) if s.subset == "train"]
    cache = _model_cache(cache_dir) / "train_clean.npz"
    return embed_copy(embedder or Embedder(MODEL), data, train, "clean", cache)


def _model_cache(cache_dir: Path) -> Path:
    return cache_dir / sha256_file(MODEL)[:12]  # a re-exported model is embedded afresh


def collect_new_class(
    model_dir: Path, left_out: str, data: Path = DATA, cache_dir: Path = CACHE
) -> dict[str, dict[str, np.ndarray]]:
    """The 5-class model's embeddings: its own test split, and every image of ``left_out``."""
    embedder = Embedder(model_dir / "waste_classifier.tflite")
    cache_dir = cache_dir / sha256_file(model_dir / "waste_classifier.tflite")[:12]
    own = read_split(model_dir / "split.csv")
    full = [s for s in read_split(SPLIT) if s.label == left_out]
    out = {
        "test": embed_copy(
            embedder,
            data,
            [s for s in own if s.subset == "test"],
            "clean",
            cache_dir / "nc_test.npz",
        ),
        "train": embed_copy(
            embedder,
            data,
            [s for s in own if s.subset == "train"],
            "clean",
            cache_dir / "nc_train.npz",
        ),
        "val": embed_copy(
            embedder, data, [s for s in own if s.subset == "val"], "clean", cache_dir / "nc_val.npz"
        ),
        "new": embed_copy(embedder, data, full, "clean", cache_dir / "nc_new.npz"),
    }
    out["new"]["subset"] = np.array([s.subset for s in full])
    return out


def write_reference(model_dir: Path, train: dict[str, np.ndarray], labels: list[str]) -> dict:
    """Record ``train``'s class-balanced mean calibrated logits in ``model_dir``'s card (the
    experiments' models, from their cached embeddings)."""
    entry = reference_entry(
        model_dir / "waste_classifier.tflite",
        train["embeddings"].astype(np.float64),
        [str(v) for v in train["labels"]],
        labels,
    )
    return _store_reference(model_dir, entry)


def write_shipped_reference(model: Path | None = None, data: Path = DATA) -> dict:
    """``--write-reference``: the site head's centre for a model folder whose card lacks it
    (training writes it itself), computed as training does."""
    model = model or MODEL
    card = json.loads(model.with_name("model_card.json").read_text())
    samples = [s for s in read_split(model.with_name("split.csv")) if s.subset == "train"]
    tflite = TFLiteModel(model.read_bytes(), threads=os.cpu_count() or 1)
    entry = embedding_reference(tflite, model, data, samples, int(card["input"]["size"]))
    return _store_reference(model.parent, entry)


def _store_reference(model_dir: Path, entry: dict) -> dict:
    card_path = model_dir / "model_card.json"
    card = json.loads(card_path.read_text())
    card[REFERENCE_KEY] = entry
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    return entry


def fit_site_head_every(ctx: M.Context, E: np.ndarray, y: np.ndarray, model: Path | None = None):
    """The shipped head with a site-only label's bias set so every taught frame wins."""
    head_module.IMPRINT_EVERY_EXAMPLE = True
    try:
        return fit_site_head(ctx, E, y, model)
    finally:
        head_module.IMPRINT_EVERY_EXAMPLE = False


def fit_site_head(ctx: M.Context, E: np.ndarray, y: np.ndarray, model: Path | None = None):
    """The shipped head (bin_daemon.site.head), as a candidate."""
    head = SiteHead.fit(
        E.astype(np.float32),
        [ctx.labels[i] for i in y],
        model_labels=ctx.labels[: ctx.n_model],
        model_path=model or MODEL,
    )

    def predict(X: np.ndarray) -> np.ndarray:
        p = M.softmax(head.logits(X))
        out = np.zeros((len(X), len(ctx.labels)))
        out[:, [ctx.labels.index(label) for label in head.labels]] = p
        return out

    return predict


# -- few-shot curves ------------------------------------------------------------------------

SHOTS = (1, 3, 5, 10, 20)
DRAWS = 10
THRESHOLD = 0.85  # the model card's unsure threshold
# docs/BENCHMARKS.md: published Pi 4 MobileNetV2 FP32 XNNPACK ms / the same model timed here.
PI4_RATIO = 13.16


def context(copies: dict, labels: list[str], unlabelled: np.ndarray | None = None) -> M.Context:
    d = copies["train"]["embeddings"].shape[1]
    W0, b0 = read_last_layer(MODEL, len(labels), d)
    train = copies["train"]["embeddings"].astype(np.float64)
    return M.Context(W0, b0, list(labels), train.mean(axis=0), train.std(axis=0), unlabelled)


def halves(y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Each class's items split at random into a teaching half and a scoring half."""
    teach, score = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        teach.extend(idx[: len(idx) // 2])
        score.extend(idx[len(idx) // 2 :])
    return np.array(teach), np.array(score)


def pick(y: np.ndarray, pool: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``k`` items of each class from ``pool``."""
    out = []
    for c in np.unique(y[pool]):
        members = pool[y[pool] == c]
        out.extend(rng.choice(members, size=min(k, len(members)), replace=False))
    return np.array(out)


def scores(probs: np.ndarray, y: np.ndarray, threshold: float = THRESHOLD) -> dict[str, float]:
    top = probs.argmax(axis=1)
    conf = probs.max(axis=1)
    accepted = conf >= threshold
    return {
        "accuracy": float((top == y).mean()),
        "coverage": float(accepted.mean()),
        "accepted_accuracy": float((top[accepted] == y[accepted]).mean())
        if accepted.any()
        else 0.0,
        "nll": float(-np.log(np.maximum(probs[np.arange(len(y)), y], 1e-12)).mean()),
    }


def candidates() -> dict[str, Callable]:
    return {
        "model": M.fit_model,
        "site_head": fit_site_head,
        "ncm": M.fit_ncm,
        "softmax_scratch": M.fit_softmax_scratch,
        "ncm_fused_with_model": M.fit_fuse,
        "knn_fused_with_model": M.fit_knn,
        "gated_cosine_means": M.fit_gated,
        "align_unlabelled": lambda c, E, y: M.fit_align(c, E, y, "unlabelled"),
        "align_unlabelled_scale": lambda c, E, y: M.fit_align(c, E, y, "unlabelled", scale=True),
        "align_taught": lambda c, E, y: M.fit_align(c, E, y, "taught"),
        "ft_l2_0.01": lambda c, E, y: M.fit_ft(c, E, y, l2=0.01),
        "ft_l2_0.1": lambda c, E, y: M.fit_ft(c, E, y, l2=0.1),
        "ft_l2_1": lambda c, E, y: M.fit_ft(c, E, y, l2=1.0),
        "ft_l2_0.1_align_taught": lambda c, E, y: M.fit_ft(c, E, y, l2=0.1, align="taught"),
        "ft_l2_0.1_align_unlabelled": lambda c, E, y: M.fit_ft(c, E, y, l2=0.1, align="unlabelled"),
    }


def curves(
    copies: dict, labels: list[str], methods: dict[str, Callable], draws: int = DRAWS
) -> dict:
    index = {label: i for i, label in enumerate(labels)}
    out = {}
    for copy in ("site", "camera"):
        E = copies[copy]["embeddings"].astype(np.float64)
        y = np.array([index[v] for v in copies[copy]["labels"]])
        ctx = context(copies, labels, unlabelled=E)
        table: dict[str, dict[str, list]] = {}
        for shots in (*SHOTS, "all"):
            per_method: dict[str, list[dict]] = {name: [] for name in methods}
            for draw in range(draws):
                rng = np.random.default_rng(SEED + 1000 * draw + 17)
                teach_half, score_half = halves(y, rng)
                taught = teach_half if shots == "all" else pick(y, teach_half, shots, rng)
                for name, fit in methods.items():
                    predict = fit(ctx, E[taught], y[taught])
                    per_method[name].append(scores(predict(E[score_half]), y[score_half]))
            for rows in per_method.values():  # paired with the model, draw by draw
                for row, base in zip(rows, per_method["model"], strict=True):
                    row["gain_over_model"] = row["accuracy"] - base["accuracy"]
            table[str(shots)] = {name: summarise(rows) for name, rows in per_method.items()}
            _log(
                f"{copy} {shots}/class: "
                + ", ".join(
                    f"{n} {v['accuracy']['mean']:.3f}" for n, v in table[str(shots)].items()
                )
            )
        out[copy] = table
    return out


def clean_check(copies: dict, labels: list[str], draws: int = DRAWS) -> dict:
    """Clean accuracy when the store holds camera-condition examples (same items' halves)."""
    index = {label: i for i, label in enumerate(labels)}
    y = np.array([index[v] for v in copies["clean"]["labels"]])
    camera = copies["camera"]["embeddings"].astype(np.float64)
    clean = copies["clean"]["embeddings"].astype(np.float64)
    ctx = context(copies, labels)
    out = {}
    for shots in (5, 20, "all"):
        rows = {"model": [], "site_head": []}
        for draw in range(draws):
            rng = np.random.default_rng(SEED + 1000 * draw + 29)
            teach_half, score_half = halves(y, rng)
            taught = teach_half if shots == "all" else pick(y, teach_half, shots, rng)
            for name, fit in (("model", M.fit_model), ("site_head", fit_site_head)):
                predict = fit(ctx, camera[taught], y[taught])
                rows[name].append(scores(predict(clean[score_half]), y[score_half]))
        out[str(shots)] = {name: summarise(r) for name, r in rows.items()}
        drop = (
            out[str(shots)]["model"]["accuracy"]["mean"]
            - out[str(shots)]["site_head"]["accuracy"]["mean"]
        )
        out[str(shots)]["clean_accuracy_drop_points"] = round(100 * drop, 2)
        _log(f"clean check {shots}/class camera examples: drop {100 * drop:.2f} points")
    return out


def new_class(
    model_dir: Path,
    left_out: str,
    methods: dict[str, Callable],
    draws: int = DRAWS,
    known_per_class: int = 5,
) -> dict:
    """Teach ``left_out`` (never seen by the 5-class model) from 5, 10, 20 photos."""
    data = collect_new_class(model_dir, left_out)
    model_labels = (model_dir / "labels.txt").read_text().split()
    write_reference(model_dir, data["train"], model_labels)
    labels = [*model_labels, left_out]
    index = {label: i for i, label in enumerate(labels)}
    W0, b0 = read_last_layer(model_dir / "waste_classifier.tflite", len(model_labels), 1280)
    train = data["train"]["embeddings"].astype(np.float64)
    ctx = M.Context(W0, b0, labels, train.mean(axis=0), train.std(axis=0))
    test_E = np.concatenate(
        [data["test"]["embeddings"], data["new"]["embeddings"][data["new"]["subset"] == "test"]]
    ).astype(np.float64)
    test_y = np.array(
        [index[v] for v in data["test"]["labels"]]
        + [index[left_out]] * int(np.sum(data["new"]["subset"] == "test"))
    )
    pool = np.flatnonzero(data["new"]["subset"] != "test")
    new_E = data["new"]["embeddings"].astype(np.float64)
    fits = {"model": M.fit_model, **methods}
    fits = {
        name: (lambda c, E, y, f=f: f(c, E, y, model=model_dir / "waste_classifier.tflite"))
        if f in (fit_site_head, fit_site_head_every)
        else f
        for name, f in fits.items()
    }
    out: dict = {
        "left_out": left_out,
        "model_labels": model_labels,
        "n_test": len(test_y),
        "n_test_new_class": int(np.sum(test_y == index[left_out])),
        "known_examples_per_class": known_per_class,
    }
    old = test_y != index[left_out]
    val_E = data["val"]["embeddings"].astype(np.float64)
    val_y = np.array([index[v] for v in data["val"]["labels"]])
    for regime, shots in [(r, k) for r in ("only_new", "with_known") for k in (5, 10, 20)]:
        rows: dict[str, list] = {name: [] for name in fits}
        for draw in range(draws):
            rng = np.random.default_rng(SEED + 1000 * draw + 41)
            taught = rng.choice(pool, size=shots, replace=False)
            E_taught, y_taught = new_E[taught], np.full(shots, index[left_out])
            if regime == "with_known":
                known = pick(val_y, np.arange(len(val_y)), known_per_class, rng)
                E_taught = np.concatenate([E_taught, val_E[known]])
                y_taught = np.concatenate([y_taught, val_y[known]])
            for name, fit in fits.items():
                probs = fit(ctx, E_taught, y_taught)(test_E)
                top = probs.argmax(axis=1)
                per_class = {
                    label: float((top[test_y == i] == i).mean()) for i, label in enumerate(labels)
                }
                rows[name].append(
                    {
                        "new_class_recall": per_class[left_out],
                        "new_class_precision": float(
                            (test_y[top == index[left_out]] == index[left_out]).mean()
                        )
                        if np.any(top == index[left_out])
                        else 0.0,
                        "other_classes_accuracy": float((top[old] == test_y[old]).mean()),
                        "accuracy_all": float((top == test_y).mean()),
                        **{f"recall_{k}": v for k, v in per_class.items()},
                    }
                )
        out.setdefault(regime, {})[str(shots)] = {name: summarise(r) for name, r in rows.items()}
        _log(
            f"new class {left_out} from {shots} ({regime}): "
            + ", ".join(
                f"{n} recall {v['new_class_recall']['mean']:.3f} others "
                f"{v['other_classes_accuracy']['mean']:.3f}"
                for n, v in out[regime][str(shots)].items()
            )
        )
    return out


def refit_timing(copies: dict, labels: list[str]) -> dict:
    """Seconds for SiteHead.fit (with its cross-validated recalibration) and for one apply."""
    E = copies["train"]["embeddings"]
    y = copies["train"]["labels"]
    rng = np.random.default_rng(SEED)
    out: dict = {
        "how": "SiteHead.fit with its cross-validated recalibration (median of 5), one "
        "labelled tenth under a site-only label; CPU seconds of this process (the machine is "
        "shared, wall time is also given); OMP_NUM_THREADS="
        + os.environ.get("OMP_NUM_THREADS", "unset"),
        "load_average": os.getloadavg()[0],
        "pi4_ratio": PI4_RATIO,
    }
    for n in (60, 120, 300, 600):
        pick_ = rng.choice(len(y), size=n, replace=False)
        taught = [str(v) for v in y[pick_]]
        # A site-only label among them, as a store with a new class would have.
        taught[: n // 10] = ["coffee_cup"] * (n // 10)
        times, cpu = [], []
        for _ in range(5):
            started, started_cpu = time.perf_counter(), time.process_time()
            head = SiteHead.fit(E[pick_], taught, model_labels=labels, model_path=MODEL)
            times.append(time.perf_counter() - started)
            cpu.append(time.process_time() - started_cpu)
        started = time.perf_counter()
        for i in range(200):
            head.apply(E[i], np.full(len(labels), 1 / len(labels)))
        out[str(n)] = {
            "fit_s_median": round(float(np.median(times)), 4),
            "fit_cpu_s_median": round(float(np.median(cpu)), 4),
            "pi4_projected_s": round(float(np.median(cpu)) * PI4_RATIO, 3),
            "apply_ms": round((time.perf_counter() - started) / 200 * 1000, 4),
        }
        _log(f"refit {n} examples: {out[str(n)]}")
    return out


PLOTTED = {
    "model": "model alone",
    "site_head": "site head (shipped)",
    "align_taught": "re-centre only",
    "align_unlabelled": "re-centre on every site item, unlabelled (not shipped)",
    "ft_l2_0.1": "fine-tune last layer (L2 0.1)",
    "knn_fused_with_model": "k-NN fused with model",
    "softmax_scratch": "softmax regression from scratch",
    "ncm": "nearest class mean",
}


def plot(results: dict, path: Path) -> None:
    """Accuracy on the scoring half against frames taught per class, one panel per copy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, copy in zip(axes, ("site", "camera"), strict=True):
        table = results["curves"][copy]
        for name, title in PLOTTED.items():
            means = [100 * table[str(k)][name]["accuracy"]["mean"] for k in SHOTS]
            sds = [100 * table[str(k)][name]["accuracy"]["sd"] for k in SHOTS]
            style = "-" if name == "site_head" else "--" if name == "model" else ":"
            ax.errorbar(SHOTS, means, yerr=sds, label=title, ls=style, marker="o", ms=3, capsize=2)
        bound = 100 * table["all"]["site_head"]["accuracy"]["mean"]
        ax.axhline(bound, color="grey", lw=0.8)
        ax.text(SHOTS[0], bound + 0.5, "site head on the whole teaching half", fontsize=7)
        ax.set_xscale("log")
        ax.set_xticks(SHOTS, [str(k) for k in SHOTS])
        ax.set_xlabel("frames taught per class")
        ax.set_title(f"{copy} copy of the test split (scoring half)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (%)")
    axes[0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _cell(entry: dict, key: str = "accuracy") -> str:
    return f"{100 * entry[key]['mean']:.1f} ± {100 * entry[key]['sd']:.1f}"


def new_class_tables(nc: dict) -> list[str]:
    """The new-class experiment's two tables (Markdown lines)."""
    lines = []
    for regime in ("only_new", "with_known"):
        lines += [
            f"\n**New class `{nc['left_out']}`, {regime}**: recall of the new class / "
            "accuracy on the other classes (%)\n",
            "| method | 5 photos | 10 photos | 20 photos |",
            "|---|---|---|---|",
        ]
        for name in nc[regime]["5"]:
            lines.append(
                f"| {name} | "
                + " | ".join(
                    f"{100 * nc[regime][k][name]['new_class_recall']['mean']:.1f} / "
                    f"{100 * nc[regime][k][name]['other_classes_accuracy']['mean']:.1f}"
                    for k in ("5", "10", "20")
                )
                + " |"
            )
    return lines


def tables(results: dict) -> str:
    """docs/SITE.md's tables (Markdown), from the results."""
    lines = []
    for copy in ("site", "camera"):
        table = results["curves"][copy]
        columns = [*map(str, SHOTS), "all"]
        lines += [
            f"\n**{copy} copy**: accuracy (%) on the scoring half, mean ± sd over draws\n",
            "| method | "
            + " | ".join(f"{c}/class" if c != "all" else "whole half" for c in columns)
            + " |",
            "|---|" + "---|" * len(columns),
        ]
        for name in table["1"]:
            lines.append(f"| {name} | " + " | ".join(_cell(table[c][name]) for c in columns) + " |")
        lines += [
            f"\n{copy} copy: gain over the model alone (points), paired by draw, mean ± sd\n",
            "| method | " + " | ".join(f"{c}/class" for c in columns) + " |",
            "|---|" + "---|" * len(columns),
        ]
        for name in ("site_head", "ft_l2_0.1", "align_taught", "align_unlabelled"):
            lines.append(
                f"| {name} | "
                + " | ".join(_cell(table[c][name], "gain_over_model") for c in columns)
                + " |"
            )
        lines += [
            f"\n{copy} copy, unsure threshold {THRESHOLD}: coverage / accuracy of accepted items (%)\n",
            "| method | " + " | ".join(f"{c}/class" for c in columns) + " |",
            "|---|" + "---|" * len(columns),
        ]
        for name in ("model", "site_head", "ft_l2_0.1", "align_taught"):
            lines.append(
                f"| {name} | "
                + " | ".join(
                    f"{100 * table[c][name]['coverage']['mean']:.0f} / "
                    f"{100 * table[c][name]['accepted_accuracy']['mean']:.1f}"
                    for c in columns
                )
                + " |"
            )
    check = results["clean_check"]
    lines += [
        "\n**Clean test items, store holding camera-condition frames** (accuracy %, scoring half)\n",
        "| camera frames taught per class | model | site head | drop (points) |",
        "|---|---|---|---|",
    ]
    for shots, row in check.items():
        lines.append(
            f"| {shots} | {_cell(row['model'])} | {_cell(row['site_head'])} | "
            f"{row['clean_accuracy_drop_points']:+.2f} |"
        )
    if "new_class" in results:
        lines += new_class_tables(results["new_class"])
    lines += [
        "\n| examples | fit, CPU s | fit, wall s | Pi 4 projected s | apply, ms |",
        "|---|---|---|---|---|",
    ]
    for n, row in results["refit_timing"].items():
        if isinstance(row, dict):
            lines.append(
                f"| {n} | {row['fit_cpu_s_median']:.3f} | {row['fit_s_median']:.3f} | "
                f"{row['pi4_projected_s']:.2f} | {row['apply_ms']:.3f} |"
            )
    return "\n".join(lines) + "\n"


def summarise(rows: list[dict]) -> dict:
    return {
        key: {
            "mean": round(float(np.mean([r[key] for r in rows])), 4),
            "sd": round(float(np.std([r[key] for r in rows])), 4),
        }
        for key in rows[0]
    }


def folds_summary(fold_results: list[dict]) -> dict:
    """Per-fold results of one recipe (``--model-dir`` on each cross-validation fold) in one:
    the model alone, and each method's gain over it, coverage and accepted accuracy at the
    threshold, as the mean and sd over folds of each fold's mean over draws."""

    def over_folds(values: list[float]) -> dict[str, float]:
        return {"mean": round(float(np.mean(values)), 4), "sd": round(float(np.std(values)), 4)}

    first = fold_results[0]["curves"]
    curves: dict = {}
    for copy, by_shots in first.items():
        curves[copy] = {}
        for shots, methods in by_shots.items():
            curves[copy][shots] = {}
            for method in methods:
                rows = [r["curves"][copy][shots] for r in fold_results]
                curves[copy][shots][method] = {
                    "gain_over_model": over_folds(
                        [
                            row[method]["accuracy"]["mean"] - row["model"]["accuracy"]["mean"]
                            for row in rows
                        ]
                    ),
                    **{
                        key: over_folds([row[method][key]["mean"] for row in rows])
                        for key in ("accuracy", "coverage", "accepted_accuracy")
                    },
                }
    return {
        "folds": len(fold_results),
        "models": [r["setup"]["model"] for r in fold_results],
        "setup": {k: v for k, v in fold_results[0]["setup"].items() if k != "model"},
        "model_only": {
            copy: over_folds([r["model_only"][copy] for r in fold_results])
            for copy in fold_results[0]["model_only"]
        },
        "curves": curves,
        "clean_check_drop_points": {
            shots: over_folds(
                [r["clean_check"][shots]["clean_accuracy_drop_points"] for r in fold_results]
            )
            for shots in fold_results[0]["clean_check"]
        },
    }


def new_class_methods() -> dict[str, Callable]:
    """The heads compared when a class the model never saw is taught."""
    return {
        "site_head": fit_site_head,
        "site_head_every_frame_wins": fit_site_head_every,
        "gated_cosine_means": M.fit_gated,
        "ft_l2_0.1": lambda c, E, y: M.fit_ft(c, E, y, l2=0.1),
        "ncm": M.fit_ncm,
        "softmax_scratch": M.fit_softmax_scratch,
        "knn": lambda c, E, y: M.fit_knn(c, E, y, fuse=False),
    }


def main(argv: list[str] | None = None) -> int:
    global MODEL, SPLIT  # --model-dir
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--collect-only", action="store_true")
    parser.add_argument("--new-class-model", type=Path, default=Path("runs/no_metal/model"))
    parser.add_argument("--left-out", default="metal")
    parser.add_argument("--out", type=Path, default=Path("docs/site_experiments.json"))
    parser.add_argument("--draws", type=int, default=DRAWS)
    parser.add_argument(
        "--known-per-class",
        type=int,
        default=5,
        help="new-class experiment: frames of each known class taught beside the new one",
    )
    parser.add_argument("--plot-only", action="store_true", help="redraw the PNG from --out")
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=MODEL.parent,
        help="the model folder to measure (default models/): its .tflite, labels, card and "
        "split.csv (a cross-validation fold's folder: its held-out images are the test split)",
    )
    parser.add_argument(
        "--folds-summary",
        type=Path,
        nargs="+",
        metavar="FOLD_JSON",
        help="summarise per-fold results (mean and sd over folds) into --out and stop",
    )
    parser.add_argument(
        "--new-class-only",
        action="store_true",
        help="run only the new-class experiment (--new-class-model; the left-out class's "
        "photos split as --model-dir's split.csv has them) into --out, print its tables",
    )
    parser.add_argument(
        "--write-reference",
        action="store_true",
        help="record the training split's mean logits in models/model_card.json and stop",
    )
    args = parser.parse_args(argv)
    MODEL, SPLIT = args.model_dir / MODEL.name, args.model_dir / SPLIT.name
    curves_png = (
        args.out.with_name("site_curves.png")
        if args.out == Path("docs/site_experiments.json")
        else args.out.with_suffix(".png")
    )
    if args.folds_summary:
        summary = folds_summary([json.loads(p.read_text()) for p in args.folds_summary])
        args.out.write_text(json.dumps(summary, indent=1) + "\n")
        return 0
    if args.plot_only:
        results = json.loads(args.out.read_text())
        plot(results, curves_png)
        print(tables(results))
        return 0
    labels = (args.model_dir / "labels.txt").read_text().split()
    if args.write_reference:  # the training split only (a whole-pool model has no test split)
        _log(f"reference: {write_shipped_reference()}")
        return 0
    if args.new_class_only:
        results = {
            "setup": {"split_of_the_new_class": str(SPLIT), "draws": args.draws},
            "new_class": new_class(
                args.new_class_model,
                args.left_out,
                new_class_methods(),
                args.draws,
                known_per_class=args.known_per_class,
            ),
        }
        args.out.write_text(json.dumps(results, indent=1) + "\n")
        print("\n".join(new_class_tables(results["new_class"])))
        return 0
    copies = collect()
    if args.collect_only:
        if (args.new_class_model / "waste_classifier.tflite").exists():
            collect_new_class(args.new_class_model, args.left_out)
        return 0
    results: dict = {
        "setup": {
            "model": str(MODEL),
            "test_items": len(copies["clean"]["labels"]),
            "draws": args.draws,
            "shots_per_class": list(SHOTS),
            "threshold": THRESHOLD,
            "protocol": "each draw splits every class of the test split at random into a "
            "teaching half and a scoring half; k frames per class are taught from the "
            "teaching half (all of it for 'all', capped by what the half holds: trash has 8), "
            "the scoring half is scored; mean and sd over draws",
        },
        "model_only": {
            copy: float(
                (
                    copies[copy]["probs"].argmax(axis=1)
                    == np.array([labels.index(v) for v in copies[copy]["labels"]])
                ).mean()
            )
            for copy in ("clean", "site", "camera")
        },
    }
    results["curves"] = curves(copies, labels, candidates(), args.draws)
    results["clean_check"] = clean_check(copies, labels, args.draws)
    if (args.new_class_model / "waste_classifier.tflite").exists():
        results["new_class"] = new_class(
            args.new_class_model, args.left_out, new_class_methods(), args.draws
        )
    results["refit_timing"] = refit_timing(copies, labels)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    plot(results, curves_png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
