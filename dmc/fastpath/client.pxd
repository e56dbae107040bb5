# Client connections: flags, state, input, output and limits.
# Declarations; the code is in client.pxi.

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
    CF_REPLY_OFF = 16384    # CLIENT REPLY OFF: its requests' replies are dropped (pushes are not)
    CF_REPLY_SKIP = 32768   # CLIENT REPLY SKIP: the next request's reply is dropped
    CF_CROSS = 65536        # its next request needs every worker's clients (workers.pxi)
    CF_TLS_WANT_WRITE = 131072  # TLS: a read waits for the socket to be writable (tls.pxi)
    CF_TLS_HANDSHAKE = 262144   # TLS: its handshake is not done yet (tls.pxi: the handshake timeout)


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
    size_t input_counted    # buf_len(rbuf) as counted in the process's input total (input_limit)
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
    Client *next_cross      # on core.cross_waiting (CF_CROSS)
    User *user              # the ACL user it authenticated as (acl.pxi); NULL: `default`
    int tflags              # CF_TRACKING: TF_* (tracking.pxd)
    int track_slot          # its slot in the tracking registry (0: none)
    unsigned long long track_redirect   # CLIENT TRACKING ... REDIRECT: that client's id (0: none)
    int track_redirect_slot
    Buf track_prefixes      # BCAST prefixes (tracking.pxi: prefix_next)
    SSL *ssl                # its TLS session (tls.pxi); NULL: plaintext


cdef void accept_clients(Core *core) noexcept nogil
cdef void client_close(Core *core, Client *c) noexcept nogil
cdef void close_idle_clients(Core *core) noexcept nogil
cdef void client_pause(Core *core, Client *c) noexcept nogil
cdef void req_parse(Core *core, Client *c, Buf *inp) noexcept nogil
cdef void client_recv(Core *core, Client *c) noexcept nogil
cdef void client_send(Core *core, Client *c) noexcept nogil
cdef void format_address(const sockaddr_in *sa, char *out) noexcept nogil
