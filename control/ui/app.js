// dmc cluster manager: the front end of cm_server (control/cm_server.py). A plain ES module, no
// build step: every page is a function that renders into <main id="view"> from the REST API
// (cnm_http, through cm_server's /api/v1/...), and refreshes its parts on a timer while shown.
// Charts are uPlot (vendor/), loaded as a global by index.html. Text is always set with
// textContent (h() below), never parsed as HTML.

const view = document.getElementById("view");
const session = { csrf: null, user: null };
let timers = [];               // the shown page's refreshers, stopped when the page changes
let pageToken = 0;             // a page's async work that finishes after it was left is dropped

// ---- the REST API -----------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, description) {
    super(description);
    this.status = status;
    this.code = code;
  }
}

async function api(method, path, body) {
  const options = { method, headers: {}, credentials: "same-origin" };
  if (method !== "GET") options.headers["X-CSRF-Token"] = session.csrf;
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const reply = await fetch("/api" + path, options);
  if (reply.status === 401) {
    location.href = "/login";
    throw new ApiError(401, "unauthorized", "logged out");
  }
  let data = null;
  try { data = await reply.json(); } catch { /* an empty body */ }
  if (!reply.ok) {
    throw new ApiError(reply.status, data?.error_code || "http_error",
                       data?.description || reply.statusText);
  }
  return data;
}
const get = (path) => api("GET", path);

// ---- DOM --------------------------------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k in el && typeof v !== "string") el[k] = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function badge(text, kind) {
  return h("span", { class: `badge ${kind || String(text).toLowerCase()}` }, text);
}

function bar(percent, kind = "") {
  const p = Math.max(0, Math.min(100, percent || 0));
  return h("div", { class: `bar ${kind}`, title: `${p.toFixed(0)}%` },
           h("span", { style: `width: ${p}%` }));
}

function table(headers, rows, empty = "nothing yet") {
  if (!rows.length) return h("p", { class: "empty" }, empty);
  return h("table", {},
           h("thead", {}, h("tr", {}, headers.map((t) => h("th", {}, t)))),
           h("tbody", {}, rows));
}

function panel(title, ...children) {
  return h("section", { class: "panel" }, title ? h("h2", {}, title) : null, ...children);
}

function card(label, value, id) {
  return h("div", { class: "card" }, h("div", { class: "label" }, label),
           h("div", { class: "value", id }, value));
}

// ---- formats ----------------------------------------------------------------------------------

function bytes(n) {
  if (n === null || n === undefined) return "-";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(n >= 100 || i === 0 ? 0 : 1)} ${units[i]}`;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  const s = Math.max(0, Math.floor(seconds));
  const d = Math.floor(s / 86400), hh = Math.floor(s / 3600) % 24, mm = Math.floor(s / 60) % 60;
  if (d) return `${d}d ${hh}h`;
  if (hh) return `${hh}h ${mm}m`;
  return mm ? `${mm}m ${s % 60}s` : `${s % 60}s`;
}

function when(t) {
  if (!t) return "-";
  const date = typeof t === "number" ? new Date(t * 1000) : new Date(t);
  return date.toLocaleString();
}

function slots(ranges) {
  if (!Array.isArray(ranges) || !ranges.length) return "-";
  return ranges.map(([a, b]) => (a === b ? `${a}` : `${a}-${b}`)).join(", ");
}

function number(n, digits = 0) {
  return n === null || n === undefined ? "-" : Number(n).toFixed(digits);
}

// ---- page life --------------------------------------------------------------------------------

function every(ms, fn) {
  const token = pageToken;
  const run = async () => {
    if (token !== pageToken) return;
    try { await fn(); } catch (e) { if (e.status !== 401) console.warn(e); }
  };
  timers.push(setInterval(run, ms));
  return run();
}

function stopPage() {
  timers.forEach(clearInterval);
  timers = [];
  pageToken += 1;
  charts.forEach((c) => c.plot.destroy());
  charts = [];
}

function showError(where, error) {
  where.replaceChildren(h("p", { class: "form-error", role: "alert" }, error.message));
}

// ---- confirmation and the actions started here ------------------------------------------------

function confirmDialog(title, body, okLabel = "OK", danger = true) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-title").textContent = title;
  document.getElementById("confirm-body").replaceChildren(
    ...(Array.isArray(body) ? body : [body]).map((b) => (b instanceof Node ? b : h("p", {}, b))));
  const ok = document.getElementById("confirm-ok");
  ok.textContent = okLabel;
  ok.className = danger ? "" : "secondary";
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
  });
}

// A notice per action started from the UI, following it until it ends.
function trackAction(actionUid, what) {
  if (!actionUid) return;
  const status = h("span", { class: "status" }, "pending");
  let progress = bar(0);
  const step = h("div", { class: "muted step" });
  const notice = h("div", { class: "notice", dataset: { action: actionUid } },
    h("button", { class: "close", title: "dismiss", onclick: () => notice.remove() }, "×"),
    h("div", {}, h("strong", {}, what), " ", status),
    h("div", {}, h("a", { href: `#/actions/${actionUid}` }, `action ${actionUid}`)),
    progress, step);
  document.getElementById("notices").prepend(notice);
  const poll = setInterval(async () => {
    let action;
    try { action = await get(`/v1/actions/${actionUid}`); } catch { return; }
    status.replaceChildren(badge(action.status));
    const next = bar(action.progress, action.status);
    progress.replaceWith(next);
    progress = next;
    step.textContent = action.error || action.step || "";
    notice.className = `notice ${action.status}`;
    if (action.status === "completed" || action.status === "failed") {
      clearInterval(poll);
      setTimeout(() => notice.remove(), action.status === "completed" ? 20000 : 60000);
    }
  }, 1000);
}

