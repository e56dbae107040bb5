"""The REST API's models: the bodies cnm_http accepts (a database's settings, BdbSettings and
BdbCreate; the cluster's, ClusterPolicy; the bodies of action requests) and what it answers.
FastAPI validates requests and generates the OpenAPI document from these. The records kept in
CCS are control/schema.py's msgspec structs; only cnm_http (and the tests) import pydantic, so
that the other node services start without it."""

from __future__ import annotations

import ssl
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from control.discovery import PROXY_POLICIES
from control.schema import (AOF_POLICIES, DEFAULT_QUERY_BUFFER, EVICTION_POLICIES, MAX_COUNT,
                            MAX_MEMORY_SIZE, MAX_QUERY_BUFFER, MAX_SECONDS, MAX_UID,
                            MULTI_SLOT_POLICIES, PERSISTENCE, TLS_MODES, TLS_VERSIONS,
                            ENABLED_DISABLED)


class SnapshotRule(BaseModel):
    """One rule of a snapshot policy: an RDB is written `secs` seconds after at least `writes`
    writes (Redis Enterprise's snapshot_policy, Redis's `save <secs> <writes>`)."""
    model_config = ConfigDict(extra="forbid")

    secs: int = Field(ge=1, le=MAX_SECONDS)
    writes: int = Field(1, ge=1, le=MAX_COUNT)


class AlertSetting(BaseModel):
    """One alert of a database (RE's `bdb_alert_settings_with_threshold`): on or off, and its
    threshold in the alert's unit (control/alerts.py), a number or RE's string of one."""
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    threshold: str | float | None = None

    @field_validator("threshold")
    @classmethod
    def _a_number(cls, value):
        if isinstance(value, str):
            try:
                float(value)
            except ValueError:
                raise ValueError(f"threshold {value!r} is not a number") from None
        return value


class BdbAlertSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bdb_size: AlertSetting | None = None
    bdb_high_latency: AlertSetting | None = None
    bdb_high_throughput: AlertSetting | None = None
    bdb_low_throughput: AlertSetting | None = None
    bdb_backup_delayed: AlertSetting | None = None
    bdb_long_running_action: AlertSetting | None = None
    bdb_endpoint_failed: AlertSetting | None = None     # on unless set off (control/alerts.py)


class ClusterAlertSettings(BaseModel):
    """The cluster's and its nodes' alerts (RE's `cluster_alert_settings_with_threshold`), in
    the units of control/alerts.py: node_memory, node_cpu_utilization and
    node_persistent_storage are percent used. A field left out keeps its setting."""
    model_config = ConfigDict(extra="forbid")

    node_failed: AlertSetting | None = None
    node_memory: AlertSetting | None = None
    node_cpu_utilization: AlertSetting | None = None
    node_persistent_storage: AlertSetting | None = None
    cluster_multiple_nodes_down: AlertSetting | None = None
    cluster_too_few_nodes_for_replication: AlertSetting | None = None


class RolePermission(BaseModel):
    """One grant of a database's roles_permissions (RE's): the users of `role_uid` log in to
    the database with the rules of `redis_acl_uid`."""
    model_config = ConfigDict(extra="forbid")

    role_uid: int = Field(ge=1, le=MAX_UID)
    redis_acl_uid: int = Field(ge=1, le=MAX_UID)


class ClientCert(BaseModel):
    """A client certificate a database trusts (RE's authentication_ssl_client_certs item)."""
    model_config = ConfigDict(extra="forbid")
    client_cert: str = Field(max_length=65536, description="PEM")

    @field_validator("client_cert")
    @classmethod
    def _a_certificate(cls, pem: str) -> str:
        from control.certificates import load_certificate   # (cryptography: loaded when used)
        load_certificate(pem.encode())      # CertificateError is a ValueError: a 400 with why
        return pem


AuthorizedName = Annotated[str, Field(min_length=1, max_length=253,
                                      pattern=r"^[^\x00-\x1f\x7f]+$")]


