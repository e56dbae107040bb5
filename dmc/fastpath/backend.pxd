# Backend connections to the shards: their roles, states and the shard table.
# Declarations; the code is in backend.pxi.

# What a backend connection is for; its reader hands each reply frame to the role's handler
# (backend.pxi: rsp_fragment, rsp_waiter; pubsub.pxi: rsp_subscriber, rsp_relay).
cdef enum BackendRole:
    ROLE_SHARED = 0         # one of a shard's shared connections: fragments of every client, in order
    ROLE_DEDICATED = 1      # a client's own: blocking commands, WATCH ... EXEC
    ROLE_SUBSCRIBER = 2     # a client's own, subscribed: every frame goes straight to `owner`
    ROLE_WAITER = 3         # a client's own for one WAIT: its CLIENT ID, then the WAIT's reply
    ROLE_RELAY = 4          # the shard's keyspace-notification relay (pubsub.pxi)
    ROLE_CONTROL = 5        # the shard's out-of-band one: SCRIPT KILL & co. and the busy probe (busy.pxi)
    ROLE_TRACKED = 6        # a shard's connection for tracking clients; its pushes are invalidations (tracking.pxi)
    ROLE_BCAST = 7          # the shard's BCAST tracking connection: every write's invalidation (tracking.pxi)


# Backend states
cdef enum:
    BK_DOWN = 0
    BK_CONNECTING = 1
    BK_UP = 2


cdef struct Backend:
    int kind
    int fd
    unsigned int events
    int state
    int role                # BackendRole
    int shard               # index into the core's shard table
    Buf rbuf
    Buf wbuf
    size_t need
    Fragment *qhead         # fragments awaiting replies, in the order they were written
    Fragment *qtail
    int queued
    bint dirty
    Backend *next_dirty
    long long retry_at_us
    long long retry_delay_us
    Client *owner           # a client's dedicated connection; NULL for the shared ones
    int proto               # RESP version it speaks (HELLO 3 is sent first when 3)
    int skip_replies        # replies to drop before the first fragment's (the HELLO reply)
    bint used               # a RESP3 connection is opened, and kept open, once a client needs it
    bint barrier            # ROLE_SUBSCRIBER: the proxy's PING barrier is in flight (its reply is dropped)
    bint synced             #   the barrier's reply is in and nothing was sent since
    int subscriptions       #   channels + patterns left, from the last (un)subscribe frame
    int shard_subscriptions #   and sharded channels left (Redis counts them apart)
    int channels            #   of which channels, patterns and sharded channels (counters.pxi:
    int patterns            #   count_subscriptions keeps the endpoint's sums)
    int shard_channels
    Backend *next_waiter    # ROLE_WAITER: the client's next WAIT connection
    bint wants_id           #   its next reply is its CLIENT ID on the shard
    long long shard_client_id   #   that id, for CLIENT UNBLOCK (0 until known); ROLE_TRACKED: for REDIRECT
    int unblock_wanted      #   CLIENT UNBLOCK to send once that id is known: 1 TIMEOUT, 2 ERROR
    bint hold               # ROLE_TRACKED (RESP2): requests queued, not sent, until its REDIRECT id is known
    Backend *next_closed
    User *user              # the ACL user it runs as (acl.pxi); NULL: `default`, the proxy's own
    bint authing            #   its HELLO ... AUTH is not answered yet: nothing after it is sent (auth_hold)
    size_t auth_hold        #   bytes that may still be sent before that answer
    int auth_before         #   replies due before the AUTH's own (a WAIT connection's CLIENT ID)
    SSL *ssl                # shard TLS (tls.pxi, core.shard_tls_ctx): its session; NULL: plaintext
    bint tls_want_write     #   an SSL_read needs the socket writable first (read again then)


