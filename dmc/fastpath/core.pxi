# The proxy core: one epoll loop, its clients, its shards and their backend connections.
#
# Per command, everything here is C: read into a buffer, parse to positions, look the command
# up, hash its keys to slots, append its bytes to a backend connection's output, and when the
# reply frame is complete, copy it to the client's output in request order. Writes are batched:
# all the input of one loop iteration is routed first, then every dirty backend and every dirty
# client is written once, so N clients sharing a shard cost one write to that shard.
#
# The core never calls Python; the Proxy class around it (in _fastpath.pyx) holds the GIL only
# to configure it between loop iterations.

DEF MAX_EVENTS = 512
DEF READ_CHUNK = 65536
DEF MAX_INFLIGHT = 1024         # per client; past it the client is not read until replies drain
DEF OUTPUT_PAUSE = 1048576      # per client; past it the client is not read until output drains
DEF MAX_SHARDS = 4096
DEF RETRY_MIN_US = 50000
DEF RETRY_MAX_US = 1000000


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
    int default_shard
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


cdef inline long long monotonic_us() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <long long>ts.tv_sec * 1000000 + ts.tv_nsec // 1000


cdef void watch(Core *core, int fd, void *conn, unsigned int *current, unsigned int wanted) noexcept nogil:
    cdef epoll_event ev
    if current[0] == wanted:
        return
    ev.events = wanted
    ev.data.ptr = conn
    if current[0] == 0:
        epoll_ctl(core.epfd, EPOLL_CTL_ADD, fd, &ev)
    elif wanted == 0:
        epoll_ctl(core.epfd, EPOLL_CTL_DEL, fd, &ev)
    else:
        epoll_ctl(core.epfd, EPOLL_CTL_MOD, fd, &ev)
    current[0] = wanted


cdef inline void set_nodelay(int fd) noexcept nogil:
    cdef int one = 1
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one))


# ---- clients: output ----------------------------------------------------------------------------

cdef inline void client_mark_dirty(Core *core, Client *c) noexcept nogil:
    if not (c.flags & CF_DIRTY):
        c.flags |= CF_DIRTY
        c.next_dirty = core.dirty_clients
        core.dirty_clients = c


cdef void client_close(Core *core, Client *c) noexcept nogil:
    cdef Request *r
    cdef Request *nxt
    if c.flags & CF_CLOSED:
        return
    watch(core, c.fd, c, &c.events, 0)
    close(c.fd)
    c.fd = -1
    c.flags |= CF_CLOSED
    # Unanswered requests stay referenced by backend queues: orphan them, free the rest.
    r = c.head
    while r != NULL:
        nxt = r.next
        if r.pending == 0:
            request_free(r)
        else:
            r.client = NULL
        r = nxt
    c.head = c.tail = NULL
    c.inflight = 0
    if c.dedicated != NULL:
        dedicated_close(core, c.dedicated)
        c.dedicated = NULL
    waiters_close(core, c)
    if c.flags & CF_MONITOR:
        monitor_remove(core, c)
    free(c.written_more)
    c.written_more = NULL
    buf_free(&c.multi_cmds)
    buf_free(&c.name)
    if c.prev != NULL:
        c.prev.next = c.next
    else:
        core.all_clients = c.next
    if c.next != NULL:
        c.next.prev = c.prev
    buf_free(&c.rbuf)
    buf_free(&c.wbuf)
    core.nclients -= 1
    c.next_closed = core.closed_clients
    core.closed_clients = c


cdef void account(Request *r, const char *reply, long long now_us) noexcept nogil:
    cdef CommandInfo *cmd = r.cmd
    if cmd != NULL:
        cmd.calls += 1
        cmd.usec += <unsigned long long>(now_us - r.started_us)
        if reply_is_error(reply):
            cmd.errors += 1


cdef inline bint over_output_limit(Core *core, Client *c) noexcept nogil:
    return core.client_output_limit > 0 and buf_len(&c.wbuf) + c.held > core.client_output_limit


