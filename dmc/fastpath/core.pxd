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
    TICK_US = 1000              # the loop's timers (backends_tick) run at most this often


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
    bint fenced                 # the node lost the majority: writes and reads refused (fence.pxi)
    long long lease_until_us    # the node's majority lease: fenced from then on by itself (0: none)
    long long hold_us           # a request for a down shard is held this long (hold.pxi; 0: never)
    long long fence_hold_us     # a request the fence refuses is held this long first (0: never)
    Held *held_head             # held fragments, oldest first
    Held *held_tail
    size_t held_bytes
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
    long long next_dedicated_check_us   # clients' own connections looked at for a script (busy.pxi)
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
    size_t client_query_limit   # a client with more unparsed input is disconnected (0: no limit)
    unsigned long long qbuf_limit_disconnections    # clients closed for client_query_limit
    unsigned long long evicted_clients              # clients closed for the process's input budget
    char server_version[32]     # the shards' redis_version, reported by HELLO
    char listen_addr[48]        # ip:port of the endpoint (CLIENT LIST's laddr)
    char *password              # the database password (the `default` user's), or NULL
    long long idle_timeout_us   # clients idle longer are closed (0: never), as Redis's `timeout`
    long long next_idle_check_us
    long long next_tick_us      # when backends_tick runs next (TICK_US)
    Client *dirty_clients
    Client *all_clients
    Client *monitors            # clients in MONITOR mode
    Client *closed_clients
    Backend *dirty_backends     # to write at the end of the turn, in the order they were
    Backend *dirty_backends_tail    # given something: what reached the proxy first leaves first
    Backend *closed_backends
    # scratch, reused by every command
    ArgVec av
    KeyList keys
    Buf merged
    Buf subcommand
    char split_values[PARAM_SPLIT_MAX][24]  # a CONFIG SET's per-shard values (route.pxi: params_rewrite)
    int split_arg               # its argument that differs per shard (Shard.memory_share), 0: none
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
    # multi-key commands over several shards (sequential.pxi)
    int multi_slot              # MULTI_SLOT_REFUSE (CROSSSLOT) or MULTI_SLOT_SEQUENTIAL
    unsigned char *seq_locks    # per slot: held by a running sequence (SLOT_COUNT bytes, or NULL)
    Request *seq_waiting        # sequences waiting for a slot another one holds, in arrival order
    bint seq_waking             # seq_wake() runs: a sequence that ends meanwhile asks it again
    bint seq_wake_again
    bint seq_stop_before_write_back  # test hook (DMC_TEST_STOP_BEFORE_WRITE_BACK): SIGSTOP between two steps
    User *users                 # ACL users clients authenticated as, other than `default` (acl.pxi)
    bint keyspace_relay_off     # another proxy of the database relays its notifications (pubsub.pxi)
    ScriptsSpread *scripts_spread   # EVAL bodies cached on every shard (scripts.pxi); NULL: none yet
    Tracking *tracking          # client-side caching, from the first CLIENT TRACKING on (tracking.pxi)
    size_t tracking_max_keys    # the proxy's tracking table bound (0: TRACKING_MAX_KEYS)
    Counters counters           # what the endpoint was asked and answered (counters.pxd)
    InfoOwn info_own            # the endpoint's own INFO figures of the INFO being merged (info.pxi)
    ClusterApi *cluster         # the OSS Cluster API's topology and replies (cluster_api.pxi); NULL: off
    Workers *workers            # the endpoint's worker threads (workers.pxi); NULL: one thread
    int worker                  #   this Core's index among them
    bint world_held             #   every worker is stopped for this one (CLIENT LIST/KILL/UNBLOCK)
    Client *cross_waiting       #   clients whose next request waits for that (CF_CROSS)
    Buf users_deleted           #   users ACL DELUSER deleted here: the other workers' clients go too
    SSL_CTX *tls_ctx            # client TLS (tls.pxi): new clients speak TLS; NULL: plaintext
    unsigned long long tls_handshake_failures   # clients closed in their TLS handshake
    long long tls_handshake_timeout_us  # a client still in its handshake after this is closed (0: never)
    long long next_handshake_check_us
    unsigned long long tls_handshake_timeouts   # of those failures: the ones closed for that
    SSL_CTX *shard_tls_ctx      # shard TLS (tls.pxi): connections to shards speak TLS; NULL: plaintext
    unsigned long long shard_tls_failures       # shard connections whose TLS handshake failed
