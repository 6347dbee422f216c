"""helper.recentlog: the records recent_log returns, per tunnel, within the reply budget."""

from __future__ import annotations

import json
import logging

from core.ipc import MAX_LINE
from helper.recentlog import REPLY_BUDGET, RecentLog


def test_recent_log_per_tunnel_newest_within_budget() -> None:
    ring = RecentLog(logging.INFO, keep=5000)
    logger = logging.getLogger("test.recentlog")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(ring)
    try:
        logger.debug("not kept: below the level", extra={"tunnel": "a"})
        logger.info("helper started")
        for i in range(3000):
            logger.info("a line %d %s", i, "x" * 40, extra={"tunnel": "a" if i % 2 else "b"})
    finally:
        logger.removeHandler(ring)
    a = ring.entries("a")
    assert {e["tunnel"] for e in a} == {"a"}  # the helper's line is older than the budget
    assert a[-1]["message"].startswith("a line 2999 ")
    assert len(json.dumps({"entries": a})) <= REPLY_BUDGET < MAX_LINE
    assert [e["time"] for e in a] == sorted(e["time"] for e in a)
    small = RecentLog(logging.INFO)
    logger.addHandler(small)
    try:
        logger.info("helper started")
        logger.info("b only", extra={"tunnel": "b"})
        logger.debug("no")
    finally:
        logger.removeHandler(small)
    assert [e["message"] for e in small.entries("a")] == ["helper started"]
    assert [e["message"] for e in small.entries(None)] == ["helper started", "b only"]
