"""The two example shapes every loader produces, whatever the source."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ClassificationExample:
    text: str
    text_pair: str | None
    label: int | float  # class id, or a float target for regression (stsb)


@dataclass(frozen=True, slots=True)
class GenerationExample:
    prompt: str
    completion: str
    group: str  # rows sharing a group are references of one input (the E2E MR)
