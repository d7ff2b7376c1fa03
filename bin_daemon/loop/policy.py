"""Which bin an item goes to: a pure function of the label, its confidence and the config."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class BinChoice:
    bin: str
    unsure: bool
    reason: str


@dataclass(frozen=True)
class Policy:
    """label -> bin from config; below ``unsure_threshold`` (or unlisted) -> ``fallback_bin``."""

    bin_for_label: Mapping[str, str]
    fallback_bin: str
    unsure_threshold: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.unsure_threshold <= 1.0:
            raise ValueError(f"unsure_threshold must be from 0 to 1, got {self.unsure_threshold}")

    def decide(self, label: str | None, confidence: float) -> BinChoice:
        return decide(
            label,
            confidence,
            bin_for_label=self.bin_for_label,
            fallback_bin=self.fallback_bin,
            unsure_threshold=self.unsure_threshold,
        )


def decide(
    label: str | None,
    confidence: float,
    *,
    bin_for_label: Mapping[str, str],
    fallback_bin: str,
    unsure_threshold: float,
) -> BinChoice:
    """The bin for one item. ``label`` None means it could not be classified at all."""
    if label is None:
        return BinChoice(fallback_bin, True, "not classified")
    if confidence < unsure_threshold:
        return BinChoice(
            fallback_bin, True, f"confidence {confidence:.2f} < threshold {unsure_threshold:.2f}"
        )
    if label not in bin_for_label:
        return BinChoice(fallback_bin, False, f"label '{label}' is in no bin")
    return BinChoice(bin_for_label[label], False, "label")