cdef void request_answer(Core *core, Request *r, const char *reply, size_t n) noexcept nogil:
    """The whole answer of r is known: write it now if r heads its client's queue, else keep it
    until the requests before it are answered."""
    cdef Client *c = r.client
    account(r, reply, core.now_us)
    if c == NULL:
        request_free(r)
        return
    if c.head != r:
        if buf_append(&r.reply, reply, n) < 0:
            client_close(core, c)
            return
        r.done = True
        c.held += n
        if over_output_limit(core, c):
            client_close(core, c)
        return
    if buf_append(&c.wbuf, reply, n) < 0:
        client_close(core, c)
        return
    c.head = r.next
    if c.head == NULL:
        c.tail = NULL
    c.inflight -= 1
    request_free(r)
    # Answers that were waiting behind r can go now, in order.
    while c.head != NULL and c.head.done:
        r = c.head
        c.held -= buf_len(&r.reply)
        if buf_append(&c.wbuf, buf_head(&r.reply), buf_len(&r.reply)) < 0:
            client_close(core, c)
            return
        c.head = r.next
        if c.head == NULL:
            c.tail = NULL
        c.inflight -= 1
        request_free(r)
    if over_output_limit(core, c):
        # A client that does not read its replies must not grow the proxy without bound.
        client_close(core, c)
        return
    client_mark_dirty(core, c)


cdef inline void request_answer_str(Core *core, Request *r, const char *line) noexcept nogil:
    request_answer(core, r, line, strlen(line))


cdef void request_answer_error(Core *core, Request *r, const char *fmt, const char *arg) noexcept nogil:
    cdef char line[256]
    snprintf(line, sizeof(line), fmt, arg)
    request_answer(core, r, line, strlen(line))


# ---- merging the replies of several shards ------------------------------------------------------

cdef long long info_field(const char *p, const char *end, const char *name) noexcept nogil:
    """The integer after `name=` in p[0:end] (a keyspace line); 0 when absent."""
    cdef size_t n = strlen(name)
    cdef long long v = 0
    while p + n < end:
        if memcmp(p, name, n) == 0 and p[n] == c'=':
            p += n + 1
            while p < end and c'0' <= p[0] <= c'9':
                v = v * 10 + (p[0] - c'0')
                p += 1
            return v
        p += 1
    return 0


cdef int merge_info(Request *r, Buf *out) noexcept nogil:
    """INFO from every shard: the first shard's text, with `db0:keys=...,expires=...` summed
    over all shards (the keyspace a client sees through the proxy)."""
    cdef long long keys = 0, expires = 0
    cdef const char *p
    cdef const char *end
    cdef const char *line
    cdef const char *eol
    cdef const char *body
    cdef int i
    cdef char text[128]
    cdef Buf merged
    cdef bint have_db0 = False
    for i in range(r.nfrags):
        p = buf_head(&r.frags[i].reply)
        end = p + buf_len(&r.frags[i].reply)
        line = p
        while line < end:
            eol = <const char *>memchr(line, c'\n', end - line)
            if eol == NULL:
                break
            if eol - line > 4 and memcmp(line, b"db0:", 4) == 0:
                keys += info_field(line, eol, b"keys")
                expires += info_field(line, eol, b"expires")
            line = eol + 1
    # Rebuild the first shard's text, its db0 line replaced (or added under # Keyspace).
    memset(&merged, 0, sizeof(Buf))
    p = buf_head(&r.frags[0].reply)
    end = p + buf_len(&r.frags[0].reply)
    if p[0] != c'$' and p[0] != c'=':
        return buf_append(out, p, end - p)
    body = <const char *>memchr(p, c'\n', end - p) + 1
    if p[0] == c'=':
        body += 4                   # verbatim string: skip the `txt:` format
    line = body
    end -= 2                        # the bulk's closing CRLF
    snprintf(text, sizeof(text), b"db0:keys=%lld,expires=%lld,avg_ttl=0\r\n", keys, expires)
    while line < end:
        eol = <const char *>memchr(line, c'\n', end - line)
        eol = end - 1 if eol == NULL else eol
        if eol - line > 4 and memcmp(line, b"db0:", 4) == 0:
            have_db0 = True
            if keys > 0:
                buf_append_str(&merged, text)
        else:
            buf_append(&merged, line, eol + 1 - line)
            if keys > 0 and not have_db0 and eol - line >= 10 and memcmp(line, b"# Keyspace", 10) == 0:
                have_db0 = True
                buf_append_str(&merged, text)
        line = eol + 1
    if p[0] == c'=':
        buf_append_int(out, c'=', <long long>(buf_len(&merged) + 4))
        buf_append_str(out, b"txt:")
        buf_append(out, buf_head(&merged), buf_len(&merged))
        buf_append_str(out, b"\r\n")
    else:
        buf_append_bulk(out, buf_head(&merged), buf_len(&merged))
    buf_free(&merged)
    return 0