async function operate(what, call) {
  try {
    const reply = await call();
    trackAction(reply?.action_uid, what);
    return reply;
  } catch (e) {
    const notice = h("div", { class: "notice failed", role: "alert" },
      h("button", { class: "close", onclick: () => notice.remove() }, "×"),
      h("strong", {}, `${what}: refused`), h("div", { class: "error-text" }, e.message));
    document.getElementById("notices").prepend(notice);
    return null;
  }
}

// ---- the cluster ------------------------------------------------------------------------------

async function clusterPage() {
  const cards = h("div", { class: "cards" });
  const nodes = h("div", { id: "nodes" });
  const alerts = h("div", { id: "alerts" });
  const events = h("div", { id: "events" });
  view.replaceChildren(
    h("div", { class: "page-head" }, h("h1", {}, "Cluster"), h("span", { class: "spacer" }),
      h("button", { id: "add-node", onclick: () => addNode() }, "Add node")),
    cards, panel("Nodes", nodes),
    h("div", { class: "grid2" }, panel("Alerts raised", alerts), panel("Event log", events)));

  await every(2000, async () => {
    const [cluster, nodeList] = await Promise.all([get("/v1/cluster"), get("/v1/nodes")]);
    cards.replaceChildren(
      card("Master node", cluster.master_node_uid ? `node ${cluster.master_node_uid}` : "none",
           "master-node"),
      card("Nodes up", `${cluster.nodes_up} / ${cluster.nodes_count}`, "nodes-up"),
      card("Databases", cluster.bdbs_count, "bdbs-count"),
      card("Shards", cluster.shards_count, "shards-count"),
      card("Memory booked", `${bytes(cluster.memory_booked)} / ${bytes(cluster.memory_size)}`));
    nodes.replaceChildren(table(
      ["Node", "Role", "Address", "State", "Uptime", "Shards", "Services", ""],
      nodeList.map((n) => {
        const services = Object.entries(n.services || {});
        const down = services.filter(([, s]) => s !== "RUNNING");
        return h("tr", { dataset: { node: n.uid } },
          h("td", {}, `node:${n.uid}`),
          h("td", { class: "role" }, n.master ? badge("master") : badge("replica")),
          h("td", { class: "mono" }, n.addr || "?"),
          h("td", { class: "state" }, badge(n.status === "active" ? "OK" : "DOWN",
                                           n.status === "active" ? "ok" : "down")),
          h("td", {}, duration(n.uptime)),
          h("td", {}, n.shard_count),
          h("td", { title: services.map(([k, s]) => `${k}: ${s}`).join("\n") },
            !services.length ? "-" : down.length ?
              h("span", { class: "badge bad" }, down.map(([k, s]) => `${k}: ${s}`).join(", ")) :
              `all ${services.length} running`),
          h("td", {}, h("button", { class: "small secondary", onclick: () => removeNode(n) },
                        "Remove")));
      })));
  });
  every(5000, async () => {
    const [cluster, ofNodes, ofBdbs] = await Promise.all(
      [get("/v1/cluster/alerts"), get("/v1/nodes/alerts"), get("/v1/bdbs/alerts")]);
    const raised = [];
    const collect = (what, found) => Object.entries(found || {}).forEach(([name, a]) => {
      if (a.state) raised.push([what, name, a]);
    });
    collect("cluster", cluster);
    Object.entries(ofNodes).forEach(([uid, found]) => collect(`node ${uid}`, found));
    Object.entries(ofBdbs).forEach(([uid, found]) => collect(`database ${uid}`, found));
    alerts.replaceChildren(table(["Object", "Alert", "Severity", "Since", "Value"],
      raised.map(([what, name, a]) => h("tr", {}, h("td", {}, what), h("td", {}, name),
        h("td", {}, badge(a.severity || "-", a.severity === "CRITICAL" ? "bad" : "warn")),
        h("td", {}, when(a.change_time)), h("td", {}, a.change_value?.value ?? ""))),
      "no alert raised"));
    const log = await get("/v1/logs?limit=12");
    events.replaceChildren(table(["Time", "Event"], log.map((e) => h("tr", {},
      h("td", { class: "muted" }, when(e.time)),
      h("td", { title: e.type }, e.description || e.type))), "no event yet"));
  });
}

