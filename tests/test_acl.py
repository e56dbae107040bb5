"""ACL users through a 3-shard endpoint (issue 17's users, issue 12's `scripting` unit): each
scenario run against one plain redis-server with the same ACL and through dmcproxy, the answers
compared. The shards enforce the rights: NOPERM, ACL LOG and redis.acl_check_cmd are Redis's."""

from __future__ import annotations

import time

import pytest

from replies import Error, RespConn, on_both
from waiting import wait_until

from control.node_proxy import HOLD_MS
from dmc.endpoint import Endpoint

USERS = ("alice", "bob", "carol", "dave", "erin")


def port_of(client) -> int:
    return client.connection_pool.connection_kwargs["port"]


@pytest.fixture
def ports(db, ref):
    """{"redis": the plain redis-server, "dmc": the 3-shard endpoint}; the test's users are
    deleted from both afterwards."""
    both = {"redis": port_of(ref), "dmc": db.port}
    yield both
    for port in both.values():
        admin = RespConn(port)
        admin.call("ACL", "DELUSER", *USERS)
        admin.call("ACL", "LOG", "RESET")
        admin.close()


def setuser(conn, name, *rules):
    assert conn.call("ACL", "SETUSER", name, "reset", *rules) == b"OK"


def test_auth_as_a_user_runs_as_it(ports, conns, db):
    def run(port):
        setuser(conns(port), "alice", "on", ">secret", "~*", "&*", "+@all")
        c = conns(port)
        info = c.call("AUTH", "alice", "secret"), c.call("ACL", "WHOAMI")
        user_field = [f for f in c.call("CLIENT", "INFO").split() if f.startswith(b"user=")]
        return info + (user_field,)

    want, got = on_both(ports, run)
    assert got == want == (b"OK", b"alice", [b"user=alice"])


def test_wrong_password_unknown_user_and_disabled_user_are_wrongpass(ports, conns):
    def run(port):
        admin = conns(port)
        setuser(admin, "alice", "on", ">secret", "+@all", "~*")
        setuser(admin, "bob", "off", ">secret", "+@all", "~*")
        c = conns(port)
        return [c.call("AUTH", "alice", "wrong"), c.call("AUTH", "nosuchuser", "x"),
                c.call("AUTH", "bob", "secret"), c.call("ACL", "WHOAMI"),
                c.call("HELLO", "3", "AUTH", "alice", "wrong")]

    want, got = on_both(ports, run)
    assert got == want
    assert want[0].startswith(b"WRONGPASS") and want[3] == b"default"


def test_hello_auth_switches_user_and_protocol(ports, conns):
    def run(port):
        setuser(conns(port), "alice", "on", ">secret", "~*", "&*", "+@all")
        c = conns(port)
        hello = c.call("HELLO", "3", "AUTH", "alice", "secret")
        return hello[b"proto"], c.call("ACL", "WHOAMI"), c.call("HGETALL", "nokey")

    want, got = on_both(ports, run)
    assert got == want == (3, b"alice", {})


def test_a_command_the_user_may_not_run_is_noperm_on_every_shard(ports, conns, db):
    keys = db.keys_on_every_shard("k")

    def run(port):
        setuser(conns(port), "bob", "on", ">pw", "~*", "+@read", "+auth")
        c = conns(port)
        assert c.call("AUTH", "bob", "pw") == b"OK"
        return [(c.call("SET", k, "v"), c.call("GET", k)) for k in keys]

    want, got = on_both(ports, run)
    assert got == want
    assert all(isinstance(e, Error) and e.startswith(b"NOPERM") for e, _ in want)


def test_a_key_outside_the_users_patterns_is_noperm(ports, conns, db):
    allowed, denied = db.keys_on_every_shard("allowed:"), db.keys_on_every_shard("other:")

    def run(port):
        setuser(conns(port), "carol", "on", ">pw", "~allowed:*", "+@all")
        c = conns(port)
        assert c.call("AUTH", "carol", "pw") == b"OK"
        return ([c.call("SET", k, "v") for k in allowed], [c.call("GET", k) for k in denied],
                c.call("MGET", *allowed), c.call("MGET", allowed[0], denied[1]),
                c.call("BLPOP", denied[0], "0.01"), c.call("WATCH", denied[2]))

    want, got = on_both(ports, run)
    assert got == want
    assert want[0] == [b"OK"] * 3 and all(e.startswith(b"NOPERM") for e in want[1])


def test_a_channel_outside_the_users_patterns_is_noperm(ports, conns):
    def run(port):
        setuser(conns(port), "dave", "on", ">pw", "~*", "&news.*", "+@all")
        c = conns(port)
        assert c.call("AUTH", "dave", "pw") == b"OK"
        denied = c.call("PUBLISH", "sports", "x"), c.call("SUBSCRIBE", "sports")
        subscribed = c.call("SUBSCRIBE", "news.1")
        return denied + (subscribed,)

    want, got = on_both(ports, run)
    assert got == want
    assert want[0].startswith(b"NOPERM") and want[2] == [b"subscribe", b"news.1", 1]


