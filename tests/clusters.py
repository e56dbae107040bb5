"""Real local clusters for the database tests: started, waited for, stopped, and their election
histories checked when they stop."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import httpx
from waiting import wait_until

from control import history
from control.local_cluster import LocalCluster, loopback_addresses


def api_answers(config, auth) -> bool:
    """The node's cnm_http answers an authenticated request."""
    try:
        return httpx.get(f"http://{config.address}:{config.rest_port}/v1/cluster", auth=auth,
                         timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@contextmanager
def rest_cluster(home, first_address: str, nodes: int = 3) -> Iterator[LocalCluster]:
    """A cluster whose every node's REST API answers; stopped and checked on the way out."""
    c = LocalCluster.create(home, loopback_addresses(nodes, first_address), record_history=True)
    try:
        for config in c.nodes.values():
            wait_until(lambda cfg=config: api_answers(cfg, c.admin_login()), 20,
                       what=f"cnm_http of node {config.uid}")
        yield c
    finally:
        c.stop()
    found = history.violations(history.load_dir(c.home))
    assert found == [], found