// A node is a machine running dmc's services: it joins from there (as a Redis Enterprise node
// joins from its own set-up), so the UI says how, and the new node shows in the table once the
// master has taken it in.
async function addNode() {
  const nodeList = await get("/v1/nodes");
  const peer = nodeList.find((n) => n.master && n.gossip_port) || nodeList.find((n) => n.gossip_port);
  const join = peer ? `dmc node join ${peer.addr}:${peer.gossip_port} --address <its address> ` +
    "--ca-dir <a copy of a node's certs folder>" : "(no node answers: try again)";
  confirmDialog("Add a node", [
    "On the new machine, with dmc installed and the cluster CA copied to it (the certs folder " +
      "of any node: its certificates are signed with it, or the cluster refuses the node):",
    h("pre", { id: "join-command", class: "mono" }, join),
    "A node on this machine (a local cluster, the next loopback address):",
    h("pre", { id: "add-command", class: "mono" }, "dmc node add"),
    "It shows in the table as soon as the master has taken it in."], "Done", false);
}

async function removeNode(n) {
  const ok = await confirmDialog(`Remove node ${n.uid}?`,
    [`Its ${n.shard_count} shards are moved to the other nodes first, then node ${n.uid} ` +
     "leaves the cluster and stops."], "Remove node");
  if (ok) await operate(`remove node ${n.uid}`, () => api("POST", `/v1/nodes/${n.uid}/actions/remove`));
}

// ---- databases --------------------------------------------------------------------------------

function endpointOf(bdb) {
  const e = (bdb.endpoints || [])[0];
  if (!e) return null;
  return `${(e.addr || [])[0] || e.dns_address_master}:${e.port}`;
}

async function databasesPage() {
  const list = h("div", { id: "db-list" });
  view.replaceChildren(
    h("div", { class: "page-head" }, h("h1", {}, "Databases"), h("span", { class: "spacer" }),
      h("a", { class: "button", href: "#/databases/new", id: "new-db" }, "New database")),
    panel(null, list));
  await every(2000, async () => {
    const [bdbs, last] = await Promise.all([get("/v1/bdbs"), get("/v1/bdbs/stats/last")]);
    list.replaceChildren(table(
      ["Name", "ID", "Status", "Endpoint", "Shards", "Memory limit", "Keys", "Ops/sec"],
      bdbs.map((b) => {
        const stats = last[String(b.uid)] || {};
        return h("tr", { dataset: { bdb: b.uid, name: b.name } },
          h("td", {}, h("a", { href: `#/databases/${b.uid}` }, b.name)),
          h("td", {}, b.uid),
          h("td", { class: "status" }, badge(b.status || "?")),
          h("td", { class: "mono" }, endpointOf(b) || "-"),
          h("td", {}, `${b.shards_count}${b.replication ? " ×2 (replicated)" : ""}`),
          h("td", {}, bytes(b.memory_size)),
          h("td", {}, number(stats.no_of_keys)),
          h("td", {}, number(stats.total_req)));
      }), "no database yet: create one"));
  });
}

let charts = [];

// ops/sec, latency and memory of one database, over a stats interval
const CHARTS = [
  { id: "ops", title: "Ops/sec", value: (p) => p.total_req ?? 0, format: (v) => number(v) },
  { id: "latency", title: "Latency (ms, average)", value: (p) => (p.avg_latency ?? 0) * 1000,
    format: (v) => number(v, 3) },
  { id: "memory", title: "Memory used (MB)", value: (p) => (p.used_memory ?? 0) / 1048576,
    format: (v) => number(v, 1) },
];

