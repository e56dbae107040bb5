"""Data-path internode encryption (DPINE): dmcproxy's connections to its shards over TLS
(dmc/fastpath/tls.pxi, the backends' client side), against real redis-servers that serve only
a tls-port with `tls-auth-clients yes`: commands, a pipeline, MULTI/EXEC, a 1 MB value and
pub/sub through TLS shards, a shard with a foreign certificate refused. Then ONE cluster test:
a replicated database with `data_internode_encryption` on, created through REST."""

from __future__ import annotations

import os
import signal
import socket
import stat

import pytest
import redis
from click.testing import CliRunner
from clusters import DATABASE_SERVICES, rest_client, rest_cluster
from test_client_tls import write_pair
from waiting import wait_until

from control import certificates
from control.cli import main
from dmc.local import start_redis, start_proxy
from dmc.processes import free_port, stop_process

pytestmark = pytest.mark.timeout(120)

HOST = "127.0.0.1"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a certificate for the shards and one for the proxy (both signed by it), and a
    shard certificate of a foreign CA."""
    folder = tmp_path_factory.mktemp("pki")
    ca = certificates.make_ca("dpine.test")
    foreign = certificates.make_ca("foreign.test")
    (folder / "ca.pem").write_bytes(ca.certificate)
    return {"ca": str(folder / "ca.pem"),
            "shard": write_pair(folder, "shard", certificates.issue(ca, 1, HOST, "dpine.test")),
            "proxy": write_pair(folder, "proxy", certificates.issue(ca, 2, HOST, "dpine.test")),
            "foreign": write_pair(folder, "foreign",
                                  certificates.issue(foreign, 3, HOST, "foreign.test"))}


def tls_shard_args(pki, tls_port: int, pair: str = "shard") -> list[str]:
    cert, key = pki[pair]
    return ["--tls-port", str(tls_port), "--tls-cert-file", cert, "--tls-key-file", key,
            "--tls-ca-cert-file", pki["ca"], "--tls-auth-clients", "yes"]


@pytest.fixture(scope="module")
def tls_shards(pki, tmp_path_factory):
    """Two redis-servers, each with a tls-port (client certificates required): [tls port].
    Their plain ports are there only for start_redis's wait."""
    workdir = tmp_path_factory.mktemp("tls-shards")
    started = []
    try:
        for _ in range(2):
            tls_port = free_port()
            started.append((tls_port, start_redis(free_port(), workdir,
                                                  *tls_shard_args(pki, tls_port))))
        yield [tls_port for tls_port, _ in started]
    finally:
        for _, proc in started:
            stop_process(proc)


def shard_tls_args(pki) -> list[str]:
    cert, key = pki["proxy"]
    return ["--shard-tls", "--shard-tls-ca-cert-file", pki["ca"],
            "--shard-tls-cert-file", cert, "--shard-tls-key-file", key]


@pytest.fixture(scope="module")
def dpine_proxy(tls_shards, pki, tmp_path_factory):
    proc, port = start_proxy([(HOST, p) for p in tls_shards], 0,
                             tmp_path_factory.mktemp("proxy"), *shard_tls_args(pki))
    try:
        yield proc, port
    finally:
        stop_process(proc)


@pytest.fixture
def client(dpine_proxy):
    c = redis.Redis(host=HOST, port=dpine_proxy[1], socket_timeout=10)
    yield c
    c.close()


def test_commands_through_tls_shards(client):
    keys = [f"dpine:{i}" for i in range(50)]      # over both shards
    for k in keys:
        assert client.set(k, k) is True
    assert client.mget(keys) == [k.encode() for k in keys]
    assert client.delete(*keys) == 50


def test_pipeline_through_tls_shards(client):
    pipe = client.pipeline(transaction=False)
    for i in range(1000):
        pipe.incr("pipe:a").incr("pipe:b")      # (two shards)
    assert pipe.execute() == [n for n in range(1, 1001) for _ in range(2)]


def test_multi_exec_through_tls_shards(client):
    pipe = client.pipeline(transaction=True)
    pipe.set("{tx}a", "1").incr("{tx}a").get("{tx}a")
    assert pipe.execute() == [True, 2, b"2"]


def test_large_value_through_tls_shards(client):
    value = bytes(range(256)) * 4096        # 1 MB: many TLS records each way
    assert client.set("big", value) is True
    assert client.get("big") == value
    assert client.strlen("big") == len(value)


