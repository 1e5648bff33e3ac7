"""Shared test set-up: hypothesis profiles ("ci" fast, "thorough" long) and float64 maths."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=15,
    deadline=None,
    derandomize=True,  # CI runs the same examples every time; "thorough" explores
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "thorough", max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


# The integration tests import the examples they run (examples/ is not a package).
sys.path.append(str(Path(__file__).resolve().parent.parent / "examples"))
