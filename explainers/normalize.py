"""The one normalisation of a score between the fully removed image and the photo, shared by
the curves (``metrics``) and region search's objective (which scores the same kind of images),
so both divide by the same span, with the same sign, when the two ends almost tie."""

from __future__ import annotations

MIN_SPAN = 1e-6  # a span smaller than this (score units) is replaced by +-MIN_SPAN


def score_span(full: float, empty: float) -> float:
    """``full - empty``, kept at least ``MIN_SPAN`` away from 0 with its own sign (+ for an exact
    tie): the model cannot tell the photo from the removed image, and dividing by ~0 would blow
    the normalised scores up without changing their order."""
    span = float(full) - float(empty)
    if abs(span) < MIN_SPAN:
        return MIN_SPAN if span >= 0 else -MIN_SPAN
    return span