def test_pubsub_through_tls_shards(dpine_proxy, client):
    sub = redis.Redis(host=HOST, port=dpine_proxy[1], socket_timeout=10).pubsub()
    try:
        sub.subscribe("news")
        assert sub.get_message(timeout=5)["type"] == "subscribe"
        wait_until(lambda: client.publish("news", "over tls") == 1, timeout=10)
        message = sub.get_message(timeout=5)
        assert message["type"] == "message" and message["data"] == b"over tls"
    finally:
        sub.close()


def test_shard_with_foreign_certificate_is_refused(pki, tmp_path):
    """The shard's certificate must verify against the proxy's CA: a shard whose certificate a
    foreign CA signed gets no command; the proxy answers with a clear error."""
    tls_port = free_port()
    shard = start_redis(free_port(), tmp_path, *tls_shard_args(pki, tls_port, "foreign"))
    try:
        # The blocking COMMAND connection made at start is refused too: the proxy does not start.
        config = tmp_path / "proxy.toml"
        config.write_text("wait_shards_s = 1.0\n")
        with pytest.raises(RuntimeError, match="did not start"):
            start_proxy([(HOST, tls_port)], 0, tmp_path, "--config", str(config),
                        *shard_tls_args(pki))
        assert "certificate verify failed" in (tmp_path / "dmcproxy.log").read_text()
    finally:
        stop_process(shard)


def test_plaintext_proxy_on_tls_port_gets_no_reply(tls_shards):
    """Plaintext RESP on a shard's TLS port is not served (the TLS server closes it)."""
    with socket.create_connection((HOST, tls_shards[0]), timeout=5) as sock:
        sock.sendall(b"PING\r\n")
        data = b""
        try:
            while chunk := sock.recv(4096):
                data += chunk
        except (ConnectionResetError, TimeoutError):
            pass
        assert b"PONG" not in data


def test_shard_link_is_chosen_by_the_shard_record_and_its_database(tmp_path):
    """control/shard_link.py: a shard of this node on its unix socket (its plain port while it
    has none), one of another node on its tls-port with this node's `cp` certificate when
    the database has DPINE, else on its plain port."""
    from control import schema, shard_link
    from control.node import NodeConfig
    config = NodeConfig(uid=1, address="127.0.3.1", home=str(tmp_path), ccs_port=1,
                        gossip_port=2, ccs_forward_port=3)
    nodes = {2: {"address": "127.0.3.2"}}
    here = schema.Shard(uid=5, bdb_uid=1, node_uid=1, role="master", port=20001, tls_port=20002,
                        slots=[[0, 16383]])
    there = schema.Shard(uid=6, bdb_uid=1, node_uid=2, role="replica", port=20003,
                         tls_port=20004, slots=[[0, 16383]])
    plain_db = schema.Bdb(uid=1)
    dpine_db = schema.Bdb(uid=1, data_internode_encryption=True)
    assert shard_link.link(config, here, dpine_db, nodes).unix_path is None    # no socket yet
    socket_file = shard_link.socket_path(config.shards_dir, 5)
    socket_file.parent.mkdir(parents=True)
    socket_file.touch()
    local = shard_link.link(config, here, dpine_db, nodes)
    assert local.unix_path == str(socket_file) and local.cli_args() == ["-s", str(socket_file)]
    remote = shard_link.link(config, there, dpine_db, nodes)
    assert (remote.host, remote.port, remote.tls_dir) == ("127.0.3.2", 20004, tmp_path)
    assert remote.cli_args()[:5] == ["-h", "127.0.3.2", "-p", "20004", "--tls"]
    clear = shard_link.link(config, there, plain_db, nodes)
    assert (clear.host, clear.port, clear.tls_dir) == ("127.0.3.2", 20003, None)


# ---- one cluster, through REST ----------------------------------------------------------------

CLUSTER_ADDRESS = "127.0.1.71"      # other modules' clusters use other addresses


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with rest_cluster(tmp_path_factory.mktemp("dpine") / "cluster", CLUSTER_ADDRESS,
                      timeout=120, services=DATABASE_SERVICES) as c:
        yield c


def shards_of(api, bdb_uid: int) -> dict[str, dict]:
    shards = [s for s in api.get("/v1/shards").json() if s["bdb_uid"] == bdb_uid]
    return {s["role"]: s for s in shards}


