"""The web UI (cm_server) in a real headless Chromium, driven by selenium, against one real
3-node cluster shared by the module: nothing served before the log-in, the log-in form, CSRF,
a database created through the form (after a validation error the REST API gave, shown beside
its field), seen active, keys written with redis-py seen in its key count and its ops chart, a
shard failed over from the UI and its role seen to change, the actions page, and the database
deleted. The pages are photographed into DMC_UI_SCREENSHOTS (docs/ui/ for the README) when it
is set, else into the test's temporary folder."""

from __future__ import annotations

import json
import os
import shutil
import ssl
from pathlib import Path

import httpx
import pytest
import redis
from click.testing import CliRunner
from clusters import rest_cluster
from waiting import wait_until

from control import cli, tls
from control.local_cluster import LocalCluster
from control.cm_server import ui_url
from dmc.processes import free_port

pytestmark = pytest.mark.timeout(240)

FIRST_ADDRESS = "127.0.0.176"     # other modules' clusters use other addresses
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip("needs Debian's chromium and chromium-driver (scripts/setup.sh test installs "
                "them)", allow_module_level=True)

from selenium import webdriver                                   # noqa: E402
from selenium.common.exceptions import (NoSuchElementException,  # noqa: E402
                                        StaleElementReferenceException)
from selenium.webdriver.chrome.service import Service            # noqa: E402
from selenium.webdriver.common.by import By                      # noqa: E402

CHANGING = (StaleElementReferenceException, NoSuchElementException)   # a part being refreshed
PAGE = 30        # seconds a page, or a part of one, may take to show on a loaded machine


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    # the UI's tests time no start-up: a loaded machine gets longer to start the cluster
    with rest_cluster(tmp_path_factory.mktemp("ui") / "cluster", FIRST_ADDRESS,
                      timeout=90) as c:
        yield c


@pytest.fixture(scope="module")
def ca(cluster) -> ssl.SSLContext:
    """What trusts the UI's certificate: the cluster's CA."""
    return ssl.create_default_context(cafile=str(tls.ca_file(cluster.nodes[1].dir)))


@pytest.fixture(scope="module")
def url(cluster, ca) -> str:
    base = ui_url(cluster.nodes[1]).rstrip("/")
    wait_until(lambda: _answers(base, ca), 90, what="cm_server of node 1")
    return base


def _answers(base: str, ca: ssl.SSLContext) -> bool:
    try:
        return httpx.get(base + "/login", timeout=2, verify=ca).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("DMC_UI_SCREENSHOTS") or tmp_path_factory.mktemp("shots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # The UI's certificate is signed by the cluster's own CA, which this browser does not know;
    # the chain is checked against that CA by the HTTP clients here (verify=ca).
    options.accept_insecure_certs = True
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1360,1100", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def created() -> dict:
    """What one test made for the next ones: the database's uid and port."""
    return {}


def text(browser, css: str) -> str:
    try:
        return browser.find_element(By.CSS_SELECTOR, css).text
    except CHANGING:
        return ""


def wait_text(browser, css: str, predicate, what: str, timeout: float = PAGE) -> str:
    return wait_until(lambda: (t := text(browser, css)) and predicate(t) and t, timeout, 0.1,
                      what)


def click(browser, css: str) -> None:
    """Click the element once it is there (parts of a page are re-rendered as they refresh)."""
    def done():
        browser.find_element(By.CSS_SELECTOR, css).click()
        return True
    wait_until(done, PAGE, 0.1, f"a click on {css}", ignoring=CHANGING)


def fill(browser, css: str, value: str) -> None:
    field = browser.find_element(By.CSS_SELECTOR, css)
    field.clear()
    field.send_keys(value)


def submit_form(browser, page: str) -> None:
    """Submit the database form and wait for `page`; submitted again while the database is
    being changed by another action (the REST API's 409, shown in the form), as a user would."""
    browser.find_element(By.ID, "submit-db").click()

    def landed():
        if browser.current_url.endswith(page):
            return True
        error = text(browser, "#form-error")
        if "being changed by action" in error:
            browser.find_element(By.ID, "submit-db").click()
        else:
            assert not error, error
        return False
    wait_until(landed, PAGE, 0.5, f"the page {page}", ignoring=CHANGING)


def confirm(browser) -> None:
    wait_until(lambda: browser.find_element(By.ID, "confirm").is_displayed(), PAGE, 0.05,
               "the confirmation dialog")
    browser.find_element(By.ID, "confirm-ok").click()


# ---- log in ---------------------------------------------------------------------------------

def test_nothing_is_served_before_log_in(url, ca):
    with httpx.Client(base_url=url, timeout=5, verify=ca) as client:
        for path in ("/", "/static/app.js", "/static/index.html"):
            reply = client.get(path)
            assert reply.status_code == 303 and reply.headers["location"] == "/login", path
        reply = client.get("/api/v1/bdbs")
        assert reply.status_code == 401 and reply.json()["error_code"] == "unauthorized"
        refused = client.post("/api/v1/bdbs", json={"name": "x"})
        # Its body unread, the connection closes: the answer says so, for the client not to
        # reuse it (the next request would meet the close).
        assert refused.status_code == 401 and refused.headers["connection"] == "close"
        page = client.get("/login")
        assert page.status_code == 200 and 'type="password"' in page.text
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]


