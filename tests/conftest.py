"""Fixtures shared by every test: the network-namespace ``lab`` and its session safety net."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator

import netlab
import pytest


@pytest.fixture
def lab() -> Iterator[netlab.Lab]:
    """A fresh :class:`netlab.Lab`; everything it made is gone after the test, pass or fail."""
    reason = netlab.unavailable()
    if reason:
        pytest.skip(reason)
    with netlab.Lab() as the_lab:
        yield the_lab


@pytest.fixture(scope="session", autouse=True)
def _netlab_safety_net() -> Iterator[None]:
    """At session end, remove anything a Lab of this process left (a Lab's own cleanup should
    have: a leftover is a bug, reported as a warning)."""
    yield
    if os.geteuid() == 0:
        left = netlab.sweep()
        if left:
            warnings.warn(f"netlab: removed leftovers {left}", netlab.NetlabCleanupWarning,
                          stacklevel=1)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Last resort, also after an interrupted session (idempotent with the fixture above)."""
    if os.geteuid() == 0:
        netlab.sweep()