def tls_to_shard(cluster, shard: dict) -> redis.Redis:
    """A connection to the shard's tls-port, with a certificate the cluster CA signed."""
    node = cluster.nodes[shard["node_uid"]]
    return redis.Redis(node.address, shard["tls_port"], ssl=True, socket_timeout=5,
                       ssl_ca_certs=str(certificates.ca_file(node.dir)), ssl_check_hostname=False,
                       ssl_certfile=str(node.dir / "certs" / "cp.pem"),
                       ssl_keyfile=str(node.dir / "certs" / "cp.key"))


def replicated_with_100_keys(cluster, api, name: str, **settings) -> tuple[int, redis.Redis]:
    """A replicated database created through REST (with `settings`), k0..k99 written through
    node 1's endpoint: its uid and that endpoint."""
    reply = api.post("/v1/bdbs", json={"name": name, "replication": True,
                                       "memory_size": 32 << 20, **settings})
    assert reply.status_code == 200, reply.text
    wait_until(lambda: api.get(f"/v1/actions/{reply.json()['action_uid']}").json()["status"]
               == "completed", 90, what="bdb_create")
    endpoint = redis.Redis(cluster.nodes[1].address, reply.json()["port"], socket_timeout=5)
    wait_until(lambda: endpoint.set("k0", "v0"), 30, what="the endpoint",
               ignoring=(redis.ConnectionError, redis.ResponseError))
    for i in range(100):
        assert endpoint.set(f"k{i}", f"v{i}")
    return reply.json()["uid"], endpoint


def port_closed(cluster, shard: dict, which: str) -> bool:
    """The shard's `which` port ("port", "tls_port") refuses connections."""
    try:
        socket.create_connection((cluster.nodes[shard["node_uid"]].address, shard[which]),
                                 1).close()
        return False
    except ConnectionRefusedError:
        return True


@pytest.mark.timeout(240)
def test_replicated_database_with_data_internode_encryption(cluster):
    """POST /v1/bdbs with data_internode_encryption: the endpoint serves writes through the
    shards' tls-ports, the replica follows its master over TLS (INFO replication), plaintext
    on a shard's tls-port is refused, and a failover (the master killed) keeps serving; then
    `dmc db update --no-data-internode-encryption` switches it off without a restart."""
    api = rest_client(cluster, timeout=30)
    uid, endpoint = replicated_with_100_keys(cluster, api, "dpine",
                                             data_internode_encryption=True)
    assert api.get(f"/v1/bdbs/{uid}").json()["data_internode_encryption"] is True
    shards = shards_of(api, uid)
    master, replica = shards["master"], shards["replica"]
    assert master["tls_port"] and master["tls_port"] != master["port"]

    # The proxy reaches the master over TLS: besides this test's own connection and the
    # replica's, clients on the master's tls-port (CLIENT LIST's laddr).
    on_master = tls_to_shard(cluster, master)
    mine = on_master.client_id()
    proxies = [c for c in on_master.client_list() if c["id"] != str(mine)
               and "S" not in c["flags"] and c["laddr"].endswith(f":{master['tls_port']}")]
    assert proxies, on_master.client_list()
    # The replica follows the master's tls-port, in sync.
    on_replica = tls_to_shard(cluster, replica)
    wait_until(lambda: on_replica.info("replication")["master_link_status"] == "up", 30,
               what="the replica's link")
    assert on_replica.info("replication")["master_port"] == master["tls_port"]
    assert wait_until(lambda: on_replica.get("k99"), 10, what="the write on the replica") == b"v99"

    # Plaintext on the tls-port is refused, and the plain port is closed (port 0): the node's
    # own services reach the shard on its unix socket (mode 0700), other nodes over TLS.
    node = cluster.nodes[master["node_uid"]]
    with pytest.raises(redis.ConnectionError):
        redis.Redis(node.address, master["tls_port"], socket_timeout=5).ping()
    for shard, conn in ((master, on_master), (replica, on_replica)):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((cluster.nodes[shard["node_uid"]].address, shard["port"]), 2)
        assert conn.config_get("port") == {"port": "0"}
        sock = cluster.nodes[shard["node_uid"]].dir / "shards" / str(shard["uid"]) / "redis.sock"
        assert stat.S_IMODE(sock.stat().st_mode) == 0o700
    # redis_mgr (on the socket) saw the replica synced: a failover may promote it.
    wait_until(lambda: api.get(f"/v1/shards/{replica['uid']}").json().get("synced"), 30,
               what="the replica reported synced")

    # A backup reads a shard with redis-cli --rdb: over its unix socket or, from another
    # node, its tls-port with the node's certificate.
    backup = api.post(f"/v1/bdbs/{uid}/actions/backup")
    assert backup.status_code == 200, backup.text
    done = wait_until(lambda: (a := api.get(f"/v1/actions/{backup.json()['action_uid']}")
                               .json())["status"] in ("completed", "failed") and a, 60,
                      what="the backup")
    assert done["status"] == "completed", done
    assert api.get(f"/v1/bdbs/{uid}/backups").json()[-1]["keys"] == 100

    # Failover: the master killed, the replica takes over, the endpoint keeps serving.
    os.kill(master["pid"], signal.SIGKILL)
    wait_until(lambda: api.get(f"/v1/shards/{replica['uid']}").json()["role"] == "master", 30,
               0.05, "the failover")
    assert wait_until(lambda: endpoint.get("k42"), 30, what="reads after the failover",
                      ignoring=(redis.ConnectionError, redis.ResponseError)) == b"v42"
    assert endpoint.set("after", "failover") and endpoint.get("after") == b"failover"

    # Switched off with the CLI: CONFIG SET on the running shards (the tls-port closes), the
    # endpoint back on the plain ports, the data still there.
    result = CliRunner().invoke(main, ["db", "update", "dpine", "--no-data-internode-encryption",
                                       "--home", str(cluster.home)])
    assert result.exit_code == 0, result.output
    assert api.get(f"/v1/bdbs/{uid}").json()["data_internode_encryption"] is False
    wait_until(lambda: port_closed(cluster, replica, "tls_port"), 30,
               what="the tls-port closed")
    assert wait_until(lambda: endpoint.get("after"), 30, what="the endpoint over plain shards",
                      ignoring=(redis.ConnectionError, redis.ResponseError)) == b"failover"