cdef int merge_replies(Core *core, Request *r) noexcept nogil:
    """Coalesce the fragments' replies of r into core.merged according to r.merge."""
    cdef Buf *out = &core.merged
    cdef Fragment *f
    cdef int i, push
    cdef long long v, acc = 0, count = 0
    cdef const char *p
    cdef ssize_t flen
    cdef size_t need, hdr
    cdef const char *eol
    cdef int start
    buf_clear(out)
    # The first error of any shard wins, except where one success is enough.
    if r.merge == MERGE_ONE_SUCCEEDED:
        for i in range(r.nfrags):
            if not reply_is_error(buf_head(&r.frags[i].reply)):
                return buf_append(out, buf_head(&r.frags[i].reply), buf_len(&r.frags[i].reply))
        return buf_append(out, buf_head(&r.frags[0].reply), buf_len(&r.frags[0].reply))
    for i in range(r.nfrags):
        if reply_is_error(buf_head(&r.frags[i].reply)):
            return buf_append(out, buf_head(&r.frags[i].reply), buf_len(&r.frags[i].reply))
    if r.merge == MERGE_RANDOM:
        start = rand() % r.nfrags
        for i in range(r.nfrags):
            f = &r.frags[(start + i) % r.nfrags]
            p = buf_head(&f.reply)
            if p[0] != c'_' and not (p[0] == c'$' and p[1] == c'-'):
                return buf_append(out, p, buf_len(&f.reply))
        return buf_append(out, buf_head(&r.frags[0].reply), buf_len(&r.frags[0].reply))
    if r.merge == MERGE_INFO:
        return merge_info(r, out)
    if MERGE_SUNION <= r.merge <= MERGE_SINTERCARD:
        return merge_set_algebra(core, r, out)
    if MERGE_ZUNION <= r.merge <= MERGE_ZINTERCARD:
        return merge_zset_algebra(core, r, out)
    if r.merge == MERGE_PFCOUNT:
        return merge_pfcount(r, out)
    if r.merge == MERGE_ALL_SUCCEEDED or r.merge == MERGE_NONE:
        return buf_append(out, buf_head(&r.frags[0].reply), buf_len(&r.frags[0].reply))
    if r.merge == MERGE_KEYED_ARRAY:
        for i in range(r.nfrags):
            f = &r.frags[i]
            p = buf_head(&f.reply)
            eol = <const char *>memchr(p, c'\n', buf_len(&f.reply))
            if p[0] != c'*' or eol == NULL:
                return buf_append_str(out, b"-ERR unexpected reply from shard\r\n")
            f.cursor = eol - p + 1
        buf_append_int(out, c'*', r.nkeys)
        for i in range(r.nkeys):
            f = &r.frags[r.key_frag[i]]
            flen = reply_frame(buf_head(&f.reply) + f.cursor, buf_len(&f.reply) - f.cursor, &need, &push)
            if flen <= 0:
                buf_clear(out)
                return buf_append_str(out, b"-ERR unexpected reply from shard\r\n")
            buf_append(out, buf_head(&f.reply) + f.cursor, flen)
            f.cursor += flen
        return 0
    if r.merge == MERGE_CONCAT:
        for i in range(r.nfrags):
            p = buf_head(&r.frags[i].reply)
            eol = <const char *>memchr(p, c'\r', buf_len(&r.frags[i].reply))
            if (p[0] != c'*' and p[0] != c'~') or eol == NULL or parse_ll(p + 1, eol - p - 1, &v) < 0:
                return buf_append_str(out, b"-ERR unexpected reply from shard\r\n")
            count += v if v > 0 else 0
        buf_append_int(out, c'*', count)
        for i in range(r.nfrags):
            p = buf_head(&r.frags[i].reply)
            hdr = <const char *>memchr(p, c'\n', buf_len(&r.frags[i].reply)) - p + 1
            buf_append(out, p + hdr, buf_len(&r.frags[i].reply) - hdr)
        return 0
    # Integer aggregates; a shard's error is the answer, as in Redis Cluster.
    for i in range(r.nfrags):
        if buf_len(&r.frags[i].reply) > 0 and buf_head(&r.frags[i].reply)[0] == c'-':
            return buf_append(out, buf_head(&r.frags[i].reply), buf_len(&r.frags[i].reply))
    for i in range(r.nfrags):
        p = buf_head(&r.frags[i].reply)
        eol = <const char *>memchr(p, c'\r', buf_len(&r.frags[i].reply))
        if p[0] != c':' or eol == NULL or parse_ll(p + 1, eol - p - 1, &v) < 0:
            return buf_append_str(out, b"-ERR unexpected reply from shard\r\n")
        if i == 0:
            acc = v
        elif r.merge == MERGE_AGG_SUM:
            acc += v
        elif r.merge == MERGE_AGG_MIN:
            acc = v if v < acc else acc
        elif r.merge == MERGE_AGG_MAX:
            acc = v if v > acc else acc
        elif r.merge == MERGE_AGG_AND:
            acc = 1 if (acc and v) else 0
        elif r.merge == MERGE_AGG_OR:
            acc = 1 if (acc or v) else 0
    return buf_append_int(out, c':', acc)