def test_acl_changes_reach_every_shard_and_acl_list_is_redis(ports, conns, db):
    def run(port):
        admin = conns(port)
        setuser(admin, "alice", "on", ">secret", "~a:*", "&chan", "+get", "+@list")
        setuser(admin, "bob", "off", "nopass", "+@all", "-flushall")
        admin.call("ACL", "DELUSER", "bob")
        return admin.call("ACL", "LIST"), admin.call("ACL", "GETUSER", "alice"), \
            admin.call("ACL", "USERS")

    want, got = on_both(ports, run)
    assert got == want
    for i in range(len(db.shard_ports)):
        assert RespConn(db.shard_ports[i]).call("ACL", "LIST") == want[0]


def test_acl_setuser_of_default_is_refused_through_the_endpoint(db, conns):
    reply = conns(db.port).call("ACL", "SETUSER", "default", "resetpass")
    assert isinstance(reply, Error) and b"database password" in reply
    for port in db.shard_ports:
        assert b"user default on nopass ~* &* +@all" in RespConn(port).call("ACL", "LIST")


def test_deluser_disconnects_the_users_clients(ports, conns):
    def run(port):
        admin = conns(port)
        setuser(admin, "erin", "on", ">pw", "~*", "&*", "+@all")
        victim, self_deleter = conns(port), conns(port)
        assert victim.call("AUTH", "erin", "pw") == b"OK"
        assert self_deleter.call("AUTH", "erin", "pw") == b"OK"
        answers = [self_deleter.call("ACL", "DELUSER", "erin")]
        for c in (victim, self_deleter):
            try:
                answers.append(c.call("PING"))
            except (ConnectionError, OSError):
                answers.append("closed")
        answers.append(conns(port).call("AUTH", "erin", "pw"))
        return answers

    want, got = on_both(ports, run)
    assert got == want
    assert want[:3] == [1, "closed", "closed"] and want[3].startswith(b"WRONGPASS")


def test_acl_log_has_the_denials_of_every_shard(ports, conns, db):
    keys = db.keys_on_every_shard("logged:")

    def run(port):
        setuser(conns(port), "carol", "on", ">pw", "~allowed:*", "+@all")
        c = conns(port)
        assert c.call("AUTH", "carol", "pw") == b"OK"
        for k in keys:
            assert c.call("GET", k).startswith(b"NOPERM")
        setuser(conns(port), "bob", "on", ">pw", "~*", "+@read")
        b = conns(port)
        assert b.call("AUTH", "bob", "pw") == b"OK"
        for k in keys:      # one denial of SET on each shard: one entry of count 3 in Redis
            assert b.call("SET", k, "v").startswith(b"NOPERM")
        c.call("AUTH", "carol", "wrong")
        entries = [dict(zip(e[::2], e[1::2])) for e in conns(port).call("ACL", "LOG")]
        return [(e[b"reason"], e[b"object"], e[b"username"], e[b"count"]) for e in entries]

    want, got = on_both(ports, run)
    assert sorted(got) == sorted(want)
    assert len(want) == len(keys) + 2 and (b"command", b"set", b"bob", 3) in want
    # Newest first, as Redis: the failed AUTH came last.
    assert got[0][0] == want[0][0] == b"auth"


def test_script_acl_check_as_in_the_scripting_suite(ports, conns):
    def run(port):
        setuser(conns(port), "bob", "on", ">123", "+@scripting", "+set", "~x*")
        c = conns(port)
        return [c.call("AUTH", "bob", "123"),
                c.call("EVAL", "return redis.acl_check_cmd('set','xx',1)", "1", "xx"),
                c.call("EVAL", "return redis.acl_check_cmd('hset','xx','f',1)", "1", "xx"),
                c.call("EVAL", "return redis.acl_check_cmd('set','yy',1)", "0"),
                c.call("EVAL", "return redis.acl_check_cmd('invalid-cmd','arg')", "0")]

    want, got = on_both(ports, run)
    assert got == want
    assert want[1:4] == [1, None, None]


def test_multi_exec_and_wait_run_as_the_user(ports, conns):
    def run(port):
        admin = conns(port)
        setuser(admin, "alice", "on", ">pw", "~allowed:*", "&*", "+@all")
        setuser(admin, "bob", "on", ">pw", "~allowed:*", "&*", "+@all", "-wait")
        alice, bob = conns(port), conns(port)
        assert alice.call("AUTH", "alice", "pw") == bob.call("AUTH", "bob", "pw") == b"OK"
        alice.call("MULTI")
        queued = alice.call("SET", "allowed:{t}a", "v"), alice.call("INCR", "allowed:{t}b")
        return (queued, alice.call("EXEC"), alice.call("WAIT", "0", "100"),
                bob.call("SET", "allowed:{t}c", "v"), bob.call("WAIT", "0", "100"),
                alice.call("GET", "allowed:{t}a"))

    want, got = on_both(ports, run)
    assert got == want
    assert want[1] == [b"OK", 1] and want[2] == 0 and want[4].startswith(b"NOPERM")