def test_a_wrong_password_is_refused_and_the_admin_logs_in(browser, url, cluster, shots):
    user, password = cluster.admin_login()
    browser.get(url + "/")
    assert browser.current_url == url + "/login"
    fill(browser, "#username", user)
    fill(browser, "#password", password + "-wrong")
    browser.find_element(By.ID, "login-submit").click()
    assert "wrong user name or password" in wait_text(browser, "#login-error", bool,
                                                      "the log-in error")
    browser.save_screenshot(str(shots / "login.png"))
    fill(browser, "#username", user)
    fill(browser, "#password", password)
    browser.find_element(By.ID, "login-submit").click()
    # the cluster page: three nodes, one of them the master, every service running
    wait_until(lambda: len(browser.find_elements(By.CSS_SELECTOR, "#nodes tr[data-node]")) == 3,
               20, 0.1, "the three nodes")
    assert wait_text(browser, "#nodes-up", lambda t: t == "3 / 3", "3 nodes up")
    master = wait_text(browser, "#master-node", lambda t: t.startswith("node "), "the master")
    roles = wait_until(lambda: [r.text for r in browser.find_elements(
        By.CSS_SELECTOR, "#nodes td.role")], PAGE, 0.1, "roles", ignoring=CHANGING)
    assert sorted(roles) == ["master", "replica", "replica"]
    assert wait_text(browser, f"#nodes tr[data-node='{master.split()[1]}'] td.role",
                     lambda t: t == "master", "the master's row")
    wait_until(lambda: text(browser, "#nodes").count("running") == 3, 20, 0.2,
               "every node's services running")
    browser.save_screenshot(str(shots / "cluster.png"))


def test_changes_need_the_csrf_token_and_the_same_origin(browser, url, ca):
    cookies = {c["name"]: c["value"] for c in browser.get_cookies()}
    with httpx.Client(base_url=url, cookies=cookies, timeout=5, verify=ca) as client:
        session = client.get("/api/session").json()
        assert client.get("/api/v1/bdbs").status_code == 200      # reads need the session only
        reply = client.post("/api/v1/bdbs", json={"name": "csrf"})
        assert reply.status_code == 403 and "CSRF" in reply.json()["description"]
        reply = client.post("/api/v1/bdbs?dry_run=1", json={"name": "csrf"},
                            headers={"X-CSRF-Token": session["csrf_token"],
                                     "Origin": "http://evil.example"})
        assert reply.status_code == 403 and "cross-origin" in reply.json()["description"]
        reply = client.post("/api/v1/bdbs?dry_run=1", json={"name": "csrf"},
                            headers={"X-CSRF-Token": session["csrf_token"], "Origin": url})
        assert reply.status_code == 200 and reply.json()["dry_run"] is True


