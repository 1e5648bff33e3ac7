"""Optional libraries of the integration tests: skipped where missing, unless CI requires them.

``make test`` installs the ``integration`` extra and sets ``GXD_INTEGRATION=required``, so a
library that fails to install or import fails the run instead of skipping its tests.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest


def needs(module: str) -> ModuleType:
    """Import ``module``; skip the test module if it is missing (fail where required)."""
    if os.environ.get("GXD_INTEGRATION") == "required":
        return importlib.import_module(module)
    return pytest.importorskip(module)