function makeChart(spec, holder) {
  const width = Math.max(300, holder.clientWidth - 8 || 380);
  const plot = new uPlot({
    width, height: 180, legend: { show: false }, cursor: { drag: { x: false, y: false } },
    scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(max * 1.1, 1)] } },
    axes: [{}, { size: 60 }],
    series: [{}, { label: spec.title, stroke: "#d6322f", fill: "rgba(214,50,47,.08)",
                   width: 2, points: { show: false } }],
  }, [[], []], holder);
  charts.push({ spec, plot, holder });
}

window.addEventListener("resize", () => charts.forEach(({ plot, holder }) =>
  plot.setSize({ width: Math.max(300, holder.clientWidth - 8), height: 180 })));

function updateCharts(points) {
  const xs = points.map((p) => Date.parse(p.stime) / 1000);
  for (const { spec, plot, holder } of charts) {
    const ys = points.map(spec.value);
    plot.setData([xs, ys]);
    const box = holder.closest(".chart");
    const max = ys.length ? Math.max(...ys) : 0;
    box.dataset.points = ys.length;
    box.dataset.max = max;
    box.dataset.last = ys.length ? ys[ys.length - 1] : 0;
    box.querySelector(".now").textContent =
      ys.length ? `now ${spec.format(ys[ys.length - 1])} · max ${spec.format(max)}` : "no data yet";
  }
}

