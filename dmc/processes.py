"""Processes and ports on this machine: where `redis-server` is, a port free right now,
whether a process still runs, how to stop one. Shared by the embedded local default
(dmc/local.py), the control plane's node services and the tests; no knowledge of databases.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import time

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port(host: str = "127.0.0.1", below: int = 65536) -> int:
    """A port free right now (below `below`: a cluster-enabled redis-server also binds its
    port + 10000 for the cluster bus)."""
    while True:
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port < below:
            return port


# Linux's sun_path holds 107 bytes and a NUL; supervisord binds `<path>.<pid>` before it links
# the real name, so leave room for that suffix.
UNIX_PATH_MAX = 107 - len(".4194304")
SHORT_SOCKET_DIR = "/tmp/dmc-sockets"


def unix_socket_path(wanted: os.PathLike | str) -> str:
    """`wanted` if a unix socket can be bound there, else a short name for it in
    /tmp/dmc-sockets (derived from `wanted`, so every process that asks gets the same one).
    Deep folders (a test's tmp_path under pytest-xdist, an operator's long --home) would
    otherwise make bind() fail with `AF_UNIX path too long`."""
    wanted = os.path.abspath(wanted)
    if len(wanted.encode()) <= UNIX_PATH_MAX:
        return wanted
    os.makedirs(SHORT_SOCKET_DIR, mode=0o700, exist_ok=True)
    digest = hashlib.sha256(wanted.encode()).hexdigest()[:24]
    return os.path.join(SHORT_SOCKET_DIR, f"{digest}.sock")


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 10.0,
                  proc: subprocess.Popen | None = None) -> None:
    """Until something answers PING on host:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process on port {port} exited with {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                # -NOAUTH: up, with a password set
                if s.recv(64).startswith((b"+PONG", b"-NOAUTH")):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"nothing answered on {host}:{port} within {timeout}s")


def pid_alive(pid: int) -> bool:
    """True while the process runs; a zombie (exited, not yet reaped) counts as gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def stop_process(proc_or_pid, timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after timeout; quiet if it is already gone. A process stopped with
    SIGSTOP (a test's or an operator's pause) is resumed, so that it can act on the SIGTERM."""
    if isinstance(proc_or_pid, subprocess.Popen):
        if proc_or_pid.poll() is None:
            proc_or_pid.terminate()
            proc_or_pid.send_signal(signal.SIGCONT)
            try:
                proc_or_pid.wait(timeout)
            except subprocess.TimeoutExpired:
                proc_or_pid.kill()
                proc_or_pid.wait()
        if proc_or_pid.stdout:
            proc_or_pid.stdout.close()
        return
    pid = int(proc_or_pid)
    try:
        os.kill(pid, signal.SIGTERM)
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


TERM_WAIT = 1.0       # a redis-server that SIGTERM has not ended by then is busy (a script)
KILL_GRACE = 5.0      # SIGKILL once this long has passed since SIGTERM, whatever it does


def stop_redis(pid: int, host: str | None, port: int | None, grace: float = KILL_GRACE,
               proc: subprocess.Popen | None = None) -> None:
    """Stop a redis-server and wait until it is gone. SIGTERM first (it writes what it persists
    and exits); one still there after TERM_WAIT is busy — a script or function that never ends
    ignores SIGTERM — so it is sent SCRIPT KILL and FUNCTION KILL (its pending shutdown then
    happens) and, if it is still there (a script that wrote cannot be killed), SHUTDOWN
    NOSAVE, as Redis's own busy-script reply advises; SIGKILL `grace` seconds after SIGTERM."""
    def alive() -> bool:
        return proc.poll() is None if proc is not None else pid_alive(pid)

    def wait(until: float) -> bool:
        while time.monotonic() < until:
            if not alive():
                return True
            time.sleep(0.02)
        return not alive()

    start = time.monotonic()
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if wait(start + min(TERM_WAIT, grace)):
        return
    if host and port:
        for commands in ((b"SCRIPT KILL", b"FUNCTION KILL"), (b"SHUTDOWN NOSAVE",)):
            _send(host, port, commands)
            if wait(min(time.monotonic() + 0.5, start + grace)):
                return
    if not wait(start + grace):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        wait(time.monotonic() + 5.0)
    if proc is not None:
        proc.wait()


def _send(host: str, port: int, commands) -> None:
    """Inline commands to a redis-server, their replies read and dropped; it may be gone."""
    try:
        with socket.create_connection((host, port), timeout=0.5) as s:
            s.sendall(b"".join(c + b"\r\n" for c in commands))
            s.recv(4096)
    except OSError:
        pass


def processes_under(folder) -> list[int]:
    """Live processes whose command line names something in `folder` (or that run in it):
    what is left of a cluster's or a node's processes."""
    folder = os.path.realpath(folder)
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace").split("\0")
            cwd = os.readlink(f"/proc/{name}/cwd")
        except OSError:
            continue
        if (any(a.startswith(folder + os.sep) or a == folder for a in argv) or
                cwd == folder or cwd.startswith(folder + os.sep)) and pid_alive(int(name)):
            found.append(int(name))
    return sorted(found)