cdef void fragment_answer(Core *core, Fragment *f, const char *reply, size_t n) noexcept nogil:
    cdef Request *r = f.req
    cdef Client *waited = NULL
    r.pending -= 1
    if r.blocking and r.pending == 0:
        r.blocking = False
        if r.client != NULL:
            r.client.flags &= ~CF_BLOCKED
            client_mark_dirty(core, r.client)     # its waiting input is parsed again
            waited = r.client if r.client.waiters != NULL else NULL
    if r.resolving:
        route_resolved(core, r, reply, n)
        return
    if r.merge == MERGE_SCAN:
        scan_answer(core, r, reply, n)
        return
    if r.nfrags == 1:
        request_answer(core, r, reply, n)
    else:
        buf_append(&f.reply, reply, n)
        if r.pending > 0:
            return
        if merge_replies(core, r) < 0:
            request_answer_str(core, r, b"-ERR out of memory\r\n")
        else:
            request_answer(core, r, buf_head(&core.merged), buf_len(&core.merged))
    if waited != NULL:
        # The WAIT is answered: its connections go (only now: `reply` may be in one's buffer).
        waiters_close(core, waited)


# ---- backends ---------------------------------------------------------------------------------

cdef void backend_fail(Core *core, Backend *b, const char *why) noexcept nogil:
    """Drop the connection: every fragment waiting on it is answered with an error, and the
    connection is retried after a back-off."""
    cdef char line[160]
    cdef Fragment *f
    cdef Shard *s = &core.shards[b.shard]
    snprintf(line, sizeof(line), b"-ERR %s shard %s\r\n", why, s.label)
    if b.passthrough and b.owner != NULL:
        # A subscriber lost its subscriptions: tell it and close it, as Redis Cluster would.
        buf_append_str(&b.owner.wbuf, line)
        b.owner.flags |= CF_CLOSE_AFTER_WRITE
        client_mark_dirty(core, b.owner)
    if b.fd >= 0:
        watch(core, b.fd, b, &b.events, 0)
        close(b.fd)
        b.fd = -1
    b.state = BK_DOWN
    buf_free(&b.rbuf)
    buf_free(&b.wbuf)
    b.need = 0
    b.skip_replies = 0
    b.retry_at_us = core.now_us + b.retry_delay_us
    b.retry_delay_us = b.retry_delay_us * 2 if b.retry_delay_us * 2 < RETRY_MAX_US else RETRY_MAX_US
    # Answer in queue order; answering may touch other clients but never this backend.
    while b.qhead != NULL:
        f = b.qhead
        b.qhead = f.next
        f.next = NULL
        b.queued -= 1
        fragment_answer(core, f, line, strlen(line))
    b.qtail = NULL
    b.queued = 0