async function databasePage({ uid }) {
  const head = h("div", { class: "page-head" });
  const overview = h("div", { id: "db-overview" });
  const shardsBox = h("div", { id: "shards" });
  const backupsBox = h("div", { id: "backups" });
  const interval = h("select", { id: "interval" },
    ["1sec", "10sec", "5min", "15min", "1hour", "12hour", "1week"].map(
      (i) => h("option", { value: i }, i)));
  const chartBoxes = CHARTS.map((spec) => h("div", { class: "chart", id: `chart-${spec.id}` },
    h("h3", {}, spec.title, h("span", { class: "now" })), h("div", { class: "plot" })));
  const backupList = h("div", { id: "backup-list" });
  view.replaceChildren(head,
    panel(null, h("div", { class: "page-head" }, h("h2", {}, "Statistics"),
                  h("span", { class: "spacer" }), h("label", { for: "interval" }, "interval"),
                  interval),
          h("div", { class: "charts" }, chartBoxes)),
    h("div", { class: "grid2" }, panel("Overview", overview),
      h("div", {}, panel("Shards", shardsBox), panel("Backups", backupsBox, backupList))));
  CHARTS.forEach((spec, i) => makeChart(spec, chartBoxes[i].querySelector(".plot")));
  let bdb = null;

  every(10000, async () => {
    const backups = (await get(`/v1/bdbs/${uid}/backups`)).reverse().slice(0, 5);
    backupList.replaceChildren(table(["Backup", "Time", "Keys", "Size"], backups.map((k) =>
      h("tr", {}, h("td", { class: "mono" }, k.backup_id), h("td", {}, when(k.time)),
        h("td", {}, k.keys), h("td", {}, bytes(k.shards.reduce((n, f) => n + f.bytes, 0))))),
      "no backup yet"));
  });

  const refreshStats = async () => {
    const history = await get(`/v1/bdbs/stats/${uid}?interval=${interval.value}`);
    updateCharts(history.intervals || []);
  };
  interval.addEventListener("change", refreshStats);

  await every(1500, async () => {
    const [b, shards, nodes, last] = await Promise.all([get(`/v1/bdbs/${uid}`),
      get("/v1/shards"), get("/v1/nodes"), get(`/v1/bdbs/stats/last/${uid}`)]);
    const first = bdb === null;
    bdb = b;
    const stats = last[String(uid)] || {};
    if (first) {
      head.replaceChildren(h("h1", { id: "db-name" }, b.name), h("span", { id: "db-status" }),
        h("span", { class: "spacer" }),
        h("a", { class: "button secondary", href: `#/databases/${uid}/edit`, id: "edit-db" },
          "Edit"),
        h("button", { class: "secondary", id: "backup-db", onclick: () => backup(bdb) }, "Back up now"),
        h("button", { id: "delete-db", onclick: () => deleteDatabase(bdb) }, "Delete"));
    }
    head.querySelector("#db-status").replaceChildren(badge(b.status || "?"));
    const endpoint = endpointOf(b);
    const used = stats.used_memory;
    overview.replaceChildren(h("dl", { class: "facts" },
      h("dt", {}, "Endpoint"), h("dd", {}, endpoint ? h("span", { class: "endpoint" },
        h("code", { id: "endpoint" }, endpoint),
        h("button", { class: "small secondary", onclick: (e) => copy(endpoint, e.target) }, "Copy"))
        : "-"),
      h("dt", {}, "DNS name"), h("dd", { class: "mono" },
        (b.endpoints || [])[0]?.dns_address_master || "-"),
      h("dt", {}, "Memory"), h("dd", {}, h("div", {}, `${bytes(used)} of ${bytes(b.memory_size)}`),
        bar(used && b.memory_size ? (100 * used) / b.memory_size : 0)),
      h("dt", {}, "Keys"), h("dd", { id: "key-count" }, number(stats.no_of_keys)),
      h("dt", {}, "Ops/sec"), h("dd", { id: "ops-now" }, number(stats.total_req)),
      h("dt", {}, "Shards"), h("dd", {}, b.shards_count),
      h("dt", {}, "Replication"), h("dd", { id: "replication" }, b.replication ? "enabled" : "disabled"),
      h("dt", {}, "Persistence"), h("dd", {}, b.data_persistence === "aof" ?
        `AOF (${b.aof_policy})` : b.data_persistence === "snapshot" ?
        `snapshot (${(b.snapshot_policy || []).map((r) => `${r.secs}s/${r.writes}`).join(", ")})` :
        b.data_persistence || "-"),
      h("dt", {}, "Eviction"), h("dd", {}, b.eviction_policy || "-"),
      h("dt", {}, "Multi-slot commands"), h("dd", {}, b.multi_slot_commands || "-"),
      h("dt", {}, "Password"), h("dd", {}, b.authentication_redis_pass ? "set" : "none"),
      h("dt", {}, "Created"), h("dd", {}, when(b.created_time))));
    const mine = shards.filter((s) => s.bdb_uid === Number(uid)).sort((a, b2) =>
      (a.slots?.[0]?.[0] ?? 0) - (b2.slots?.[0]?.[0] ?? 0) || a.uid - b2.uid);
    shardsBox.replaceChildren(table(["Shard", "Node", "Role", "Slots", "Port", "Status", ""],
      mine.map((s) => h("tr", { dataset: { shard: s.uid, role: s.role } },
        h("td", {}, `redis:${s.uid}`), h("td", {}, `node:${s.node_uid}`),
        h("td", { class: "role" }, badge(s.role || "?")),
        h("td", { class: "mono" }, slots(s.slots)), h("td", {}, s.port ?? "-"),
        h("td", {}, badge(s.status, s.status === "running" ? "ok" : "warn")),
        h("td", {},
          s.role === "master" && b.replication ? h("button", { class: "small secondary failover",
            onclick: () => failover(s) }, "Fail over") : null, " ",
          h("button", { class: "small secondary migrate", onclick: () => migrate(s, nodes, mine) },
            "Migrate")))), "no shard yet"));
    backupsBox.replaceChildren(h("dl", { class: "facts" },
      h("dt", {}, "Scheduled"), h("dd", {}, b.backup_interval ?
        `every ${duration(b.backup_interval)}` : "no"),
      h("dt", {}, "Location"), h("dd", { class: "mono" }, b.backup_location || "-"),
      h("dt", {}, "Last backup"), h("dd", {}, b.last_backup_time ?
        [when(b.last_backup_time), " ", badge(b.backup_status || "?",
          b.backup_status === "failed" ? "failed" : "ok")] : "never"),
      b.backup_failure_reason ? h("dt", {}, "Failure") : null,
      b.backup_failure_reason ? h("dd", { class: "error-text" }, b.backup_failure_reason) : null));
    await refreshStats();
  });
}

async function copy(text, button) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    const area = h("textarea", {}, text);
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  button.textContent = "Copied";
  setTimeout(() => { button.textContent = "Copy"; }, 1500);
}

async function failover(shard) {
  const ok = await confirmDialog(`Fail over shard ${shard.uid}?`,
    [`Its replica becomes the master of slots ${slots(shard.slots)}; shard ${shard.uid} ` +
     "becomes its replica. Commands in flight during the switch may get TRYAGAIN."], "Fail over");
  if (ok) await operate(`fail over shard ${shard.uid}`,
    () => api("POST", `/v1/shards/${shard.uid}/actions/failover`));
}