cdef struct Shard:
    char label[64]          # host:port, as shown in errors
    sockaddr_in addr
    int nconns              # 2 * per_proto
    int per_proto           # shared connections for RESP2 clients, then as many for RESP3 ones
    int rr[2]               # round-robin position among each protocol's connections
    Backend *conns
    bint active             # part of the current shard map
    long long suspect_until_us  # its connection failed: requests for it are held till then,
                                # or till the next map (hold.pxi)
    char run_id[41]         # the run_id its process answered last (hold.pxi; "": not known yet)
    Backend *relay          # its keyspace notifications, re-published on the pub/sub shard
    Backend *auth_checker   # where AUTH user pass of clients is checked (acl.pxi); NULL until used
    Backend *control[2]     # control connections (RESP2, RESP3), opened on first use (busy.pxi)
    Backend *spare[2]       # a connected one (RESP2, RESP3) for the next client that needs its own
    unsigned long long used_memory  # its used_memory in the last INFO the endpoint merged
    long long used_memory_us        #   when (0: never)
    unsigned long long memory_share # CONFIG SET maxmemory: its share (route.pxi: param_split)
    bint busy               # its last probe was answered -BUSY: a script runs
    char busy_reply[192]    #   that -BUSY line, answered for it meanwhile
    long long busy_seen_us  #   when it was last seen
    long long probe_sent_us     # a probe in flight since then (0: none)
    long long probe_answered_us
    Backend *tracked[2]     # tracking clients' connections, RESP2 and RESP3 (tracking.pxi)
    Backend *bcast          # while some client is in BCAST mode: every write's invalidation
    int null_pending        # flush invalidations still to come from it for the flush announced
    bint tracking_lost      # a tracked connection was lost: a null invalidation when it is back


cdef Backend *shard_backend(Core *core, int shard, int proto) noexcept nogil
cdef void frag_send(Core *core, int shard, Fragment *f, const char *data, size_t n) noexcept nogil
cdef Backend *frag_backend(Core *core, int shard, Client *c) noexcept nogil
cdef void frag_send_on(Core *core, Backend *b, Fragment *f, const char *data, size_t n) noexcept nogil
cdef void req_send_unanswered(Core *core, Backend *b, const char *cmd, size_t n) noexcept nogil
cdef Backend *backend_new(int shard, Client *owner, int proto, int role) noexcept nogil
cdef Backend *client_dedicated(Core *core, Client *c, int shard) noexcept nogil
cdef void dedicated_close(Core *core, Backend *b) noexcept nogil
cdef Backend *spare_take(Core *core, Client *c, int shard) noexcept nogil
cdef void spare_open(Core *core, int shard, int proto) noexcept nogil
cdef void spares_close(Core *core, int shard) noexcept nogil
cdef void spares_sync(Core *core) noexcept nogil
cdef void dedicated_release(Core *core, Client *c, Backend *b) noexcept nogil
cdef void backend_connect(Core *core, Backend *b) noexcept nogil
cdef void backend_writable(Core *core, Backend *b) noexcept nogil
cdef void backend_mark_dirty(Core *core, Backend *b) noexcept nogil
cdef void backend_send(Core *core, Backend *b) noexcept nogil
cdef void backend_recv(Core *core, Backend *b) noexcept nogil
cdef void backend_fail(Core *core, Backend *b, const char *why) noexcept nogil
cdef void backend_fail_line(Core *core, Backend *b, const char *line) noexcept nogil
cdef void backend_drop(Core *core, Backend *b, const char *why) noexcept nogil
cdef void backend_close_answering(Core *core, Backend *b, const char *line,
                                  bint shard_failed) noexcept nogil
cdef void backends_tick(Core *core) noexcept nogil

# Shard TLS (tls.pxi): the proxy's side of its connections to shards with a tls-port.
cdef bint backend_tls_start(Core *core, Backend *b) noexcept nogil
cdef int backend_tls_handshake(Core *core, Backend *b) noexcept nogil
cdef ssize_t backend_tls_read(Core *core, Backend *b) noexcept nogil
cdef ssize_t backend_tls_write(Backend *b, const char *buf, size_t n) noexcept nogil
cdef void backend_socket_close(Backend *b) noexcept nogil
