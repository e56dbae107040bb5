"""The client of the node's dmcproxy stats socket (control/node_proxy.py, "local interfaces"):
what the node's services (metrics_exporter, stats_archiver, alert_mgr) read the endpoints'
counters with."""

from __future__ import annotations

import json

import trio

from control.node import NodeConfig

STATS_TIMEOUT = 10.0


class ProxyStatsUnavailable(OSError):
    """The node's dmcproxy did not answer (not running, or not yet listening)."""


async def read_proxy_stats(config: NodeConfig, timeout: float = STATS_TIMEOUT) -> dict:
    """{"<bdb uid>": stats} of every endpoint the node's dmcproxy serves now; each stats is
    dmc.endpoint.Endpoint.stats(), its "counters" as README's "Counters" describes them.
    Raises ProxyStatsUnavailable when the proxy does not answer within timeout seconds."""
    try:
        with trio.fail_after(timeout):
            stream = await trio.open_unix_socket(str(config.proxy_stats_sock))
            async with stream:
                await stream.send_all(b"STATS\n")
                data = bytearray()
                while chunk := await stream.receive_some(1 << 16):
                    data += chunk
    except (OSError, trio.TooSlowError) as exc:
        raise ProxyStatsUnavailable(f"dmcproxy stats at {config.proxy_stats_sock}: {exc}") from exc
    try:
        reply = json.loads(data)
    except ValueError as exc:
        raise ProxyStatsUnavailable(f"dmcproxy stats: not JSON: {bytes(data[:80])!r}") from exc
    if "error" in reply and not isinstance(reply["error"], dict):
        raise ProxyStatsUnavailable(f"dmcproxy stats: {reply['error']}")
    return reply