class BdbSettings(BaseModel):
    """The fields of a database a user sets; all optional, for PUT. A field left out is not
    changed; none may be null (the types say so in the OpenAPI document: pydantic does not
    validate a default) except `backup_location`, whose null means the default folder."""
    model_config = ConfigDict(extra="forbid")

    name: str = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
    port: int = Field(None, ge=1, le=65535, description="below 1024 only with "
                      "allow_privileged_port; the default is a free port in 10000-19999")
    allow_privileged_port: bool = Field(
        False, description="accept a port below 1024 (the shards' node services must be "
        "allowed to bind it)")
    memory_size: int = Field(None, ge=1 << 20, le=MAX_MEMORY_SIZE,
                             description="bytes, split over the shards")
    shards_count: int = Field(None, ge=1, le=64)
    replication: bool = None
    data_persistence: Literal[PERSISTENCE] = Field(
        None, description="with replication only the replicas persist; without it, the master")
    aof_policy: Literal[AOF_POLICIES] = None
    snapshot_policy: list[SnapshotRule] = Field(
        None, min_length=1, max_length=16, description="data_persistence `snapshot`: save "
        "after `secs` seconds if at least `writes` writes were made (Redis's `save`)")
    authentication_redis_pass: str = Field(None, max_length=256)
    eviction_policy: Literal[EVICTION_POLICIES] = None
    backup_interval: int = Field(
        None, ge=0, le=MAX_SECONDS, description="seconds between scheduled backups "
        "(job_scheduler); 0: none")
    backup_location: str | None = Field(
        None, pattern=r"^/", max_length=4096, description="absolute path of the folder that "
        "holds the database's backups (default, or null: `<cluster folder>/backups`); it must "
        "be reachable at this path from every node")
    multi_slot_commands: Literal[MULTI_SLOT_POLICIES] = Field(
        None, description="multi-key commands over keys of several shards: `refuse` "
        "(CROSSSLOT, as Redis Enterprise) or `sequential` (the proxy carries them out in "
        "single-shard steps, dmc/fastpath/sequential.pxi)")
    proxy_policy: Literal[PROXY_POLICIES] = Field(
        None, description="which nodes' proxies DNS and Sentinel advertise (default all-nodes; "
        "see control/discovery.py)")
    oss_cluster: bool = Field(
        None, description="the OSS Cluster API (Redis Enterprise's name): each node's proxy "
        "answers CLUSTER SLOTS, SHARDS, NODES ... with the proxies of the nodes that hold "
        "master shards as the cluster's nodes, and -MOVED for keys of another node's "
        "(dmc/fastpath/cluster_api.pxi); default false")
    proxy_threads: int = Field(
        None, ge=1, le=64, description="worker threads (event loops) of each node's proxy "
        "for this database's endpoint (Redis Enterprise's proxy `threads`); default 1")
    client_query_buffer_limit: int = Field(
        None, ge=1 << 20, le=MAX_QUERY_BUFFER, description="bytes a client's unparsed input "
        "may hold on the proxy before it is disconnected (Redis's client-query-buffer-limit; "
        "default 1 GB)")

    tls_mode: str = Field(
        None, description="client TLS (Redis Enterprise's name): `enabled`, every client "
        "speaks TLS to the endpoint, whose certificate is the nodes' `proxy` one, signed by "
        "the cluster CA (`dmc cluster ca`); a plaintext client is refused; default disabled. "
        "RE's `replica_ssl` (TLS only for Replica Of / Active-Active syncing) is refused: dmc "
        "has no Replica Of")
    enforce_client_authentication: Literal[ENABLED_DISABLED] = Field(
        None, description="with tls_mode enabled: `enabled`, a client must present a "
        "certificate signed by the cluster CA or listed in authentication_ssl_client_certs; "
        "default disabled")
    authentication_ssl_client_certs: list[ClientCert] = Field(
        None, max_length=256, description="client certificates trusted besides those the "
        "cluster CA signed (a listed certificate itself is trusted, not only its issuer)")
    authorized_names: list[AuthorizedName] = Field(
        None, max_length=256, description="with enforce_client_authentication: a client "
        "certificate must name one of these (its subject CN or a DNS SAN, exactly; checked "
        "at the handshake); empty: any trusted certificate")

    @field_validator("tls_mode")
    @classmethod
    def _a_tls_mode(cls, mode: str) -> str:
        if mode == "replica_ssl":
            raise ValueError("tls_mode replica_ssl encrypts only replication between clusters "
                             "(Replica Of, Active-Active syncer), and dmc has neither: use "
                             "enabled or disabled")
        if mode not in TLS_MODES:
            raise ValueError(f"tls_mode must be one of {', '.join(TLS_MODES)}")
        return mode
    data_internode_encryption: bool = Field(
        None, description="data-path internode encryption (DPINE, Redis Enterprise's name): "
        "the proxies reach the shards, and replicas their masters, over TLS (each shard's "
        "tls-port, the nodes' `cp` certificates, mutual); default false")

    roles_permissions: list[RolePermission] = Field(
        None, max_length=256, description="which roles' users may log in to the database "
        "(AUTH name password) and with which Redis ACL (control/access.py); applied as ACL "
        "users on every shard")

    alert_settings: BdbAlertSettings = Field(
        None, description="the database's alerts and thresholds (alert_mgr): bdb_size % of "
        "memory_size, bdb_high_latency µs, bdb_high/low_throughput ops/s, bdb_backup_delayed "
        "and bdb_long_running_action seconds")


