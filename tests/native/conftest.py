"""Tests of the native data-path core against the pure-Python path (its specification).

They need the native module (``tunseal_native``, built from ``native/``), and use it also
under ``TUNSEAL_NATIVE=0`` (which only makes the data path not use it). Where it is not
built they skip, unless ``TUNSEAL_REQUIRE_NATIVE=1`` (set by CI, which builds it): then a
missing module fails the run instead of skipping it silently.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from core import native

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "unit"))  # rxrig, hostile...


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if native.built is not None:
        return
    if os.environ.get("TUNSEAL_REQUIRE_NATIVE") == "1":
        raise pytest.UsageError(f"TUNSEAL_REQUIRE_NATIVE=1 but {native.describe()}")
    here = Path(__file__).resolve().parent
    skip = pytest.mark.skip(reason=f"tests of the native core: {native.describe()}")
    for item in items:
        if Path(str(item.fspath)).resolve().is_relative_to(here):
            item.add_marker(skip)
