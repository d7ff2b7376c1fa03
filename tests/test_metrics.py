import numpy as np
import pytest

from bin_daemon.loop.policy import Policy
from bin_daemon.model.evaluate import bin_metrics
from bin_daemon.model.metrics import Contamination, bin_report, coverage_at, report


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


# --- bin level: hand-computed cases ------------------------------------------------------

# Eight items under a policy with bins recycling (cardboard, paper), glass, landfill (trash;
# the fallback bin) and threshold 0.6. "batteries" is a label in no bin: it belongs in the
# fallback bin. (true label, predicted label, confidence), and where each one goes:
ITEMS = [
    ("paper", "paper", 0.9),  # recycling -> recycling
    ("paper", "cardboard", 0.5),  # recycling -> recycling; unsure -> landfill
    ("glass", "paper", 0.8),  # glass -> recycling
    ("glass", "glass", 0.95),  # glass -> glass
    ("trash", "glass", 0.7),  # landfill -> glass
    ("trash", "trash", 0.4),  # landfill -> landfill; unsure -> landfill
    ("cardboard", "trash", 0.9),  # recycling -> landfill
    ("batteries", "paper", 0.99),  # landfill (no bin) -> recycling
]
POLICY = Policy(
    {"cardboard": "recycling", "paper": "recycling", "glass": "glass", "trash": "landfill"},
    "landfill",
    0.6,
)


def test_bin_report_counts_accuracy_and_contamination_by_hand():
    r = bin_report(
        ["recycling", "glass", "landfill"],
        "landfill",
        ["recycling", "recycling", "glass", "glass", "landfill", "landfill", "recycling"],
        ["recycling", "landfill", "recycling", "glass", "glass", "landfill", "landfill"],
    )
    assert r.confusion.tolist() == [[1, 0, 2], [1, 1, 0], [0, 1, 1]]
    assert r.n == 7 and r.accuracy == pytest.approx(3 / 7)
    assert r.recycling_bins == ["recycling", "glass"]
    # recycling got 2 items, one of them glass; glass got 2, one of them landfill's
    assert r.contamination == {"recycling": Contamination(2, 1), "glass": Contamination(2, 1)}
    assert r.contamination["recycling"].share == 0.5
    assert r.recycling_contamination == Contamination(4, 2)
    assert "landfill" not in r.contamination  # the fallback bin is never contaminated


def test_a_bin_nothing_went_into_has_no_contamination_share():
    r = bin_report(["a", "b", "rest"], "rest", ["a", "rest"], ["a", "a"])
    assert r.contamination["b"] == Contamination(0, 0)
    assert r.contamination["b"].share is None
    assert r.as_dict()["contamination"]["b"] == {"sent": 0, "foreign": 0, "share": None}
    assert r.contamination["a"].share == 0.5


def test_bin_report_refuses_a_fallback_that_is_not_a_bin():
    with pytest.raises(ValueError, match="fallback bin 'x'"):
        bin_report(["a"], "x", [], [])


def test_coverage_at_counts_a_confidence_equal_to_the_threshold_as_sure():
    c = coverage_at(0.5, [0.5, 0.49, 0.9], [True, True, False])
    assert (c.n, c.covered, c.correct) == (3, 2, 1)
    assert c.coverage == pytest.approx(2 / 3) and c.accuracy == 0.5
    nothing = coverage_at(1.0, [0.2], [True])
    assert nothing.coverage == 0.0 and nothing.accuracy is None
    assert nothing.as_dict()["accuracy_covered"] is None


def test_bin_metrics_of_hand_made_items_under_a_policy():
    truth, predicted, confidence = (list(x) for x in zip(*ITEMS, strict=True))
    m = bin_metrics(POLICY, truth, predicted, confidence)
    assert m.top1.bins == ["recycling", "glass", "landfill"]
    # each item to its predicted label's bin: items 1, 2, 4 and 6 land right
    assert m.top1.confusion.tolist() == [[2, 0, 1], [1, 1, 0], [1, 1, 1]]
    assert m.top1.accuracy == 0.5
    assert m.top1.contamination == {"recycling": Contamination(4, 2), "glass": Contamination(2, 1)}
    assert m.top1.recycling_contamination == Contamination(6, 3)
    # as the daemon decides: items 2 and 6 are unsure (0.5, 0.4 < 0.6) and go to landfill
    assert m.decided.confusion.tolist() == [[1, 0, 2], [1, 1, 0], [1, 1, 1]]
    assert m.decided.accuracy == 3 / 8
    assert m.decided.contamination["recycling"].share == pytest.approx(2 / 3)
    assert m.decided.recycling_contamination == Contamination(5, 3)
    # six items are sure; two of them have the right label (items 1 and 4)
    assert (m.coverage.covered, m.coverage.correct) == (6, 2)
    assert m.coverage.coverage == 0.75 and m.coverage.accuracy == pytest.approx(1 / 3)
    d = m.as_dict()
    assert d["policy"]["recycling_bins"] == ["recycling", "glass"]
    assert d["policy"]["bins"]["landfill"] == ["trash"]
    assert d["at_threshold"]["bin_accuracy"] == 0.375 and d["at_threshold"]["coverage"] == 0.75
    assert d["top1"]["recycling_contamination"] == {"sent": 6, "foreign": 3, "share": 0.5}


def test_bin_metrics_at_threshold_zero_are_the_top1_ones():
    truth, predicted, confidence = (list(x) for x in zip(*ITEMS, strict=True))
    zero = Policy(POLICY.bin_for_label, POLICY.fallback_bin, 0.0)
    m = bin_metrics(zero, truth, predicted, confidence)
    assert m.decided.confusion.tolist() == m.top1.confusion.tolist()
    assert m.coverage.coverage == 1.0 and m.coverage.accuracy == 3 / 8  # items 1, 4, 6
