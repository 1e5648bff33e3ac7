"""Names every docstring example may use without importing them: ``torch``, ``nn``, ``GXDReset``."""

from typing import Any

import pytest
import torch
from torch import nn

from gxd_optim import GXDReset


@pytest.fixture(autouse=True)
def _doctest_names(doctest_namespace: dict[str, Any]) -> None:
    doctest_namespace.update(torch=torch, nn=nn, GXDReset=GXDReset)