class ClusterPolicy(BaseModel):
    """PUT /v1/cluster: the cluster's settings (all optional; a field left out is unchanged)."""
    model_config = ConfigDict(extra="forbid")

    shards_overbooking: bool = Field(
        None, description="Redis Enterprise's policy: true ignores the databases' memory_size "
        "when placing shards (default false: a database whose shards do not fit in the nodes' "
        "memory is refused, 406)")
    overbooking_percent: int = Field(
        None, ge=0, le=1000, description="how much more than a node's memory its shards may "
        "book, in percent (default 0)")
    # alert delivery (control/alert_delivery.py)
    alerts_webhook_url: str = Field(
        None, max_length=2000, pattern=r"^(https?://\S+)?$",
        description="every alert raised or cleared is POSTed here as JSON (empty: none)")
    email_alerts: bool = Field(None, description="e-mail every alert raised or cleared")
    alerts_email_to: list[str] = Field(None, max_length=100,
                                       description="the addresses alert e-mails go to")
    email_from: str = Field(None, max_length=320)
    smtp_host: str = Field(None, max_length=253)
    smtp_port: int = Field(None, ge=1, le=65535)
    smtp_username: str = Field(None, max_length=320)
    smtp_password: str = Field(None, max_length=1000, description="never shown by GET")
    smtp_use_tls: bool = Field(None, description="STARTTLS before logging in")
    login_lockout_threshold: int = Field(
        None, ge=0, le=MAX_COUNT, description="failed REST logins as one user before its "
        "logins are refused (429) for login_lockout_duration (default 5; 0: never)")
    login_lockout_duration: int = Field(
        None, ge=1, le=MAX_SECONDS, description="seconds a locked-out user's logins are "
        "refused (default 1800)")
    login_lockout_counter_reset_after: int = Field(
        None, ge=1, le=MAX_SECONDS, description="seconds after the first failed login the "
        "count starts again (default 900)")
    alert_settings: ClusterAlertSettings = Field(
        None, description="the cluster's and the nodes' alerts: on or off, and thresholds "
        "(kept in CCS's cluster:alert_settings; an alert left out keeps its setting)")
    min_data_TLS_version: Literal[TLS_VERSIONS] = Field(
        None, description="the oldest TLS version of the data path: database endpoints, and "
        "proxy to shard and the shards' tls-ports under data_internode_encryption (default 1.2)")
    data_cipher_list: str = Field(
        None, max_length=4096, description="the data path's TLS 1.2 ciphers (OpenSSL's cipher "
        "list syntax; empty: OpenSSL's defaults)")
    data_cipher_suites_tls_1_3: str = Field(
        None, max_length=1024, pattern=r"^([A-Z0-9_]+(:[A-Z0-9_]+)*)?$",
        description="the data path's TLS 1.3 ciphersuites, colon separated (empty: OpenSSL's)")
    min_control_TLS_version: Literal[TLS_VERSIONS] = Field(
        None, description="the oldest TLS version of the control plane: the REST API's "
        "HTTPS, CCS's tls-port and the nodes' mutual TLS (gossip, heartbeats; default 1.2)")
    control_cipher_suites: str = Field(
        None, max_length=4096, description="the control plane's TLS 1.2 ciphers (OpenSSL's "
        "cipher list syntax; empty: the defaults)")

    @field_validator("data_cipher_list", "control_cipher_suites")
    @classmethod
    def _a_cipher_list(cls, ciphers: str) -> str:
        if ciphers:
            try:
                ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(ciphers)
            except ssl.SSLError:
                raise ValueError(f"no cipher OpenSSL knows in {ciphers!r}") from None
        return ciphers