# ---- a database -----------------------------------------------------------------------------

def test_create_a_database_through_the_form(browser, url, cluster, shots, created):
    browser.get(url + "/#/databases")
    click(browser, "#new-db")
    wait_until(lambda: browser.find_elements(By.ID, "field-name"), PAGE, 0.1, "the form")
    # a 400: the REST API's own reason, beside the field it is about
    fill(browser, "#field-name", "bad name!")
    browser.find_element(By.ID, "submit-db").click()
    reason = wait_text(browser, "#error-name", bool, "the name's error")
    assert "pattern" in reason, reason
    assert text(browser, "#error-memory_size") == ""
    assert "invalid" in browser.find_element(
        By.CSS_SELECTOR, ".field[data-field='name']").get_attribute("class")
    browser.execute_script("window.scrollTo(0, 0)")
    browser.save_screenshot(str(shots / "create-database-error.png"))
    # a 406: a configuration the cluster cannot have, its reason beside the field it names
    fill(browser, "#field-name", "ui-db")
    fill(browser, "#field-memory_size", "1")
    fill(browser, "#field-shards_count", "2")
    browser.find_element(By.ID, "submit-db").click()
    reason = wait_text(browser, "#error-memory_size", bool, "the memory's error")
    assert "gives each of 2 shards less than" in reason, reason
    assert text(browser, "#error-name") == ""

    created["port"] = port = free_port(FIRST_ADDRESS)
    fill(browser, "#field-memory_size", "64")
    fill(browser, "#field-port", str(port))
    if not browser.find_element(By.ID, "field-replication").is_selected():
        browser.find_element(By.ID, "field-replication").click()
    browser.find_element(By.ID, "submit-db").click()
    wait_until(lambda: "#/databases/" in browser.current_url and
               browser.current_url.split("/")[-1].isdigit(), PAGE, 0.1,
               "the database's page")
    created["uid"] = int(browser.current_url.split("/")[-1])
    wait_text(browser, "#db-status", lambda t: t == "active", "the database active", 60)
    host, _, shown_port = text(browser, "#endpoint").rpartition(":")
    assert host in {c.address for c in cluster.nodes.values()} and shown_port == str(port)
    wait_until(lambda: len(browser.find_elements(By.CSS_SELECTOR, "#shards tr[data-shard]")) == 4,
               20, 0.1, "2 master and 2 replica shards")


def test_keys_written_show_in_the_count_and_the_ops_chart(browser, created, shots):
    ops_max = lambda: float(browser.find_element(By.ID, "chart-ops").get_attribute(  # noqa: E731
        "data-max") or 0)
    wait_until(lambda: browser.find_element(By.ID, "chart-ops").get_attribute("data-points"),
               20, 0.1, "the ops chart drawn", ignoring=CHANGING)
    before = ops_max()
    r = redis.Redis(FIRST_ADDRESS, created["port"], socket_timeout=5)
    with r.pipeline(transaction=False) as pipe:
        for i in range(500):
            pipe.set(f"key:{i}", i)
        pipe.execute()
    assert r.dbsize() == 500
    wait_text(browser, "#key-count", lambda t: t == "500", "500 keys shown", 30)
    wait_until(lambda: ops_max() >= 100 > before or ops_max() > before + 100, 30, 0.2,
               "the ops chart showing the writes", ignoring=CHANGING)
    browser.execute_script("window.scrollTo(0, 0)")
    browser.save_screenshot(str(shots / "database.png"))


