"""The decision policy: a pure function."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bin_daemon.loop.policy import BinChoice, Policy, decide

BINS = {"cardboard": "recycling", "paper": "recycling", "glass": "glass", "trash": "landfill"}
POLICY = Policy(BINS, "landfill", 0.6)


def test_confident_label_goes_to_its_bin():
    assert POLICY.decide("glass", 0.9) == BinChoice("glass", False, "label")


def test_below_threshold_is_unsure_and_goes_to_fallback():
    choice = POLICY.decide("glass", 0.59)
    assert (choice.bin, choice.unsure) == ("landfill", True)
    assert choice.reason == "confidence 0.59 < threshold 0.60"


def test_threshold_itself_is_sure():
    assert POLICY.decide("paper", 0.6).bin == "recycling"


def test_unlisted_label_goes_to_fallback_not_unsure():
    assert POLICY.decide("metal", 0.99) == BinChoice(
        "landfill", False, "label 'metal' is in no bin"
    )


def test_no_label_at_all():
    assert POLICY.decide(None, 0.0) == BinChoice("landfill", True, "not classified")


def test_threshold_is_validated():
    with pytest.raises(ValueError, match="unsure_threshold must be from 0 to 1"):
        Policy(BINS, "landfill", 1.5)


@given(st.sampled_from([*BINS, "metal"]), st.floats(0, 1), st.floats(0, 1))
def test_always_a_configured_bin_and_unsure_iff_below_threshold(label, confidence, threshold):
    choice = decide(
        label, confidence, bin_for_label=BINS, fallback_bin="landfill", unsure_threshold=threshold
    )
    assert choice.bin in set(BINS.values())
    assert choice.unsure == (confidence < threshold)
    if choice.unsure:
        assert choice.bin == "landfill"