async function migrate(shard, nodes, shards) {
  const taken = new Set(shards.filter((s) => (s.slots?.[0]?.[0]) === (shard.slots?.[0]?.[0]))
    .map((s) => s.node_uid));
  const choices = nodes.filter((n) => !taken.has(n.uid) && n.status === "active");
  const select = h("select", { id: "migrate-target" },
    choices.map((n) => h("option", { value: n.uid }, `node ${n.uid} (${n.addr})`)));
  if (!choices.length) {
    await confirmDialog(`Migrate shard ${shard.uid}`, "No other node up can take it.", "OK", false);
    return;
  }
  const ok = await confirmDialog(`Migrate shard ${shard.uid}?`,
    [`Move this ${shard.role} shard from node ${shard.node_uid} to:`, select], "Migrate");
  if (ok) await operate(`migrate shard ${shard.uid}`, () => api("POST",
    `/v1/shards/${shard.uid}/actions/migrate`, { target_node_uid: Number(select.value) }));
}

async function backup(bdb) {
  const ok = await confirmDialog(`Back up ${bdb.name}?`,
    [`One RDB per shard, read from the replicas, into ${bdb.backup_location || "the default folder"}.`],
    "Back up", false);
  if (ok) await operate(`back up ${bdb.name}`, () => api("POST", `/v1/bdbs/${bdb.uid}/actions/backup`));
}

async function deleteDatabase(bdb) {
  const ok = await confirmDialog(`Delete database ${bdb.name}?`,
    [`Every key of ${bdb.name} and its ${bdb.shards_count} shards are gone for good; its ` +
     `endpoint ${endpointOf(bdb) || ""} stops. Backups stay.`], "Delete database");
  if (!ok) return;
  const reply = await operate(`delete ${bdb.name}`, () => api("DELETE", `/v1/bdbs/${bdb.uid}`));
  if (reply) location.hash = "#/databases";
}

// ---- the database form ------------------------------------------------------------------------

// The form's fields; choices, defaults and help come from the REST API's own OpenAPI document.
const FIELDS = [
  { name: "name", label: "Name", type: "text" },
  { name: "memory_size", label: "Memory limit (MB)", type: "number", scale: 1048576,
    help: "megabytes here (the REST API counts bytes), split over the shards" },
  { name: "shards_count", label: "Shards", type: "number" },
  { name: "replication", label: "Replication", type: "checkbox" },
  { name: "port", label: "Port", type: "number", placeholder: "a free port (10000-19999)" },
  { name: "data_persistence", label: "Persistence", type: "select" },
  { name: "aof_policy", label: "AOF policy", type: "select" },
  { name: "eviction_policy", label: "Eviction policy", type: "select" },
  { name: "authentication_redis_pass", label: "Password", type: "password" },
  { name: "multi_slot_commands", label: "Multi-slot commands", type: "select" },
  { name: "proxy_policy", label: "Proxy policy", type: "select", optional: true },
  { name: "backup_interval", label: "Backup every (s)", type: "number" },
  { name: "backup_location", label: "Backup folder", type: "text", optional: true },
];

// 406 reasons name the field they are about in their first words (control/rest_checks.py)
const REASON_FIELDS = [
  [/^port\b/, "port"], [/^name\b/, "name"], [/memory/, "memory_size"],
  [/^(shards_count|\d+ more shards)/, "shards_count"], [/replicas/, "replication"],
  [/backup location/, "backup_location"],
];

let openapi = null;
async function bdbSchema() {
  openapi = openapi || await get("/openapi.json");
  return openapi.components.schemas;
}

function propertyOf(schemas, model, name) {
  const p = schemas[model]?.properties?.[name] || {};
  const ref = p.$ref || p.allOf?.[0]?.$ref || p.anyOf?.find((x) => x.$ref)?.$ref;
  const target = ref ? schemas[ref.split("/").pop()] : null;
  return { ...p, enum: p.enum || target?.enum || p.anyOf?.find((x) => x.enum)?.enum };
}