@pytest.mark.timeout(240)
def test_data_internode_encryption_switched_on_for_a_running_database(cluster):
    """`dmc db update --data-internode-encryption` on a running replicated database: its
    shards are reconfigured in place (CONFIG SET: the same processes, their plain ports
    closed), the data written before is read through the endpoint, which now reaches the
    shards over their tls-ports, and the replica follows its master's tls-port."""
    api = rest_client(cluster, timeout=30)
    uid, endpoint = replicated_with_100_keys(cluster, api, "later")
    before = shards_of(api, uid)
    master, replica = before["master"], before["replica"]
    assert not any(port_closed(cluster, s, "port") for s in (master, replica))

    result = CliRunner().invoke(main, ["db", "update", "later", "--data-internode-encryption",
                                       "--home", str(cluster.home)])
    assert result.exit_code == 0, result.output
    assert api.get(f"/v1/bdbs/{uid}").json()["data_internode_encryption"] is True
    wait_until(lambda: all(port_closed(cluster, s, "port") for s in (master, replica)), 30,
               what="the shards' plain ports closed")
    assert wait_until(lambda: endpoint.get("k99"), 30, what="the endpoint over TLS shards",
                      ignoring=(redis.ConnectionError, redis.ResponseError)) == b"v99"
    assert [endpoint.get(f"k{i}") for i in range(100)] == [f"v{i}".encode() for i in range(100)]
    after = shards_of(api, uid)
    assert {r: s["pid"] for r, s in after.items()} == {r: s["pid"] for r, s in before.items()}

    # The proxy's connections arrive on the master's tls-port (the plain port is closed), and
    # so does the replica's, which follows it with tls-replication.
    on_master = tls_to_shard(cluster, master)
    mine = on_master.client_id()
    clients = [c for c in on_master.client_list() if c["id"] != str(mine)]
    assert any("S" not in c["flags"] and c["laddr"].endswith(f":{master['tls_port']}")
               for c in clients), clients
    on_replica = tls_to_shard(cluster, replica)
    wait_until(lambda: (i := on_replica.info("replication"))["master_link_status"] == "up"
               and i["master_port"] == master["tls_port"], 30,
               what="the replica following the master's tls-port")
    assert [c["laddr"] for c in on_master.client_list() if "S" in c["flags"]] == [
        f"{cluster.nodes[master['node_uid']].address}:{master['tls_port']}"]
    assert endpoint.set("after", "dpine")
    assert wait_until(lambda: on_replica.get("after"), 10, what="the write on the replica") \
        == b"dpine"
