"""Waiting for a condition in tests that drive real processes."""

from __future__ import annotations

import time


def wait_until(predicate, timeout=20.0, interval=0.05, what="condition"):
    """The predicate's first true value; AssertionError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)
