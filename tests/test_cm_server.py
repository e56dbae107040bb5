"""cm_server without a cluster: its sessions, its origin check, the log-in page, and HTTPS with
a node's certificate (a real cm_server on loopback whose REST API does not answer: the log-in
then says so). The UI against a real cluster, in a browser, is tests/test_ui.py."""

from __future__ import annotations

import socket
import ssl
import threading

import httpx
import pytest
import trio
from certs import self_signed
from starlette.requests import Request
from waiting import wait_until

from control import cm_server, tls
from control.node import NodeConfig
from dmc.processes import free_port


def test_a_session_ends_after_its_idle_time_and_the_oldest_goes_first(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(cm_server.time, "monotonic", lambda: now[0])
    sessions = cm_server.Sessions(idle=60, limit=2)
    first, _ = sessions.open("admin", "pw")
    now[0] += 10
    second, _ = sessions.open("admin", "pw")
    now[0] += 5
    assert sessions.get(first).username == "admin"       # seen: its idle time starts again
    now[0] += 5
    third, _ = sessions.open("admin", "pw")              # over the limit: `second` goes
    assert sessions.get(second) is None and sessions.get(first) and sessions.get(third)
    now[0] += 61
    assert sessions.get(first) is None and sessions.get(third) is None
    assert sessions.get(None) is None and sessions.get("made-up") is None


def test_sessions_of_credentials_no_longer_accepted_are_closed():
    sessions = cm_server.Sessions()
    old, _ = sessions.open("admin", "old")
    new, _ = sessions.open("admin", "new")
    sessions.close_user("admin", "old")
    assert sessions.get(old) is None and sessions.get(new) is not None


def _request(headers: dict, host="127.0.0.1:8443", scheme="http") -> Request:
    return Request({"type": "http", "method": "POST", "path": "/x", "scheme": scheme,
                    "server": tuple(host.split(":")), "query_string": b"",
                    "headers": [(b"host", host.encode())] + [
                        (k.lower().encode(), v.encode()) for k, v in headers.items()]})


@pytest.mark.parametrize("headers, same", [
    ({}, True),
    ({"Origin": "http://127.0.0.1:8443"}, True),
    ({"Referer": "http://127.0.0.1:8443/#/databases"}, True),
    ({"Origin": "http://127.0.0.1:9999"}, False),
    ({"Origin": "https://127.0.0.1:8443"}, False),
    ({"Origin": "null"}, False),
    ({"Origin": "http://evil.example"}, False),
])
def test_same_origin(headers, same):
    assert cm_server.same_origin(_request(headers)) is same


def test_the_log_in_page_escapes_what_it_shows_back():
    page = cm_server.login_page('"><script>', "bad <b>", '<img src=x>')
    assert "<script>" not in page and "<img" not in page and "<b>" not in page
    assert 'type="password"' in page and 'name="username"' in page


@pytest.fixture
def certificate(tmp_path):
    return self_signed(tmp_path, "127.0.0.1", "ui")


def _nothing_listens() -> int:
    """A port of 127.0.0.1 where nothing listens (the REST API that does not answer)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_https_with_the_node_certificate(tmp_path, certificate):
    config = NodeConfig(uid=1, address="127.0.0.1", home=str(tmp_path), ccs_port=1,
                        gossip_port=2, ccs_forward_port=3, rest_port=_nothing_listens(),
                        ui_port=free_port("127.0.0.1"), ui_certfile=certificate[0],
                        ui_keyfile=certificate[1])
    server = cm_server.CmServer(config)
    url = cm_server.ui_url(config)
    assert url.startswith("https://")
    stop = threading.Event()

    async def serve():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.run)
            while not stop.is_set():
                await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
    thread = threading.Thread(target=trio.run, args=(serve,))
    thread.start()
    try:
        with httpx.Client(base_url=url, timeout=5,
                          verify=ssl.create_default_context(cafile=certificate[0])) as client:
            page = wait_until(lambda: client.get("/login"), 20, 0.1, "cm_server on HTTPS",
                              ignoring=(httpx.TransportError,))
            assert page.status_code == 200
            cookie = page.headers["set-cookie"]
            assert "Secure" in cookie and "HttpOnly" in cookie and "samesite=strict" in \
                cookie.lower()
            token = client.cookies[cm_server.LOGIN_COOKIE]
            reply = client.post("/login", data={"csrf_token": token, "username": "admin",
                                                "password": "x"}, headers={"Origin": url[:-1]})
            assert reply.status_code == 503 and "does not answer" in reply.text
            assert client.get("/", follow_redirects=False).headers["location"] == "/login"
        with pytest.raises(httpx.TransportError):     # plain HTTP gets no answer there
            httpx.get(url.replace("https", "http") + "login", timeout=2)
    finally:
        stop.set()
        thread.join(10)


def test_a_log_in_form_larger_than_a_user_and_a_password_is_refused(tmp_path):
    config = NodeConfig(uid=1, address="127.0.0.1", home=str(tmp_path), ccs_port=1,
                        gossip_port=2, ccs_forward_port=3)
    app = cm_server.CmServer(config).app

    async def ask():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app),
                                     base_url="http://127.0.0.1") as client:
            token = (await client.get("/login")).cookies[cm_server.LOGIN_COOKIE]
            big = await client.post("/login", content=f"csrf_token={token}&username=admin&"
                                    "password=" + "x" * cm_server.MAX_LOGIN_FORM, headers={
                                        "content-type": "application/x-www-form-urlencoded"})
            forged = await client.post("/login", data={"csrf_token": "forged",
                                                       "username": "admin", "password": "x"})
            return big, forged
    big, forged = trio.run(ask)
    assert big.status_code == 413
    assert forged.status_code == 403 and "expired" in forged.text


def test_the_rest_api_is_asked_over_https_when_its_http_port_is_off(tmp_path, certificate):
    config = NodeConfig(uid=1, address="127.0.0.1", home=str(tmp_path), ccs_port=1,
                        gossip_port=2, ccs_forward_port=3, rest_port=8080, rest_tls_port=9443)
    assert cm_server.rest_endpoint(config) == ("http://127.0.0.1:8080", True)
    config.rest_http = False
    tls.ca_file(config.dir).parent.mkdir(parents=True, exist_ok=True)
    tls.ca_file(config.dir).write_bytes(open(certificate[0], "rb").read())
    url, verify = cm_server.rest_endpoint(config)
    assert url == "https://127.0.0.1:9443" and isinstance(verify, ssl.SSLContext)
