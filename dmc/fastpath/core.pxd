# The Core: everything one proxy's loop owns (its shards, clients, scratch buffers), its
# limits, and the connection kinds epoll hands back. Every connection struct (Listener, Wake,
# Client, Backend) starts with `kind`, so that the pointer epoll returns tells what it is.

cdef enum:
    MAX_EVENTS = 512
    READ_CHUNK = 65536
    MAX_INFLIGHT = 1024         # per client; past it the client is not read until replies drain
    OUTPUT_PAUSE = 1048576      # per client; past it the client is not read until output drains
    MAX_SHARDS = 4096
    FREE_REQUESTS_MAX = 4096    # requests kept for reuse; more are freed
    RETRY_MIN_US = 50000
    RETRY_MAX_US = 1000000


cdef enum ConnKind:
    KIND_LISTENER = 1
    KIND_CLIENT = 2
    KIND_BACKEND = 3
    KIND_WAKE = 4           # the loop's eventfd: another thread wants a turn to end (wakeup())


cdef struct Listener:
    int kind
    int fd


cdef struct Wake:
    int kind                # KIND_WAKE
    int fd                  # eventfd: written by wakeup() from any thread, drained by the loop


cdef struct Core:
    int epfd
    Listener listener
    Wake wake
    bint woken                  # the loop drained a wakeup() (run_until_wakeup returns)
    bint paused                 # no new request goes to a shard; clients wait, read-paused
    long long now_us
    CommandInfo **commands
    # shard table: only grows; the slot map points into it
    Shard *shards
    int nshards
    int conns_per_shard
    unsigned short slot_map[SLOT_COUNT]
    unsigned long long map_version
    int default_shard           # where keyless commands go; -1: to be found again (default_shard())
    int nbusy                   # shards known busy running a script (busy.pxi)
    int *active                 # shard indices of the current map, in map order
    int nactive
    # clients
    int nclients
    int max_clients
    unsigned long long next_client_id
    unsigned long long total_connections
    unsigned long long rejected_connections
    long long backend_timeout_us
    size_t client_output_limit  # a client owed more reply bytes than this is disconnected (0: no limit)
    char server_version[32]     # the shards' redis_version, reported by HELLO
    char listen_addr[48]        # ip:port of the endpoint (CLIENT LIST's laddr)
    char *password              # the database password (the `default` user's), or NULL
    long long idle_timeout_us   # clients idle longer are closed (0: never), as Redis's `timeout`
    long long next_idle_check_us
    Client *dirty_clients
    Client *all_clients
    Client *monitors            # clients in MONITOR mode
    Client *closed_clients
    Backend *dirty_backends
    Backend *closed_backends
    # scratch, reused by every command
    ArgVec av
    KeyList keys
    Buf merged
    Buf subcommand
    Buf monitor_line
    ArgVec relay_av             # a relayed notification, parsed
    Buf relay_cmd               #   and re-published
    char *read_chunk
    unsigned short *key_shard
    int key_shard_cap
    int *shard_frag             # shard index -> fragment index, while splitting a command
    Request *free_requests      # requests to reuse (req_get), linked by `next`
    int nfree_requests
    unsigned long long random_state     # this core's PRNG (core_random): no state shared between proxies