def test_user_connections_go_once_no_client_is_that_user(db, ports, conns):
    admin = conns(db.port)
    setuser(admin, "alice", "on", ">pw", "~*", "+@all")
    c = RespConn(db.port)
    assert c.call("AUTH", "alice", "pw") == b"OK"
    for k in db.keys_on_every_shard("gone"):
        c.call("GET", k)

    def alice_conns():
        return sum(RespConn(p).call("CLIENT", "LIST").count(b"user=alice ") for p in db.shard_ports)

    assert alice_conns() == 3
    c.close()
    wait_until(lambda: alice_conns() == 0, timeout=5)


@pytest.fixture(scope="module")
def held(db):
    """An endpoint over db's shards that holds requests for a shard it saw fail (hold_ms, as
    a cluster database with replication does): a shard suspected wrongly shows as a wait."""
    ep = Endpoint("127.0.0.1", 0, None, db.shard_map, hold_ms=HOLD_MS).start()
    yield ep
    ep.stop()


def user_conns(ports, name: str) -> int:
    """Connections of user `name` on the servers of ports (CLIENT LIST USER)."""
    total = 0
    for p in ports:
        c = RespConn(p)
        listed = c.call("CLIENT", "LIST", "USER", name)
        c.close()
        total += 0 if isinstance(listed, Error) else listed.count(b"user=" + name.encode())
    return total


def test_a_users_last_client_leaving_leaves_every_shard_serving_the_others(ports, conns, db,
                                                                              held):
    """The scripting unit's `Script ACL check`, then the next unit's set-up: a client of bob
    uses every shard and leaves, and the proxy closes bob's shard connections. One
    redis-server serves the next client at once; the endpoint took those closes for shard
    failures and held that client's FLUSHALL for its hold time, then answered 'unavailable'."""
    keys = db.keys_on_every_shard("x")
    servers = {"redis": [ports["redis"]], "dmc": db.shard_ports}

    def run(target, port):
        setuser(conns(port), "bob", "on", ">123", "+@scripting", "+set", "~x*")
        bob = RespConn(port)
        replies = [bob.call("AUTH", "bob", "123"), bob.call("FUNCTION", "LOAD", "REPLACE",
                   "#!lua name=acltest\nredis.register_function('f', function() return 1 end)")]
        replies += [bob.call("SET", k, "1") for k in keys]
        bob.close()
        wait_until(lambda: user_conns(servers[target], "bob") == 0, timeout=5,
                   what="bob's connections closed")
        other = conns(port)
        began = time.monotonic()
        replies += [other.call("FLUSHALL"), other.call("FUNCTION", "FLUSH")]
        replies += [other.call("SET", k, "2") for k in keys]
        return replies, time.monotonic() - began

    (want, _), (got, took) = run("redis", ports["redis"]), run("dmc", held.port)
    assert got == want
    assert want[:2] == [b"OK", b"acltest"] and want[-3:] == [b"OK"] * 3
    assert took < 1.0, f"the other client waited {took:.1f} s"


def test_auth_inside_multi_is_refused_and_changes_no_shared_connection(db, ports, conns):
    """A documented difference: Redis runs AUTH queued in a transaction at EXEC; through the
    proxy the transaction runs on a connection other clients share, so it is refused."""
    admin = conns(db.port)
    setuser(admin, "alice", "on", ">pw", "~nothing", "+@all")
    c = conns(db.port)
    assert c.call("MULTI") == b"OK"
    refused = c.call("AUTH", "alice", "pw")
    assert isinstance(refused, Error) and b"inside MULTI" in refused
    assert c.call("EXEC").startswith(b"EXECABORT")
    for k in db.keys_on_every_shard("shared"):
        assert c.call("SET", k, "v") == b"OK"
    assert c.call("ACL", "WHOAMI") == b"default"


def test_default_mode_tracking_is_refused_to_a_user_bcast_is_not(db, ports, conns):
    """A documented difference: a user's reads run on its own connections, which the shards do
    not track for the proxy."""
    setuser(conns(db.port), "alice", "on", ">pw", "~*", "&*", "+@all")
    c = conns(db.port)
    assert c.call("HELLO", "3", "AUTH", "alice", "pw")[b"proto"] == 3
    refused = c.call("CLIENT", "TRACKING", "on")
    assert isinstance(refused, Error) and b"BCAST" in refused
    assert c.call("CLIENT", "TRACKING", "on", "BCAST") == b"OK"