async function databaseForm({ uid }) {
  const editing = uid !== undefined;
  const [schemas, current] = await Promise.all([bdbSchema(),
    editing ? get(`/v1/bdbs/${uid}`) : Promise.resolve(null)]);
  const model = editing ? "BdbSettings" : "BdbCreate";
  const inputs = {};
  const errors = {};
  const rows = FIELDS.map((f) => {
    const prop = propertyOf(schemas, model, f.name);
    let value = current ? current[f.name] : prop.default;
    if (value !== undefined && value !== null && f.scale) value = value / f.scale;
    let input;
    if (f.type === "select") {
      input = h("select", {}, f.optional ? h("option", { value: "" }, "(default)") : null,
        (prop.enum || []).map((v) => h("option", { value: v, selected: v === value }, v)));
    } else if (f.type === "checkbox") {
      input = h("input", { type: "checkbox", checked: Boolean(value) });
    } else {
      input = h("input", { type: f.type, value: value ?? "", placeholder: f.placeholder,
                           step: f.type === "number" ? "any" : null,
                           autocomplete: f.type === "password" ? "new-password" : "off" });
    }
    input.id = `field-${f.name}`;
    input.name = f.name;
    inputs[f.name] = input;
    errors[f.name] = h("p", { class: "field-error", id: `error-${f.name}`, role: "alert" });
    return h("div", { class: "field", dataset: { field: f.name } },
      h("label", { for: input.id }, f.label), input, errors[f.name],
      f.help || prop.description ? h("div", { class: "help" }, f.help || prop.description) : null);
  });
  const formError = h("div", { class: "form-error", id: "form-error", role: "alert" });
  const submit = h("button", { type: "submit", id: "submit-db" },
                   editing ? "Save changes" : "Create database");
  const form = h("form", { class: "db-form panel", novalidate: true }, rows, formError,
    h("div", { class: "actions-row" }, submit,
      h("a", { class: "button secondary", href: editing ? `#/databases/${uid}` : "#/databases" },
        "Cancel")));
  view.replaceChildren(h("div", { class: "page-head" },
    h("h1", {}, editing ? `Edit ${current.name}` : "New database")),
    ...(editing ? [h("p", { class: "hint" }, "Shards alone, changed to a multiple of the " +
      "current count, reshards the database; other changes are applied together.")] : []), form);

  const clearErrors = () => {
    Object.values(errors).forEach((e) => { e.textContent = ""; });
    form.querySelectorAll(".field.invalid").forEach((f) => f.classList.remove("invalid"));
    formError.textContent = "";
  };
  const showFieldError = (field, message) => {
    if (errors[field]) {
      errors[field].textContent = errors[field].textContent ?
        `${errors[field].textContent}; ${message}` : message;
      errors[field].closest(".field").classList.add("invalid");
    } else {
      formError.textContent = formError.textContent ? `${formError.textContent}; ${message}` : message;
    }
  };

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors();
    const body = {};
    for (const f of FIELDS) {
      const input = inputs[f.name];
      let value;
      if (f.type === "checkbox") value = input.checked;
      else if (f.type === "number") {
        if (input.value.trim() === "") continue;
        value = Number(input.value);
        if (f.scale) value = Math.round(value * f.scale);
      } else {
        value = input.value;
        if (value === "" && (f.optional || f.name === "port")) continue;
      }
      if (editing && current[f.name] === value) continue;
      if (editing && f.name === "authentication_redis_pass" && value === "" &&
          !current[f.name]) continue;
      body[f.name] = value;
    }
    if (editing && !Object.keys(body).length) {
      formError.textContent = "nothing changed";
      return;
    }
    submit.disabled = true;
    try {
      const reply = editing ? await api("PUT", `/v1/bdbs/${uid}`, body)
                            : await api("POST", "/v1/bdbs", body);
      trackAction(reply.action_uid, editing ? `change ${current.name}` : `create ${reply.name}`);
      location.hash = `#/databases/${reply.uid}`;
    } catch (e) {
      if (e.status === 400 && e.code === "invalid_schema") {
        // "field: message; other: message" (cnm_http's _describe)
        for (const part of e.message.split("; ")) {
          const m = part.match(/^(?:unknown field )?([a-z_]+)[.\w]*(?::\s*(.*))?$/);
          if (m && errors[m[1]]) showFieldError(m[1], m[2] || part);
          else showFieldError(null, part);
        }
      } else if (e.status === 406) {
        const found = REASON_FIELDS.find(([re]) => re.test(e.message));
        showFieldError(found ? found[1] : null, e.message);
      } else {
        showFieldError(null, `${e.message} (HTTP ${e.status})`);
      }
    } finally {
      submit.disabled = false;
    }
  });
}

// ---- actions ----------------------------------------------------------------------------------