class BdbCreate(BdbSettings):
    """POST /v1/bdbs: a name is required, everything else has Redis Enterprise's default."""
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
    memory_size: int = Field(100 << 20, ge=1 << 20, le=MAX_MEMORY_SIZE,
                             description="bytes, split over the shards")
    shards_count: int = Field(1, ge=1, le=64)
    replication: bool = False
    data_persistence: Literal[PERSISTENCE] = "disabled"
    aof_policy: Literal[AOF_POLICIES] = "appendfsync-every-sec"
    snapshot_policy: list[SnapshotRule] = Field(
        default_factory=lambda: [SnapshotRule(secs=3600, writes=1)], min_length=1,
        max_length=16)
    authentication_redis_pass: str = Field("", max_length=256)
    eviction_policy: Literal[EVICTION_POLICIES] = "volatile-lru"
    backup_interval: int = Field(
        0, ge=0, le=MAX_SECONDS, description="seconds between scheduled backups "
        "(job_scheduler); 0: none")
    client_query_buffer_limit: int = Field(
        DEFAULT_QUERY_BUFFER, ge=1 << 20, le=MAX_QUERY_BUFFER, description="bytes a client's "
        "unparsed input may hold on the proxy (Redis's client-query-buffer-limit)")
    multi_slot_commands: Literal[MULTI_SLOT_POLICIES] = "refuse"
    oss_cluster: bool = False
    proxy_threads: int = Field(1, ge=1, le=64)
    tls_mode: str = "disabled"              # (checked by BdbSettings._a_tls_mode)
    enforce_client_authentication: Literal[ENABLED_DISABLED] = "disabled"
    authentication_ssl_client_certs: list[ClientCert] = Field(default_factory=list,
                                                              max_length=256)
    authorized_names: list[AuthorizedName] = Field(default_factory=list, max_length=256)
    data_internode_encryption: bool = False
    roles_permissions: list[RolePermission] = Field(default_factory=list, max_length=256)


class ErrorReply(BaseModel):
    error_code: str
    description: str


class FailedNode(BaseModel):
    node_uid: int
    addr: str | None = None
    reason: str | None = Field(None, description="why its dmcproxy cannot serve the endpoint")
    time: float | None = None


class Endpoint(BaseModel):
    uid: str
    port: int
    dns_address_master: str | None = Field(None, description="the endpoint's DNS name "
                                           "(pdns_server)")
    addr: list[str]
    addr_type: str
    proxy_policy: str
    status: str = Field("active", description="failed: a node cannot serve it (failed_nodes)")
    failed_nodes: list[FailedNode] = []