def test_fail_over_a_shard_from_the_ui(browser, url, created, shots):
    browser.get(f"{url}/#/databases/{created['uid']}")
    def master_row():
        row = browser.find_element(By.CSS_SELECTOR, "#shards tr[data-role='master']")
        return int(row.get_attribute("data-shard"))
    shard = wait_until(master_row, PAGE, 0.1, "a master shard", ignoring=CHANGING)
    click(browser, f"#shards tr[data-shard='{shard}'] button.failover")
    assert f"shard {shard}" in text(browser, "#confirm-title")
    confirm(browser)
    # the action it started, followed in a notice until it completes
    notice = wait_text(browser, "#notices .notice", lambda t: f"fail over shard {shard}" in t,
                       "the failover's notice")
    assert "action " in notice, notice        # not refused
    wait_until(lambda: "completed" in text(browser, "#notices .notice"), 40, 0.1,
               "the failover completed")
    wait_until(lambda: browser.find_element(By.CSS_SELECTOR, f"#shards tr[data-shard='{shard}']")
               .get_attribute("data-role") == "replica", PAGE, 0.1,
               f"shard {shard} a replica", ignoring=CHANGING)
    assert text(browser, f"#shards tr[data-shard='{shard}'] td.role") == "replica"
    browser.execute_script("document.getElementById('shards').scrollIntoView()")
    browser.save_screenshot(str(shots / "shard-failover.png"))


def test_edit_the_database(browser, url, created):
    browser.get(f"{url}/#/databases/{created['uid']}")
    click(browser, "#edit-db")
    wait_until(lambda: browser.find_elements(By.ID, "field-eviction_policy"), PAGE, 0.1,
               "the form")
    assert browser.find_element(By.ID, "field-name").get_attribute("value") == "ui-db"
    browser.find_element(By.CSS_SELECTOR,
                         "#field-eviction_policy option[value='allkeys-lru']").click()
    submit_form(browser, f"#/databases/{created['uid']}")
    wait_until(lambda: "allkeys-lru" in text(browser, "#db-overview"), 40, 0.2,
               "the new eviction policy shown")
    r = redis.Redis(FIRST_ADDRESS, created["port"], socket_timeout=5)
    assert r.config_get("maxmemory-policy") == {"maxmemory-policy": "allkeys-lru"}


def test_migrate_a_shard_and_back_the_database_up(browser, url, created):
    browser.get(f"{url}/#/databases/{created['uid']}")
    def rows():
        return [(int(r.get_attribute("data-shard")), r.get_attribute("data-role"),
                 *(td.text for td in r.find_elements(By.TAG_NAME, "td")[1:4:2]))
                for r in browser.find_elements(By.CSS_SELECTOR, "#shards tr[data-shard]")]
    # (shard, role, node, slots) of a replica
    shard, _, node, slots = wait_until(lambda: [r for r in rows() if r[1] == "replica"][0],
                                       10, 0.1, "a replica", ignoring=CHANGING + (IndexError,))
    click(browser, f"#shards tr[data-shard='{shard}'] button.migrate")
    target = wait_until(lambda: browser.find_element(By.ID, "migrate-target"), PAGE, 0.05,
                        "the target node", ignoring=CHANGING)
    to = target.get_attribute("value")
    assert f"node:{to}" != node
    confirm(browser)
    # a new replica of those slots on the target node takes the shard's place
    wait_until(lambda: (now := rows()) and shard not in [r[0] for r in now] and
               any(r[1:] == ("replica", f"node:{to}", slots) for r in now), 60, 0.2,
               f"shard {shard}'s slots on node {to}", ignoring=CHANGING)
    click(browser, "#backup-db")
    confirm(browser)
    wait_until(lambda: "succeeded" in text(browser, "#backups"), 60, 0.2, "the backup listed")
    wait_until(lambda: "500" in text(browser, "#backup-list"), 20, 0.2,
               "the backup's 500 keys listed")


