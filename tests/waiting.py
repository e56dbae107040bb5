"""Waiting for a condition in tests that drive real processes: the one way tests wait, instead
of sleeping for a time that is too long when the machine is idle and too short when it is not."""

from __future__ import annotations

import time


def wait_until(predicate, timeout=20.0, interval=0.05, what="condition", ignoring=()):
    """The predicate's first true value; AssertionError naming `what` after `timeout` s.

    An exception of a type in `ignoring` counts as "not yet" (a server still starting, a shard
    coming back); if the time runs out on one, that exception is raised."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except ignoring:
            if time.monotonic() > deadline:
                raise
        else:
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)
