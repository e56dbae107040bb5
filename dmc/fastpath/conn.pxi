# Connections: clients of the proxy, and backend connections to the shards.
#
# Every connection struct starts with `kind`, so that the pointer epoll hands back tells what it
# is. Client state is plain C: an idle client owns no buffer memory at all.

DEF MAX_EVENTS = 512
DEF READ_CHUNK = 65536
DEF MAX_INFLIGHT = 1024         # per client; past it the client is not read until replies drain
DEF OUTPUT_PAUSE = 1048576      # per client; past it the client is not read until output drains
DEF MAX_SHARDS = 4096
DEF RETRY_MIN_US = 50000
DEF RETRY_MAX_US = 1000000

cdef enum ConnKind:
    KIND_LISTENER = 1
    KIND_CLIENT = 2
    KIND_BACKEND = 3
    KIND_WAKE = 4           # the loop's eventfd: another thread wants a turn to end (wakeup())

# Client flags
cdef enum:
    CF_DIRTY = 1            # on the core's list of clients with output to write
    CF_CLOSE_AFTER_WRITE = 2
    CF_CLOSED = 4           # socket closed; struct freed at the end of the loop iteration
    CF_READ_PAUSED = 8      # not reading: too much output, too many requests in flight, or the proxy is paused
    CF_RESOLVING = 16       # a request waits for COMMAND GETKEYS; the ones after it wait too
    CF_BLOCKED = 32         # a blocking command is in flight; the requests after it wait
    CF_MULTI = 64           # between MULTI and EXEC/DISCARD: commands are queued by the proxy
    CF_MULTI_DIRTY = 128    # a command was refused while queueing: EXEC answers EXECABORT
    CF_PUBSUB = 256         # subscribed: its pub/sub commands go to `dedicated`, whose frames pass through
    CF_WAIT_DRAIN = 512     # a SUBSCRIBE or WAIT waits until the replies owed before it are written
    CF_WATCH = 1024         # WATCHing keys of `watch_shard` on `dedicated`, until EXEC/DISCARD/UNWATCH
    CF_AUTHED = 2048        # authenticated (or the database has no password)
    CF_PUBSUB_SYNC = 4096   # waits for the barrier on `dedicated`: its frames so far are all in
    CF_MONITOR = 8192       # MONITOR: on the core's list of monitors

# What a backend connection is for; its reader hands each reply frame to the role's handler
# (backend.pxi: rsp_fragment, rsp_waiter; pubsub.pxi: rsp_subscriber, rsp_relay).
cdef enum BackendRole:
    ROLE_SHARED = 0         # one of a shard's shared connections: fragments of every client, in order
    ROLE_DEDICATED = 1      # a client's own: blocking commands, WATCH ... EXEC
    ROLE_SUBSCRIBER = 2     # a client's own, subscribed: every frame goes straight to `owner`
    ROLE_WAITER = 3         # a client's own for one WAIT: its CLIENT ID, then the WAIT's reply
    ROLE_RELAY = 4          # the shard's keyspace-notification relay (pubsub.pxi)

# Backend states
cdef enum:
    BK_DOWN = 0
    BK_CONNECTING = 1
    BK_UP = 2


cdef struct Listener:
    int kind
    int fd


cdef struct Wake:
    int kind                # KIND_WAKE
    int fd                  # eventfd: written by wakeup() from any thread, drained by the loop


cdef struct Client:
    int kind
    int fd
    unsigned int events     # what epoll watches for now
    int flags
    unsigned long long id
    Client *prev            # every open client, for CLIENT LIST / KILL / UNBLOCK
    Client *next
    sockaddr_in peer        # formatted only for CLIENT LIST/INFO/KILL: idle clients stay small
    Buf name                # CLIENT SETNAME
    long long created_us
    long long last_us       # last request
    CommandInfo *last_cmd
    Buf rbuf                # a partial request carried over between reads
    Buf wbuf                # replies not yet written
    size_t need             # don't parse rbuf again before it holds this much
    Request *head           # requests in arrival order
    Request *tail
    int inflight
    size_t held             # bytes of answers kept until the requests before them are answered
    Backend *dedicated      # its own backend connection: blocking commands, WATCH, subscriptions
    Backend *waiters        # its own connections for the WAIT in flight, one per shard
    unsigned long long written          # shards (by index, 0-63) written to since its last WAIT
    unsigned long long *written_more    #   and shards 64 and up, when there are that many
    int written_more_words
    int proto               # RESP version chosen with HELLO (2 until then)
    int multi_shard         # CF_MULTI: the shard the transaction's keys live on, or -1
    int watch_shard         # CF_WATCH: the shard of the watched keys
    unsigned long long watch_map    # CF_WATCH: the shard map version watch_shard was found in
    unsigned long long multi_map    # CF_MULTI: the shard map version multi_shard was found in
    int multi_count         # CF_MULTI: commands queued
    Buf multi_cmds          # CF_MULTI: their bytes, sent as MULTI ... EXEC in one write
    Client *next_dirty
    Client *next_closed
    Client *next_monitor


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
    Backend *next_waiter    # ROLE_WAITER: the client's next WAIT connection
    bint wants_id           #   its next reply is its CLIENT ID on the shard
    long long shard_client_id   #   that id, for CLIENT UNBLOCK (0 until known)
    Backend *next_closed


cdef struct Shard:
    char label[64]          # host:port, as shown in errors
    sockaddr_in addr
    int nconns              # 2 * per_proto
    int per_proto           # shared connections for RESP2 clients, then as many for RESP3 ones
    int rr[2]               # round-robin position among each protocol's connections
    Backend *conns
    bint active             # part of the current shard map
    Backend *relay          # its keyspace notifications, re-published on the pub/sub shard
