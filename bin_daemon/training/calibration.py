"""Confidence calibration (temperature scaling) and the "unsure" threshold."""

from __future__ import annotations

import numpy as np


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def nll(logits: np.ndarray, targets: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of ``targets`` under softmax(logits / temperature)."""
    log_probs = _log_softmax(logits / temperature)
    return float(-log_probs[np.arange(len(targets)), targets].mean())


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """The temperature minimising validation NLL (golden-section search on log T)."""
    low, high = np.log(0.05), np.log(20.0)
    ratio = (np.sqrt(5) - 1) / 2
    for _ in range(80):
        a = high - ratio * (high - low)
        b = low + ratio * (high - low)
        if nll(logits, targets, np.exp(a)) < nll(logits, targets, np.exp(b)):
            high = b
        else:
            low = a
    return float(np.exp((low + high) / 2))


def coverage_curve(probs: np.ndarray, targets: np.ndarray) -> list[dict]:
    """For thresholds 0.00..0.99: share of items accepted and accuracy on the accepted ones."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == targets
    curve = []
    for threshold in np.round(np.arange(0.0, 1.0, 0.01), 2):
        accepted = confidence >= threshold
        curve.append(
            {
                "threshold": float(threshold),
                "coverage": float(accepted.mean()),
                "accuracy": float(correct[accepted].mean()) if accepted.any() else 1.0,
            }
        )
    return curve


def choose_threshold(
    probs: np.ndarray, targets: np.ndarray, target_accuracy: float, min_coverage: float = 0.85
) -> tuple[float, list[dict]]:
    """The lowest threshold whose accepted items reach ``target_accuracy`` on validation,
    but never one that sends more than ``1 - min_coverage`` of the items to the fallback bin:
    an "unsure" item is a recyclable lost to landfill, so sorting must stay the rule."""
    curve = coverage_curve(probs, targets)
    chosen = curve[0]["threshold"]
    for point in curve:
        if point["coverage"] < min_coverage:
            break
        chosen = point["threshold"]
        if point["accuracy"] >= target_accuracy:
            break
    return chosen, curve


def accepted_stats(probs: np.ndarray, targets: np.ndarray, threshold: float) -> dict:
    confidence = probs.max(axis=1)
    accepted = confidence >= threshold
    correct = probs.argmax(axis=1) == targets
    return {
        "threshold": threshold,
        "coverage": float(accepted.mean()),
        "accuracy_accepted": float(correct[accepted].mean()) if accepted.any() else 1.0,
    }
