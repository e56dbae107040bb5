"""CLIENT ... is about the proxy's own clients, answered in redis-server's shapes."""

from __future__ import annotations

import threading

import pytest
import redis
from waiting import wait_until


def test_id_setname_getname_info(db, r):
    c = db.client()
    cid = c.client_id()
    assert isinstance(cid, int) and cid > 0
    assert c.client_getname() is None
    assert c.client_setname("worker-1") is True
    assert c.client_getname() == "worker-1"
    info = c.client_info()
    assert info["id"] == cid and info["name"] == "worker-1" and info["db"] == 0
    with pytest.raises(redis.ResponseError, match="cannot contain spaces"):
        c.client_setname("bad name")
    assert db.client(protocol=3).client_getname() is None


def test_list_shows_every_client_of_the_proxy_and_filters_by_id(db, r):
    a, b = db.client(), db.client()
    a.client_setname("alpha")
    b.client_setname("beta")
    names = {entry["name"] for entry in r.client_list()}
    assert {"alpha", "beta"} <= names
    listed = r.client_list(client_id=[a.client_id()])
    assert [e["name"] for e in listed] == ["alpha"]
    assert all(e["laddr"].endswith(f":{db.port}") for e in r.client_list())


def test_kill_by_id_closes_that_client_only(db, r):
    victim = db.client()
    victim.ping()
    vid = victim.client_id()
    assert r.client_kill_filter(_id=vid) == 1
    assert r.ping()
    wait_until(lambda: vid not in {e["id"] for e in r.client_list()}, 5, what="the victim gone")


def test_unblock_ends_a_blocking_command(db, r):
    waiter = db.client()
    wid = waiter.client_id()
    got = {}

    def wait():
        try:
            got["value"] = waiter.blpop(["never"], timeout=0)
        except redis.ResponseError as exc:
            got["error"] = str(exc)

    for reason, expect in (("TIMEOUT", {"value": None}),
                           ("ERROR", {"error": "UNBLOCKED client unblocked via CLIENT UNBLOCK"})):
        got.clear()
        t = threading.Thread(target=wait)
        t.start()
        wait_until(lambda: r.client_unblock(wid, error=reason == "ERROR") == 1, 5,
                   what="the waiter blocked, then unblocked")
        t.join(5)
        assert got == expect
    assert r.client_unblock(wid) == 0
    assert waiter.set("after", 1)


def test_unknown_subcommand_error(r):
    with pytest.raises(redis.ResponseError, match="unknown subcommand"):
        r.execute_command("CLIENT", "NOPE")
