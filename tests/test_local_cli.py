"""The README's first command: `dmc local start` brings up shards and a proxy that redis-cli
can use, `dmc local status` shows them, `dmc local stop` takes every process down."""

from __future__ import annotations

import json
import subprocess
import sys

from dmc.processes import pid_alive


def dmc(*args, workdir):
    return subprocess.run([sys.executable, "-m", "dmc.cli", "local", *args, "--workdir", str(workdir)],
                          capture_output=True, text=True, timeout=60)


def test_local_start_status_stop(tmp_path):
    work = tmp_path / "local"
    out = dmc("start", "--shards", "3", "--port", "0", workdir=work)
    try:
        assert out.returncode == 0, out.stderr
        line = out.stdout.strip().splitlines()[-1]
        assert line.startswith("redis-cli -p ")
        port = line.split()[-1]
        cli = subprocess.run(["redis-cli", "-p", port], input="SET hello world\nGET hello\nDBSIZE\n",
                             capture_output=True, text=True, timeout=20)
        assert cli.stdout.split() == ["OK", "world", "1"]
        status = dmc("status", "--json", workdir=work)
        assert status.returncode == 0
        procs = json.loads(status.stdout)["processes"]
        assert len(procs) == 4 and all(procs.values())
    finally:
        state = json.loads((work / "local.json").read_text()) if (work / "local.json").exists() else None
        stop = dmc("stop", workdir=work)
    assert stop.returncode == 0, stop.stderr
    for pid in [state["proxy_pid"]] + [s["pid"] for s in state["shards"]]:
        assert not pid_alive(pid), pid


def test_local_stop_without_a_database_is_a_one_line_error(tmp_path):
    out = dmc("stop", workdir=tmp_path / "none")
    assert out.returncode != 0
    assert out.stderr.strip() == "Error: no local database is running"