cdef void backend_connect(Core *core, Backend *b) noexcept nogil:
    cdef Shard *s = &core.shards[b.shard]
    cdef int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)
    cdef int rc
    if fd < 0:
        b.retry_at_us = core.now_us + b.retry_delay_us
        return
    set_nodelay(fd)
    rc = connect(fd, <sockaddr *>&s.addr, sizeof(sockaddr_in))
    if rc < 0 and errno != EINPROGRESS:
        close(fd)
        b.fd = -1
        backend_fail(core, b, b"cannot connect to")
        return
    b.fd = fd
    b.state = BK_CONNECTING
    b.events = 0
    if b.proto == 3:
        # Sent before any request: the connection then answers in RESP3, as its clients expect.
        buf_append_str(&b.wbuf, b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n")
        b.skip_replies = 1
    watch(core, fd, b, &b.events, EPOLLIN | EPOLLOUT)


cdef void backend_mark_dirty(Core *core, Backend *b) noexcept nogil:
    if not b.dirty:
        b.dirty = True
        b.next_dirty = core.dirty_backends
        core.dirty_backends = b


cdef void backend_flush(Core *core, Backend *b) noexcept nogil:
    cdef ssize_t n
    if b.state != BK_UP:
        return
    while buf_len(&b.wbuf) > 0:
        n = send(b.fd, buf_head(&b.wbuf), buf_len(&b.wbuf), MSG_NOSIGNAL)
        if n < 0:
            if errno == EINTR:
                continue
            if errno == EAGAIN or errno == EWOULDBLOCK:
                break
            backend_fail(core, b, b"connection lost to")
            return
        buf_consume(&b.wbuf, <size_t>n)
    watch(core, b.fd, b, &b.events, EPOLLIN | (EPOLLOUT if buf_len(&b.wbuf) else 0))


cdef void backend_read(Core *core, Backend *b) noexcept nogil:
    cdef ssize_t n, flen
    cdef size_t need
    cdef int push
    cdef bint release
    cdef Fragment *f
    if buf_reserve(&b.rbuf, READ_CHUNK) < 0:
        backend_fail(core, b, b"out of memory reading from")
        return
    n = recv(b.fd, b.rbuf.data + b.rbuf.end, b.rbuf.cap - b.rbuf.end, 0)
    if n <= 0:
        if n < 0 and (errno == EAGAIN or errno == EWOULDBLOCK or errno == EINTR):
            return
        backend_fail(core, b, b"connection lost to")
        return
    b.rbuf.end += n
    if buf_len(&b.rbuf) < b.need:
        return
    if b.passthrough and b.owner != NULL and over_output_limit(core, b.owner):
        # A subscriber that does not read its messages: cut it off (never inside the loop
        # below, which reads from this connection's buffer).
        client_close(core, b.owner)
        return
    b.need = 0
    while buf_len(&b.rbuf) > 0:
        flen = reply_frame(buf_head(&b.rbuf), buf_len(&b.rbuf), &need, &push)
        if flen == 0:
            b.need = need
            break
        if flen < 0:
            backend_fail(core, b, b"protocol error from")
            return
        if b.skip_replies > 0:
            b.skip_replies -= 1
            buf_consume(&b.rbuf, flen)
            continue
        if b.wants_id:
            b.wants_id = False
            parse_ll(buf_head(&b.rbuf) + 1, flen - 3, &b.shard_client_id)
            buf_consume(&b.rbuf, flen)
            continue
        if b.relay:
            relay_frame(core, buf_head(&b.rbuf), flen)
            buf_consume(&b.rbuf, flen)
            continue
        if b.passthrough:
            release = subscriber_frame(core, b, buf_head(&b.rbuf), flen)
            buf_consume(&b.rbuf, flen)
            if release:
                # Nothing more can come: the client is paused and subscribed to nothing.
                subscriber_release(core, b.owner)
                return
            continue
        if push:
            # Out of band on a request/reply connection: nobody asked for it.
            buf_consume(&b.rbuf, flen)
            continue
        f = b.qhead
        if f == NULL:
            backend_fail(core, b, b"unexpected reply from")
            return
        if f.skip > 0:
            # A reply the client already had from the proxy (MULTI's OK, a QUEUED).
            f.skip -= 1
            buf_consume(&b.rbuf, flen)
            continue
        b.qhead = f.next
        if b.qhead == NULL:
            b.qtail = NULL
        b.queued -= 1
        f.next = NULL
        fragment_answer(core, f, buf_head(&b.rbuf), flen)
        if b.state == BK_DOWN:
            return      # closed by the answer (the last reply of a WAIT closes its connections)
        buf_consume(&b.rbuf, flen)


# ---- subscribers -------------------------------------------------------------------------------
#
# A subscriber's connection passes every frame straight to its client. After each
# (P|S)(UN)SUBSCRIBE the proxy sends a barrier, `PING <marker>`, and reads no more of the client
# until the barrier's reply is back: every frame of that command is in by then, and the counts of
# the last (un)subscribe frames say whether the shard still holds a subscription of the client.
# When it holds none, the connection is closed and the client is an ordinary one again, as a
# Redis client whose subscription count reaches 0.

cdef const char *PUBSUB_BARRIER = b"*2\r\n$4\r\nPING\r\n$23\r\ndmcproxy:pubsub-barrier\r\n"
# Its reply: the bulk alone (RESP3, or no longer subscribed), or `*2 pong <bulk>` (RESP2, subscribed).
cdef const char *BARRIER_BULK = b"$23\r\ndmcproxy:pubsub-barrier\r\n"
DEF BARRIER_BULK_LEN = 30
cdef const char *PONG_PREFIX = b"*2\r\n$4\r\npong\r\n"
DEF PONG_PREFIX_LEN = 14


cdef inline bint is_barrier_reply(const char *p, size_t n) noexcept nogil:
    if n == BARRIER_BULK_LEN:
        return memcmp(p, BARRIER_BULK, BARRIER_BULK_LEN) == 0
    return n == PONG_PREFIX_LEN + BARRIER_BULK_LEN and memcmp(p, PONG_PREFIX, PONG_PREFIX_LEN) == 0 \
        and memcmp(p + PONG_PREFIX_LEN, BARRIER_BULK, BARRIER_BULK_LEN) == 0


cdef void subscription_count(Backend *b, const char *p, size_t n) noexcept nogil:
    """Note the count an (un)subscribe confirmation ends with: `*3 <kind> <channel> :<count>`
    (`>3` in RESP3), the subscriptions of the kind's family left on the connection: channels and
    patterns, or sharded channels (ssubscribe, sunsubscribe)."""
    cdef const char *kind
    cdef const char *q
    cdef const char *end = p + n - 2
    cdef size_t klen
    cdef long long count
    if n < 16 or (p[0] != c'*' and p[0] != c'>') or memcmp(p + 1, b"3\r\n$", 4) != 0:
        return
    if p[5] == c'9' and p[6] == c'\r':
        klen = 9
        kind = p + 8
    elif p[5] == c'1' and c'0' <= p[6] <= c'2' and p[7] == c'\r':
        klen = 10 + <size_t>(p[6] - c'0')
        kind = p + 9
    else:
        return                      # message, pmessage, smessage, pong
    if kind + klen + 2 > end or memcmp(kind + klen - 9, b"subscribe", 9) != 0:
        return
    q = end - 1
    while q > kind + klen and c'0' <= q[0] <= c'9':
        q -= 1
    if q[0] != c':' or (q - 1)[0] != c'\n' or parse_ll(q + 1, end - q - 1, &count) < 0:
        return
    if kind[0] == c's' and klen != 9:
        b.shard_subscriptions = <int>count
    else:
        b.subscriptions = <int>count


cdef bint subscriber_frame(Core *core, Backend *b, const char *p, size_t n) noexcept nogil:
    """A frame from a subscriber's connection: to its client, except the barrier's reply. True
    when that reply shows the connection subscribed to nothing: the caller releases it."""
    cdef Client *c = b.owner
    if b.barrier and is_barrier_reply(p, n):
        b.barrier = False
        b.synced = True
        if c == NULL or c.flags & CF_CLOSED:
            return False
        c.flags &= ~CF_PUBSUB_SYNC
        client_mark_dirty(core, c)      # its waiting input is parsed again when it is flushed
        return b.subscriptions == 0 and b.shard_subscriptions == 0
    if c == NULL or c.flags & CF_CLOSED:
        return False
    subscription_count(b, p, n)
    buf_append(&c.wbuf, p, n)
    client_mark_dirty(core, c)
    return False


cdef void subscriber_send(Core *core, Backend *b, const char *data, size_t n, bint barrier) noexcept nogil:
    """A client's command on its subscriber connection, followed by the barrier if asked."""
    if n > 0:
        buf_append(&b.wbuf, data, n)
    b.synced = False
    if barrier and b.owner != NULL:
        buf_append_str(&b.wbuf, PUBSUB_BARRIER)
        b.barrier = True
        b.owner.flags |= CF_PUBSUB_SYNC
    backend_mark_dirty(core, b)


cdef void subscriber_release(Core *core, Client *c) noexcept nogil:
    """The client is subscribed to nothing any more: close its subscriber connection; its
    requests are routed as any client's again."""
    cdef Backend *b = c.dedicated
    c.flags &= ~(CF_PUBSUB | CF_PUBSUB_SYNC)
    if b != NULL:
        c.dedicated = NULL
        dedicated_close(core, b)


cdef void backend_writable(Core *core, Backend *b) noexcept nogil:
    cdef int err = 0
    cdef socklen_t len = sizeof(err)
    if b.state == BK_CONNECTING:
        getsockopt(b.fd, SOL_SOCKET, SO_ERROR, &err, &len)
        if err != 0:
            backend_fail(core, b, b"cannot connect to")
            return
        b.state = BK_UP
        b.retry_delay_us = RETRY_MIN_US
    backend_flush(core, b)


cdef Backend *shard_backend(Core *core, int shard, int proto) noexcept nogil:
    """The next shared connection of the shard for clients of `proto` (round robin); one that
    is down is reconnected here once its back-off is over."""
    cdef Shard *s = &core.shards[shard]
    cdef int p = 1 if proto == 3 else 0
    cdef Backend *b = &s.conns[p * s.per_proto + s.rr[p]]
    s.rr[p] += 1
    if s.rr[p] >= s.per_proto:
        s.rr[p] = 0
    b.used = True
    if b.state == BK_DOWN and b.retry_at_us <= core.now_us:
        backend_connect(core, b)
    return b


cdef void send_fragment(Core *core, int shard, Fragment *f, const char *data, size_t n) noexcept nogil:
    """Queue a fragment's command bytes on a shared backend connection of the shard; a shard
    that is down answers the fragment with an error at once."""
    cdef Client *c = f.req.client
    send_fragment_on(core, shard_backend(core, shard, c.proto if c != NULL else 2), f, data, n)


cdef void send_fragment_on(Core *core, Backend *b, Fragment *f, const char *data, size_t n) noexcept nogil:
    if b.state == BK_DOWN or buf_append(&b.wbuf, data, n) < 0:
        fragment_error(core, f, core.shards[b.shard].label)
        return
    if f.req.cmd != NULL and f.req.cmd.writes and f.req.client != NULL:
        client_wrote(f.req.client, b.shard)
    f.sent_us = core.now_us
    f.next = NULL
    if b.qtail == NULL:
        b.qhead = f
    else:
        b.qtail.next = f
    b.qtail = f
    b.queued += 1
    backend_mark_dirty(core, b)


cdef void fragment_error(Core *core, Fragment *f, const char *label) noexcept nogil:
    cdef char line[160]
    snprintf(line, sizeof(line), b"-ERR shard %s is unavailable\r\n", label)
    fragment_answer(core, f, line, strlen(line))


cdef Backend *backend_new(int shard, Client *owner, int proto) noexcept nogil:
    """A connection outside the shard's shared ones (a client's own, a relay), not yet open;
    freed through core.closed_backends."""
    cdef Backend *b = <Backend *>calloc(1, sizeof(Backend))
    if b == NULL:
        return NULL
    b.kind = KIND_BACKEND
    b.fd = -1
    b.state = BK_DOWN
    b.shard = shard
    b.retry_delay_us = RETRY_MIN_US
    b.owner = owner
    b.proto = proto
    return b


cdef Backend *client_dedicated(Core *core, Client *c, int shard) noexcept nogil:
    """The client's own connection to the shard, opened on first use."""
    cdef Backend *b = c.dedicated
    if b != NULL and (b.shard != shard or b.proto != c.proto):
        dedicated_close(core, b)
        b = c.dedicated = NULL
    if b == NULL:
        b = backend_new(shard, c, c.proto)
        if b == NULL:
            return NULL
        c.dedicated = b
    if b.state == BK_DOWN:
        backend_connect(core, b)
    return b


cdef Backend *client_waiter(Core *core, Client *c, int shard) noexcept nogil:
    """A new connection of the client's own to the shard, for one WAIT (see dispatch_wait)."""
    cdef Backend *b = backend_new(shard, c, 2)   # WAIT answers an integer, the same in RESP2 and 3
    if b == NULL:
        return NULL
    b.next_waiter = c.waiters
    c.waiters = b
    backend_connect(core, b)
    return b


cdef void waiters_close(Core *core, Client *c) noexcept nogil:
    cdef Backend *b = c.waiters
    cdef Backend *nxt
    c.waiters = NULL
    while b != NULL:
        nxt = b.next_waiter
        dedicated_close(core, b)
        b = nxt


# ---- what WAIT waits for: the shards a client wrote to since its last WAIT ---------------------

cdef inline void client_wrote(Client *c, int shard) noexcept nogil:
    if shard < 64:
        c.written |= 1ULL << shard
    else:
        client_wrote_more(c, shard)


cdef void client_wrote_more(Client *c, int shard) noexcept nogil:
    cdef int word = (shard >> 6) - 1
    cdef int want
    cdef unsigned long long *grown
    if word >= c.written_more_words:
        want = word + 1
        grown = <unsigned long long *>realloc(c.written_more, want * sizeof(unsigned long long))
        if grown == NULL:
            return
        memset(grown + c.written_more_words, 0,
               (want - c.written_more_words) * sizeof(unsigned long long))
        c.written_more = grown
        c.written_more_words = want
    c.written_more[word] |= 1ULL << (shard & 63)


cdef inline bint client_has_written(Client *c, int shard) noexcept nogil:
    if shard < 64:
        return (c.written >> shard) & 1
    if (shard >> 6) - 1 >= c.written_more_words:
        return False
    return (c.written_more[(shard >> 6) - 1] >> (shard & 63)) & 1


cdef void client_forget_writes(Client *c) noexcept nogil:
    c.written = 0
    if c.written_more != NULL:
        memset(c.written_more, 0, c.written_more_words * sizeof(unsigned long long))


cdef void dedicated_close(Core *core, Backend *b) noexcept nogil:
    """Close a client's own connection (the shard forgets a blocked client with it); what still
    waits on it is answered with an error; the struct is freed at the end of the loop turn."""
    b.owner = NULL
    b.passthrough = False
    backend_fail(core, b, b"closed dedicated connection to")
    b.next_closed = core.closed_backends
    core.closed_backends = b


cdef void backends_tick(Core *core) noexcept nogil:
    """Timers: reconnect shards that are down, fail connections whose oldest request is late."""
    cdef int i, j
    cdef Backend *b
    relays_tick(core)
    for i in range(core.nshards):
        for j in range(core.shards[i].nconns):
            b = &core.shards[i].conns[j]
            if b.state == BK_DOWN:
                if core.shards[i].active and b.used and b.retry_at_us <= core.now_us:
                    backend_connect(core, b)
            elif b.qhead != NULL and core.backend_timeout_us > 0 \
                    and core.now_us - b.qhead.sent_us > core.backend_timeout_us:
                backend_fail(core, b, b"timeout waiting for")
            elif not core.shards[i].active and b.qhead == NULL and b.state == BK_UP:
                # No longer in the map and nothing in flight: let it go.
                watch(core, b.fd, b, &b.events, 0)
                close(b.fd)
                b.fd = -1
                b.state = BK_DOWN
