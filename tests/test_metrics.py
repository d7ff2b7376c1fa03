import numpy as np
import pytest

from bin_daemon.model.metrics import report


def test_report_from_a_known_confusion():
    labels = ["a", "b", "c"]
    true = ["a", "a", "a", "b", "b", "c"]
    pred = ["a", "a", "b", "b", "b", "a"]
    r = report(labels, true, pred)
    assert r.confusion.tolist() == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert r.n == 6
    assert r.accuracy == pytest.approx(4 / 6)
    a, b, c = (r.per_class[x] for x in labels)
    assert (a.precision, a.recall) == (pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert (b.precision, b.recall, b.f1) == (pytest.approx(2 / 3), 1.0, pytest.approx(0.8))
    assert (c.precision, c.recall, c.f1, c.support) == (0.0, 0.0, 0.0, 1)
    assert r.macro_f1 == pytest.approx((2 / 3 + 0.8 + 0) / 3)
    assert r.min_recall == 0.0


def test_indices_and_names_agree_and_dict_has_the_documented_keys():
    labels = ["x", "y"]
    by_name = report(labels, ["x", "y", "y"], ["x", "x", "y"])
    by_index = report(labels, np.array([0, 1, 1]), np.array([0, 0, 1]))
    assert by_name.as_dict() == by_index.as_dict()
    assert set(by_name.as_dict()) == {
        "n",
        "accuracy",
        "macro_f1",
        "labels",
        "per_class",
        "confusion",
    }
