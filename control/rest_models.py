"""The REST API's models: what cnm_http answers and the bodies of its action requests (the
database's own fields are control/schema.py's BdbCreate and BdbSettings). FastAPI generates the
OpenAPI document from these."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from control.schema import MAX_UID

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


class Shard(BaseModel):
    model_config = ConfigDict(extra="allow")
    uid: int
    bdb_uid: int | None = None
    node_uid: int | None = None
    role: str | None = None
    port: int | None = None
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
    name: str = Field(max_length=64, description="which certificate: api (the REST API)")
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