function actionRow(a) {
  return h("tr", { dataset: { action: a.action_uid, status: a.status } },
    h("td", { class: "mono" }, h("a", { href: `#/actions/${a.action_uid}` }, a.action_uid)),
    h("td", {}, a.name), h("td", {}, a.object_type === "bdb" ?
      h("a", { href: `#/databases/${a.object_uid}` }, `bdb ${a.object_uid}`) :
      `${a.object_type || ""} ${a.object_uid ?? ""}`),
    h("td", { class: "status" }, badge(a.status)),
    h("td", {}, bar(a.progress, a.status)), h("td", { class: "muted" }, a.error || a.step || ""),
    h("td", { class: "muted" }, when(a.creation_time)));
}

async function actionsPage() {
  const list = h("div", { id: "action-list" });
  view.replaceChildren(h("div", { class: "page-head" }, h("h1", {}, "Actions")), panel(null, list));
  await every(1000, async () => {
    const actions = (await get("/v1/actions")).reverse();
    list.replaceChildren(table(["Action", "Name", "Object", "Status", "Progress", "Step", "Created"],
      actions.map(actionRow), "no action yet"));
  });
}

async function actionPage({ uid }) {
  const box = h("div", { id: "action" });
  view.replaceChildren(h("div", { class: "page-head" }, h("h1", {}, `Action ${uid}`)),
                       panel(null, box));
  await every(1000, async () => {
    const a = await get(`/v1/actions/${uid}`);
    box.replaceChildren(h("dl", { class: "facts" },
      h("dt", {}, "Name"), h("dd", {}, a.name),
      h("dt", {}, "Object"), h("dd", {}, a.object_type === "bdb" ?
        h("a", { href: `#/databases/${a.object_uid}` }, `database ${a.object_uid}`) :
        `${a.object_type} ${a.object_uid}`),
      h("dt", {}, "Status"), h("dd", { id: "action-status" }, badge(a.status)),
      h("dt", {}, "Progress"), h("dd", {}, `${number(a.progress)}%`, bar(a.progress, a.status)),
      h("dt", {}, "Step"), h("dd", { id: "action-step" }, a.step || "-"),
      a.error ? h("dt", {}, "Error") : null, a.error ? h("dd", { class: "error-text" }, a.error) : null,
      h("dt", {}, "Parameters"), h("dd", { class: "mono" }, JSON.stringify(a.params || {})),
      a.result ? h("dt", {}, "Result") : null,
      a.result ? h("dd", { class: "mono" }, JSON.stringify(a.result)) : null,
      h("dt", {}, "Created"), h("dd", {}, when(a.creation_time)),
      h("dt", {}, "Updated"), h("dd", {}, when(a.update_time))));
  });
}

// ---- routing ----------------------------------------------------------------------------------

const ROUTES = [
  [/^#?\/?$/, clusterPage, "cluster"],
  [/^#\/databases$/, databasesPage, "databases"],
  [/^#\/databases\/new$/, databaseForm, "databases"],
  [/^#\/databases\/(?<uid>\d+)$/, databasePage, "databases"],
  [/^#\/databases\/(?<uid>\d+)\/edit$/, databaseForm, "databases"],
  [/^#\/actions$/, actionsPage, "actions"],
  [/^#\/actions\/(?<uid>[\w-]+)$/, actionPage, "actions"],
];

async function route() {
  stopPage();
  const hash = location.hash || "#/";
  const found = ROUTES.map(([re, page, nav]) => [hash.match(re), page, nav]).find(([m]) => m);
  document.querySelectorAll("[data-nav]").forEach((a) =>
    a.classList.toggle("active", found && a.dataset.nav === found[2]));
  if (!found) {
    view.replaceChildren(h("h1", {}, "Not found"), h("a", { href: "#/" }, "the cluster"));
    return;
  }
  const [match, page] = found;
  try {
    await page(match.groups || {});
  } catch (e) {
    if (e.status !== 401) showError(view, e);
  }
}

async function start() {
  const me = await get("/session");
  session.csrf = me.csrf_token;
  session.user = me.username;
  document.getElementById("who").textContent = `${me.username} · node ${me.node_uid}`;
  document.getElementById("logout").addEventListener("click", async () => {
    await fetch("/logout", { method: "POST", headers: { "X-CSRF-Token": session.csrf } })
      .catch(() => null);
    location.href = "/login";
  });
  window.addEventListener("hashchange", route);
  await route();
}

start();