class Bdb(BaseModel):
    """A database. Fields cnm_exec adds later are shown too; a record written by other means
    than POST /v1/bdbs may lack some of these."""
    model_config = ConfigDict(extra="allow")
    uid: int
    name: str | None = None
    port: int | None = None
    memory_size: int | None = None
    shards_count: int | None = None
    replication: bool | None = None
    data_persistence: str | None = None
    aof_policy: str | None = None
    snapshot_policy: list[dict] | None = None
    authentication_redis_pass: str | None = None
    eviction_policy: str | None = None
    multi_slot_commands: str | None = Field(None, description="refuse (CROSSSLOT) or sequential")
    oss_cluster: bool | None = Field(None, description="the OSS Cluster API is on")
    proxy_threads: int | None = Field(None, description="worker threads of each node's proxy")
    tls_mode: str | None = Field(None, description="client TLS: enabled or disabled")
    enforce_client_authentication: str | None = Field(
        None, description="enabled: clients must present a trusted certificate")
    authentication_ssl_client_certs: list[dict] | None = None
    authorized_names: list[str] | None = Field(
        None, description="names (CN or DNS SAN) a client certificate must carry one of")
    data_internode_encryption: bool | None = Field(
        None, description="proxy to shard and shard replication over TLS (DPINE)")
    backup_interval: int | None = Field(None, description="seconds between scheduled backups; "
                                        "0: none")
    backup_location: str | None = Field(None, description="the folder of its backups")
    last_backup_time: float | None = Field(None, description="when the last backup that "
                                           "succeeded was taken")
    last_backup_id: str | None = None
    backup_status: str | None = Field(None, description="of the last backup: succeeded, failed")
    backup_failure_reason: str | None = None
    status: str | None = Field(None, description="pending, active, deleting, creation-failed")
    action_uid: str | None = Field(None, description="the action that last changed it")
    created_time: float | None = None
    last_changed_time: float | None = None
    shard_list: list[int] = []
    endpoints: list[Endpoint] = []


class Node(BaseModel):
    model_config = ConfigDict(extra="allow")
    uid: int
    addr: str | None
    status: Literal["active", "down"]
    shard_count: int
    shard_list: list[int]
    master: bool = Field(description="this node holds the writable CCS copy")
    uptime: float | None = Field(None, description="seconds since its heartbeatd started")
    services: dict[str, str] = {}


class Cluster(BaseModel):
    name: str
    master_node_uid: int | None
    term: int | None
    master_since: float | None
    nodes_count: int
    nodes_up: int
    bdbs_count: int
    shards_count: int
    shards_overbooking: bool = Field(False, description="memory_size is not checked against "
                                     "the nodes' memory")
    overbooking_percent: int = Field(0, description="how much more than a node's memory its "
                                     "shards may book")
    memory_size: int = Field(0, description="the memory of the nodes up (bytes)")
    memory_booked: int = Field(0, description="what the databases' shards book (bytes)")
    alerts_webhook_url: str | None = None
    email_alerts: bool = False
    alerts_email_to: list[str] = Field(default_factory=list)
    email_from: str | None = None
    smtp_host: str | None = None
    smtp_port: int | None = None
    smtp_username: str | None = None
    smtp_use_tls: bool = False          # (smtp_password is never shown)
    login_lockout_threshold: int = Field(5, description="failed logins before a user is "
                                         "locked out (0: never)")
    login_lockout_duration: int = Field(1800, description="seconds a user stays locked out")
    login_lockout_counter_reset_after: int = Field(900, description="seconds after which "
                                                   "failed logins are forgotten")
    min_data_TLS_version: str = "1.2"
    data_cipher_list: str = ""
    data_cipher_suites_tls_1_3: str = ""
    min_control_TLS_version: str = "1.2"
    control_cipher_suites: str = ""
    alert_settings: dict[str, AlertSetting] = Field(
        default_factory=dict, description="the cluster's and the nodes' alerts, defaults "
        "included")


