"""The node's dmcproxy figures, as the management services read them: every endpoint's
`Endpoint.stats()`, served by the node's dmcproxy (control/node_proxy.py, "Local interfaces")
on the unix socket NodeConfig.proxy_stats_sock (`<run_dir>/dmcproxy.sock`).

The protocol is one line in, `STATS\\n`, and one JSON object out, `{"<bdb uid>": stats}`, then
the connection is closed. The stats of an endpoint are what its compiled core counts (see
dmc/_fastpath.pyx); once the data path's counters are there, `stats["counters"]` holds
read/write/other requests and responses, accumulated latencies (µs), a latency histogram,
connections, bytes in and out, errors, auth failures, monitors and pub/sub figures. A reader
must treat any of these as possibly absent (an older dmcproxy): a figure missing is a metric not
exported, never a crash.

Reading costs the data path one call on each endpoint's loop thread between two turns (as a map
install does), never work per command.
"""

from __future__ import annotations

import json

import trio


REQUEST = b"STATS\n"
READ_TIMEOUT = 1.0
MAX_REPLY = 16 << 20


async def read_proxy_stats(config, timeout: float = READ_TIMEOUT) -> dict[int, dict]:
    """{bdb uid: stats} of every endpoint of the node's dmcproxy. OSError if the dmcproxy does
    not answer within `timeout` (not running, or its loop stuck), ValueError if the answer is
    not the JSON object the protocol says."""
    try:
        with trio.fail_after(timeout):
            stream = await trio.open_unix_socket(str(config.proxy_stats_sock))
            async with stream:
                await stream.send_all(REQUEST)
                chunks, size = [], 0
                async for chunk in stream:
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > MAX_REPLY:
                        raise ValueError("dmcproxy's stats answer is too large")
    except trio.TooSlowError:
        raise OSError(f"dmcproxy did not answer STATS within {timeout}s") from None
    except trio.BrokenResourceError as exc:
        raise OSError(f"dmcproxy closed the stats socket: {exc}") from None
    data = json.loads(b"".join(chunks) or b"null")
    if not isinstance(data, dict):
        raise ValueError("dmcproxy's stats answer is not a JSON object")
    return {int(uid): stats for uid, stats in data.items()}
