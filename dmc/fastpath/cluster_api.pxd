# The OSS Cluster API of a database (oss_cluster): CLUSTER ... answered by the proxy, -MOVED.
# Declarations; the code is in cluster_api.pxi.

cdef enum:
    CLUSTER_MAX_NODES = 256
    CLUSTER_REPLY_SLOTS = 0     # the replies made by dmc/cluster_api.py, per protocol
    CLUSTER_REPLY_SHARDS = 1
    CLUSTER_REPLY_NODES = 2
    CLUSTER_REPLY_INFO = 3
    CLUSTER_REPLY_MYID = 4
    CLUSTER_REPLIES = 5


cdef struct ClusterApi:
    Buf replies[2][CLUSTER_REPLIES]     # [RESP2, RESP3][CLUSTER_REPLY_*]
    short node_of[MAX_SHARDS]           # shard index -> cluster node serving it (-1: this proxy)
    char node_addr[CLUSTER_MAX_NODES][64]   # ip:port of each node's proxy, for -MOVED


cdef void cluster_api_free(ClusterApi *api) noexcept nogil
cdef bint cluster_redirected(Core *core, Request *r, ArgVec *av, KeyList *kl) noexcept nogil
cdef void route_local_cluster(Core *core, Client *c, Request *r, ArgVec *av) noexcept nogil
