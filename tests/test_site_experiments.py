"""The site experiments' summary over cross-validation folds (docs/SITE.md's Lite2 table)."""

from __future__ import annotations

import pytest

from bin_daemon.training.site_experiments import folds_summary


def fold(model_accuracy: float, head_accuracy: float, drop: float, name: str) -> dict:
    def cell(accuracy: float) -> dict:
        return {
            "accuracy": {"mean": accuracy, "sd": 0.01},
            "coverage": {"mean": 0.7, "sd": 0.0},
            "accepted_accuracy": {"mean": 0.9, "sd": 0.0},
        }

    shots = {"1": {"model": cell(model_accuracy), "site_head": cell(head_accuracy)}}
    return {
        "setup": {"model": name, "draws": 10},
        "model_only": {"site": model_accuracy},
        "curves": {"site": shots},
        "clean_check": {"5": {"clean_accuracy_drop_points": drop}},
    }


def test_each_methods_gain_is_paired_within_a_fold_then_averaged_over_folds():
    summary = folds_summary([fold(0.70, 0.75, 0.5, "a"), fold(0.80, 0.81, -0.5, "b")])
    gain = summary["curves"]["site"]["1"]["site_head"]["gain_over_model"]
    assert gain["mean"] == pytest.approx(0.03) and gain["sd"] == pytest.approx(0.02)
    assert summary["model_only"]["site"]["mean"] == pytest.approx(0.75)
    assert summary["clean_check_drop_points"]["5"] == {"mean": 0.0, "sd": 0.5}
    assert summary["folds"] == 2 and summary["models"] == ["a", "b"]
    assert summary["setup"] == {"draws": 10}