def test_the_actions_page_lists_what_was_done(browser, url, shots):
    browser.get(url + "/#/actions")
    def names():
        rows = browser.find_elements(By.CSS_SELECTOR, "#action-list tr[data-action]")
        return {(r.find_elements(By.TAG_NAME, "td")[1].text, r.get_attribute("data-status"))
                for r in rows}
    found = wait_until(lambda: {("bdb_create", "completed"), ("shard_failover", "completed"),
                                ("bdb_update", "completed")}
                       <= names(), PAGE, 0.1, "the actions", ignoring=CHANGING)
    assert found
    browser.save_screenshot(str(shots / "actions.png"))
    # one action's page: its steps, progress and parameters
    click(browser, "#action-list tr[data-action] a")
    assert wait_text(browser, "#action-status", bool, "the action's page") == "completed"
    browser.save_screenshot(str(shots / "action.png"))


def test_delete_the_database(browser, url, created, shots):
    browser.get(f"{url}/#/databases")
    wait_text(browser, f"#db-list tr[data-bdb='{created['uid']}'] td.status",
              lambda t: t == "active", "the database listed")
    browser.save_screenshot(str(shots / "databases.png"))
    browser.get(f"{url}/#/databases/{created['uid']}")
    wait_text(browser, "#db-name", lambda t: t == "ui-db", "the database's page")
    click(browser, "#delete-db")
    confirm(browser)
    wait_until(lambda: browser.current_url.endswith("#/databases"), PAGE, 0.1, "the list")
    wait_until(lambda: not browser.find_elements(
        By.CSS_SELECTOR, f"#db-list tr[data-bdb='{created['uid']}']") and
        "no database" in text(browser, "#db-list"), 60, 0.2, "the database gone",
        ignoring=CHANGING)
    with pytest.raises(redis.ConnectionError):
        redis.Redis(FIRST_ADDRESS, created["port"], socket_timeout=2).ping()


def test_dmc_status_lists_each_node_ui_url(cluster, url, ca):
    out = CliRunner().invoke(cli.main, ["status", "--json", "--home", str(cluster.home)])
    assert out.exit_code == 0, out.output
    nodes = json.loads(out.output)["nodes"]
    assert [n["ui_url"] for n in nodes] == [ui_url(c) for _, c in sorted(cluster.nodes.items())]
    for n in nodes:
        assert n["ui_url"].startswith("https://")       # the node's certificate, CA-signed
        assert httpx.get(n["ui_url"] + "login", timeout=5, verify=ca).status_code == 200


def test_add_a_node_as_the_ui_says_and_remove_it_from_the_ui(browser, url, cluster, shots):
    """The UI says how a node joins (the command, with a member's gossip address); the node
    the operator adds that way shows up; its Remove button takes it out, and it stops."""
    browser.get(url + "/#/")
    click(browser, "#add-node")
    join = wait_text(browser, "#join-command", lambda t: t.startswith("dmc node join"), "the join")
    assert any(f"{c.address}:{c.gossip_port}" in join for c in cluster.nodes.values()), join
    assert text(browser, "#add-command") == "dmc node add"
    browser.save_screenshot(str(shots / "add-node.png"))
    confirm(browser)                                              # "Done"
    added = CliRunner().invoke(cli.main, ["node", "add", "--home", str(cluster.home)])
    assert added.exit_code == 0, added.output
    uid = int(added.output.split()[1])                           # "node 4 joined at ..."
    row = f"#nodes tr[data-node='{uid}']"
    assert wait_text(browser, f"{row} td.state", lambda t: t == "OK", f"node {uid} OK", 60)
    click(browser, f"{row} button")
    assert f"node {uid}" in text(browser, "#confirm-title")
    confirm(browser)
    notice = wait_text(browser, "#notices .notice", lambda t: f"remove node {uid}" in t,
                       "the removal's notice")
    assert "action " in notice, notice
    wait_until(lambda: not browser.find_elements(By.CSS_SELECTOR, row), 120, 0.2,
               f"node {uid} gone from the table")
    node = LocalCluster.load(cluster.home).nodes[uid]
    wait_until(lambda: node.removed_file.exists(), 60, 0.2, f"node {uid} stopped itself")