class Shard(BaseModel):
    model_config = ConfigDict(extra="allow")
    uid: int
    bdb_uid: int | None = None
    node_uid: int | None = None
    role: str | None = None
    port: int | None = None
    tls_port: int | None = Field(None, description="its tls-port, served while its database "
                                 "has data_internode_encryption on")
    slots: Any = None
    status: str = Field("unknown", description="as redis_mgr last saw the process")


class Action(BaseModel):
    model_config = ConfigDict(extra="allow")
    action_uid: str
    name: str
    status: Literal["pending", "active", "completed", "failed"] | str
    progress: float = Field(0, description="0-100")
    step: str | None = None
    error: str | None = None
    object_type: str | None = None
    object_uid: int | None = None
    params: dict = {}
    result: dict | None = Field(None, description="what a completed backup or import made")
    creation_time: float | None = None
    update_time: float | None = None


class ActionStarted(BaseModel):
    model_config = ConfigDict(extra="allow")
    action_uid: str | None
    object_uid: int


class DryRun(BaseModel):
    """What a request would do, when it carries `?dry_run=1`; nothing was written."""
    model_config = ConfigDict(extra="allow")
    dry_run: Literal[True] = True
    action: str | None = Field(description="the action it would start (None: nothing to do)")
    object_uid: int | None
    params: dict = {}


class MigrateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target_node_uid: int = Field(ge=1, le=MAX_UID)


class BackupRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    location: str | None = Field(None, pattern=r"^/", max_length=4096,
                                 description="a folder for this backup only (default: the "
                                 "database's backup_location)")


class CertificateUpdate(BaseModel):
    """PUT /v1/cluster/update_cert (RE's body): a certificate and its unencrypted key, PEM."""
    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=64, description="which certificate: api (the REST API) or "
                      "proxy (the database endpoints' client TLS)")
    certificate: str = Field(max_length=65536)
    key: str = Field(max_length=65536)


class ImportRequest(BaseModel):
    """Exactly one of backup_id, backup_path, rdb_path."""
    model_config = ConfigDict(extra="forbid")
    backup_id: str | None = Field(None, description="a backup of from_bdb_uid, by default of "
                                  "this database")
    from_bdb_uid: int | None = Field(None, ge=1, le=MAX_UID, description="the database the backup was taken of")
    backup_path: str | None = Field(None, description="a backup's folder (absolute path)")
    rdb_path: str | None = Field(None, description="an RDB file, of a plain redis-server say "
                                 "(absolute path)")
    flush: bool = Field(False, description="empty the database before loading")


class BackupShard(BaseModel):
    model_config = ConfigDict(extra="allow")
    slots: list[list[int]]
    file: str
    bytes: int
    sha256: str
    keys: int
    source_shard_uid: int | None = None
    role: str | None = Field(None, description="of the shard the RDB was read from")


class Backup(BaseModel):
    """A complete backup: one RDB per slot range, listed in its manifest."""
    model_config = ConfigDict(extra="allow")
    backup_id: str
    bdb_uid: int
    name: str | None = None
    time: float = Field(description="when it was taken")
    path: str = Field(description="its folder")
    status: str
    keys: int = Field(description="keys in all its RDB files")
    redis_version: str | None = None
    scheduled: bool = False
    shards: list[BackupShard]


ERRORS = {code: {"model": ErrorReply, "description": what} for code, what in {
    400: "the body does not follow the schema", 401: "wrong or missing credentials",
    403: "the user's roles do not allow this request",
    429: "too many failed logins as this user: locked out for a while (Retry-After)",
    404: "no such object", 406: "a configuration the cluster cannot have",
    409: "another action is changing this database", 503: "CCS cannot be reached"}.items()}
