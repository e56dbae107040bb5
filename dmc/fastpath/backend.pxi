# Backend connections to the shards: opened, written (the fragments sent on them), read (their
# replies handed back in order), failed and retried.
#
# Each shard has its shared connections (per_proto for RESP2 clients, as many for RESP3 ones,
# round robin); a client's own connections (dedicated: blocking commands, WATCH, a subscriber;
# WAIT), the keyspace relay and the control connections (busy.pxi) are made with backend_new.


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


cdef void frag_send(Core *core, int shard, Fragment *f, const char *data, size_t n) noexcept nogil:
    """Queue a fragment's command bytes on a shared backend connection of the shard; a shard
    that is down answers the fragment with an error at once. A client of an ACL user other than
    `default` has shared connections of its user's (acl.pxi)."""
    cdef Backend *b
    if core.shards[shard].busy:
        # Running a script: Redis answers every command but the allow_busy ones so.
        frag_answered(core, f, core.shards[shard].busy_reply, strlen(core.shards[shard].busy_reply))
        return
    b = frag_backend(core, shard, f.req.client)
    if b == NULL:
        frag_answered(core, f, b"-ERR out of memory\r\n", 20)
        return
    frag_send_on(core, b, f, data, n)


cdef Backend *frag_backend(Core *core, int shard, Client *c) noexcept nogil:
    """The connection a request of c's goes on to the shard: one of its ACL user's (acl.pxi),
    its tracking one, or a shared one of the shard's; NULL when out of memory."""
    if c != NULL and c.user != NULL:
        return user_backend(core, c.user, shard, c.proto)
    if c != NULL and c.flags & CF_TRACKING and not (c.tflags & TF_BCAST):
        # The shard remembers what it reads for the proxy (tracking.pxi).
        return tracked_backend(core, shard, c.proto)
    return shard_backend(core, shard, c.proto if c != NULL else 2)


cdef void frag_send_on(Core *core, Backend *b, Fragment *f, const char *data, size_t n) noexcept nogil:
    cdef const char *refusal
    if fence_up(core):
        refusal = fence_refusal(f)
        if refusal != NULL:
            if not (b.role == ROLE_SHARED and hold_fenced(core, b.shard, f, data, n)):
                frag_answered(core, f, refusal, strlen(refusal))
            return
    if core.hold_us > 0 and b.role == ROLE_SHARED and (b.state == BK_DOWN or
            core.shards[b.shard].suspect_until_us > core.now_us) and \
            hold_fragment(core, b.shard, f, data, n):
        # The shard is down, or failed since the last map (a master that died may be back at
        # its address as a replica before the map that promotes its replica is here): held.
        return
    frag_queue_on(core, b, f, data, n)


cdef inline void frag_queue_on(Core *core, Backend *b, Fragment *f, const char *data, size_t n) noexcept nogil:
    """Queue the fragment on b now (neither fenced nor held)."""
    if (b.state == BK_DOWN and not b.hold) or buf_append(&b.wbuf, data, n) < 0:
        frag_answer_unavailable(core, f, core.shards[b.shard].label)
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


cdef void req_send_unanswered(Core *core, Backend *b, const char *cmd, size_t n) noexcept nogil:
    """A command of the proxy's own whose reply nobody reads (an UNWATCH, say)."""
    cdef Request *r = req_alloc(core)
    if r == NULL:
        return
    r.pending = 1
    frag_send_on(core, b, &r.frag0, cmd, n)


cdef Backend *backend_new(int shard, Client *owner, int proto, int role) noexcept nogil:
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
    b.role = role
    return b


cdef Backend *client_dedicated(Core *core, Client *c, int shard) noexcept nogil:
    """The client's own connection to the shard, opened on first use."""
    cdef Backend *b = c.dedicated
    if b != NULL and (b.shard != shard or b.proto != c.proto or b.user != c.user):
        dedicated_close(core, b)
        b = c.dedicated = NULL
    if b == NULL:
        b = spare_take(core, c, shard)
    if b == NULL:
        b = backend_new(shard, c, c.proto, ROLE_DEDICATED)
        if b == NULL:
            return NULL
        b.user = c.user     # authenticated as the client's user when it connects
        c.dedicated = b
    if b.state == BK_DOWN:
        backend_connect(core, b)
    return b


cdef Backend *spare_take(Core *core, Client *c, int shard) noexcept nogil:
    """The shard's spare connection, made the client's own, when it is connected (else NULL),
    and a new spare opened. So a client's own connection (a blocking command's, a WATCH's) is
    usually up already, and what the client sends on it reaches the shard in the order the
    proxy read it, not after another client's later command on a shared connection (the
    suite's `XREADGROUP ... BLOCK` from one client, then `DEL` from another). A RESP2 spare
    is opened with the map (spares_sync), a RESP3 one from the shard's first RESP3 client that
    needs its own; clients of other ACL users (acl.pxi) connect their own."""
    cdef Shard *s = &core.shards[shard]
    cdef int p = 1 if c.proto == 3 else 0
    cdef Backend *b = s.spare[p]
    if c.user != NULL or not s.active:
        return NULL
    if b != NULL and b.state == BK_UP and b.qhead == NULL and b.skip_replies == 0:
        s.spare[p] = NULL
        b.owner = c
        c.dedicated = b
    else:
        b = NULL
    if s.spare[p] == NULL:
        spare_open(core, shard, c.proto)
    elif s.spare[p].state == BK_DOWN and s.spare[p].retry_at_us <= core.now_us:
        backend_connect(core, s.spare[p])
    return b


cdef void spare_open(Core *core, int shard, int proto) noexcept nogil:
    """A new spare for clients of `proto`. It counts as ready once the shard answered on it
    (the HELLO 3 of a RESP3 one, a PING for RESP2: skip_replies back at 0): the shard has then
    accepted it and reads it, so a command sent on it is not read after a later one on another
    connection while the shard gets round to accepting it."""
    cdef int p = 1 if proto == 3 else 0
    cdef Backend *b = backend_new(shard, NULL, proto, ROLE_DEDICATED)
    core.shards[shard].spare[p] = b
    if b == NULL:
        return
    backend_connect(core, b)
    if b.state != BK_DOWN and proto != 3:
        buf_append_str(&b.wbuf, b"*1\r\n$4\r\nPING\r\n")
        b.skip_replies = 1


cdef void spares_sync(Core *core) noexcept nogil:
    """After a map change: a RESP2 spare for every shard of the map, none for the others."""
    cdef int i
    cdef Shard *s
    for i in range(core.nshards):
        s = &core.shards[i]
        if not s.active:
            spares_close(core, i)
        elif s.spare[0] == NULL:
            spare_open(core, i, 2)


cdef void dedicated_release(Core *core, Client *c, Backend *b) noexcept nogil:
    """A client that goes lets go of its own connection: kept as its shard's spare when it is
    up, idle and carries no state of the client's (no WATCH, subscription, blocked command or
    other user), so the next client that needs one has it connected; else closed."""
    cdef Shard *s = &core.shards[b.shard]
    cdef int p = 1 if b.proto == 3 else 0
    if b.role == ROLE_DEDICATED and b.state == BK_UP and b.qhead == NULL and b.user == NULL \
            and buf_len(&b.wbuf) == 0 and b.skip_replies == 0 and s.active \
            and s.spare[p] == NULL and not (c.flags & (CF_WATCH | CF_PUBSUB)):
        b.owner = NULL
        s.spare[p] = b
        return
    dedicated_close(core, b)


cdef void spares_close(Core *core, int shard) noexcept nogil:
    """The shard's spare connections go (it left the map, or the proxy closes)."""
    cdef int p
    cdef Backend *b
    for p in range(2):
        b = core.shards[shard].spare[p]
        if b != NULL:
            core.shards[shard].spare[p] = NULL
            dedicated_close(core, b)


cdef void dedicated_close(Core *core, Backend *b) noexcept nogil:
    """Close a client's own connection (the shard forgets a blocked client with it); what still
    waits on it is answered with an error; the struct is freed at the end of the loop turn."""
    b.owner = NULL
    if b.role == ROLE_SUBSCRIBER:
        b.role = ROLE_DEDICATED
    backend_fail(core, b, b"closed dedicated connection to")
    b.next_closed = core.closed_backends
    core.closed_backends = b


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
    if b.user != NULL:
        # As the client's ACL user (acl.pxi), in its protocol; nothing else goes out before the
        # shard accepts it.
        backend_hold_for_auth(b, acl_append_auth(&b.wbuf, b.user, b.proto), 0)
    elif b.proto == 3:
        # Sent before any request: the connection then answers in RESP3, as its clients expect.
        buf_append_str(&b.wbuf, b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n")
        b.skip_replies = 1
    epoll_want(core, fd, b, &b.events, EPOLLIN | EPOLLOUT)


cdef void backend_writable(Core *core, Backend *b) noexcept nogil:
    cdef int err = 0
    cdef socklen_t len = sizeof(err)
    if b.state == BK_CONNECTING:
        if b.ssl == NULL:
            getsockopt(b.fd, SOL_SOCKET, SO_ERROR, &err, &len)
            if err != 0:
                backend_fail(core, b, b"cannot connect to")
                return
            if core.shard_tls_ctx != NULL and not backend_tls_start(core, b):
                backend_fail(core, b, b"cannot start TLS with")
                return
        if b.ssl != NULL:
            # Shard TLS (tls.pxi): up once the handshake is done, in as many turns as it takes.
            err = backend_tls_handshake(core, b)
            if err < 0:
                backend_fail(core, b, b"TLS handshake failed with")
                return
            if err == 0:
                return
        b.state = BK_UP
        b.retry_delay_us = RETRY_MIN_US
        if b.role == ROLE_SHARED:
            default_shard_changed(core)
            if core.hold_us > 0 and b.user == NULL and b >= core.shards[b.shard].conns and \
                    b < core.shards[b.shard].conns + core.shards[b.shard].nconns:
                shard_check_send(core, b)
            if core.held_head != NULL and core.shards[b.shard].suspect_until_us <= core.now_us:
                held_release(core, b.shard)
    elif b.tls_want_write:
        b.tls_want_write = False    # an SSL_read waited for this (tls.pxi)
        backend_recv(core, b)
    backend_send(core, b)


cdef void backend_mark_dirty(Core *core, Backend *b) noexcept nogil:
    if not b.dirty:
        b.dirty = True
        # At the tail: shards are written in the order the proxy routed to them, so a command
        # read first from one client reaches its shard before a later one of another client
        # (on another connection) does.
        b.next_dirty = NULL
        if core.dirty_backends == NULL:
            core.dirty_backends = b
        else:
            core.dirty_backends_tail.next_dirty = b
        core.dirty_backends_tail = b


cdef void backend_send(Core *core, Backend *b) noexcept nogil:
    cdef ssize_t n
    cdef size_t len
    if b.state != BK_UP:
        return
    while buf_len(&b.wbuf) > 0:
        len = buf_len(&b.wbuf)
        if b.authing:
            # Up to its AUTH only, until the shard accepted it (acl.pxi).
            if b.auth_hold == 0:
                break
            if len > b.auth_hold:
                len = b.auth_hold
        if b.ssl == NULL:
            n = send(b.fd, buf_head(&b.wbuf), len, MSG_NOSIGNAL)
        else:
            n = backend_tls_write(b, buf_head(&b.wbuf), len)
        if n < 0:
            if errno == EINTR:
                continue
            if errno == EAGAIN or errno == EWOULDBLOCK:
                break
            backend_fail(core, b, b"connection lost to")
            return
        buf_consume(&b.wbuf, <size_t>n)
        if b.authing:
            b.auth_hold -= <size_t>n
    epoll_want(core, b.fd, b, &b.events,
               EPOLLIN | (EPOLLOUT if buf_len(&b.wbuf) and not (b.authing and b.auth_hold == 0) else 0))


cdef void backend_recv(Core *core, Backend *b) noexcept nogil:
    """Read what the shard sent and hand each complete reply frame to the handler of the
    connection's role."""
    cdef ssize_t n, flen
    cdef size_t need
    cdef int push, rc
    if buf_reserve(&b.rbuf, READ_CHUNK) < 0:
        backend_fail(core, b, b"out of memory reading from")
        return
    if b.ssl == NULL:
        n = recv(b.fd, b.rbuf.data + b.rbuf.end, b.rbuf.cap - b.rbuf.end, 0)
        if n > 0:
            b.rbuf.end += n
    else:
        n = backend_tls_read(core, b)     # (moves b.rbuf.end itself)
    if n <= 0:
        if n < 0 and (errno == EAGAIN or errno == EWOULDBLOCK or errno == EINTR):
            return
        backend_fail(core, b, b"connection lost to")
        return
    if buf_len(&b.rbuf) < b.need:
        return
    if b.role == ROLE_SUBSCRIBER and b.owner != NULL and over_output_limit(core, b.owner):
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
            if not b.authing:
                b.skip_replies -= 1     # the HELLO 3 sent when it connected
                buf_consume(&b.rbuf, flen)
                continue
            # Authenticating as an ACL user (acl.pxi): its HELLO ... AUTH's reply, or one due
            # before it (handled as any reply).
            if b.auth_before == 0:
                b.skip_replies = 0
                if acl_auth_reply(core, b, buf_head(&b.rbuf), flen) < 0:
                    return
                buf_consume(&b.rbuf, flen)
                continue
            b.auth_before -= 1
        if b.role <= ROLE_DEDICATED:
            rc = rsp_fragment(core, b, buf_head(&b.rbuf), flen, push)
        elif b.role == ROLE_SUBSCRIBER:
            rc = rsp_subscriber(core, b, buf_head(&b.rbuf), flen)
        elif b.role == ROLE_WAITER:
            rc = rsp_waiter(core, b, buf_head(&b.rbuf), flen, push)
        elif b.role == ROLE_CONTROL:
            rc = rsp_control(core, b, buf_head(&b.rbuf), flen, push)
        elif b.role == ROLE_TRACKED:
            rc = rsp_tracked(core, b, buf_head(&b.rbuf), flen, push)
        elif b.role == ROLE_BCAST:
            rc = rsp_bcast(core, b, buf_head(&b.rbuf), flen, push)
        else:
            rc = rsp_relay(core, b, buf_head(&b.rbuf), flen)
        if rc < 0:
            return      # the connection is closed (its buffer with it)
        buf_consume(&b.rbuf, flen)


cdef inline int rsp_fragment(Core *core, Backend *b, const char *p, size_t n, int push) noexcept nogil:
    """A reply on a request/reply connection (shared or dedicated): the answer of the fragment
    at the head of its queue. -1 when the connection was closed meanwhile."""
    cdef Fragment *f
    if push:
        return 0        # out of band on a request/reply connection: nobody asked for it
    if core.shards[b.shard].busy and b.role == ROLE_SHARED and not is_busy_reply(p, n):
        shard_not_busy(core, b.shard)     # the script ended: the shard serves again
    f = b.qhead
    if f == NULL:
        backend_fail(core, b, b"unexpected reply from")
        return -1
    if f.skip > 0:
        # A reply the client already had from the proxy (MULTI's OK, a QUEUED).
        f.skip -= 1
        return 0
    b.qhead = f.next
    if b.qhead == NULL:
        b.qtail = NULL
    b.queued -= 1
    f.next = NULL
    frag_answered(core, f, p, n)
    # Closed by the answer (the last reply of a WAIT closes its connections).
    return -1 if b.state == BK_DOWN else 0


cdef void backend_fail(Core *core, Backend *b, const char *why) noexcept nogil:
    """Drop the connection: every fragment waiting on it is answered with an error, and the
    connection is retried after a back-off."""
    cdef char line[160]
    snprintf(line, sizeof(line), b"-ERR %s shard %s\r\n", why, core.shards[b.shard].label)
    backend_fail_line(core, b, line)


cdef void backend_fail_line(Core *core, Backend *b, const char *line) noexcept nogil:
    """backend_fail, answering with `line` (a whole error line)."""
    backend_close_answering(core, b, line, True)


cdef void backend_drop(Core *core, Backend *b, const char *why) noexcept nogil:
    """The proxy closes the connection on purpose (its user has no clients left, the proxy
    stops): as backend_fail, but the shard is not suspected of a failure. Closing one of its
    connections is what a client leaving one redis-server does: the shard serves on."""
    cdef char line[160]
    snprintf(line, sizeof(line), b"-ERR %s shard %s\r\n", why, core.shards[b.shard].label)
    backend_close_answering(core, b, line, False)


cdef void backend_close_answering(Core *core, Backend *b, const char *line,
                                  bint shard_failed) noexcept nogil:
    """Close b, answering what waits on it with `line`; shard_failed: the shard broke the
    connection (or did not answer), so it is suspect for the hold time (hold.pxi)."""
    cdef Fragment *f
    cdef Shard *s = &core.shards[b.shard]
    if b.role == ROLE_TRACKED or b.role == ROLE_BCAST:
        tracking_conn_lost(core, b)
    b.hold = False
    if b.role == ROLE_SUBSCRIBER and b.owner != NULL:
        # A subscriber lost its subscriptions: tell it and close it, as Redis Cluster would.
        buf_append_str(&b.owner.wbuf, line)
        b.owner.flags |= CF_CLOSE_AFTER_WRITE
        client_mark_dirty(core, b.owner)
    if b.fd >= 0:
        epoll_want(core, b.fd, b, &b.events, 0)
        backend_socket_close(b)
    count_subscriptions(core, b, 0, 0, 0)     # the shard forgets them with the connection
    if b.role == ROLE_SHARED and b.state != BK_DOWN:
        if b.state == BK_UP:
            default_shard_changed(core)
        if shard_failed and core.hold_us > 0 and s.suspect_until_us <= core.now_us:
            s.suspect_until_us = core.now_us + core.hold_us
    if b.role == ROLE_CONTROL:
        control_failed(core, b.shard)
    b.state = BK_DOWN
    buf_free(&b.rbuf)
    buf_free(&b.wbuf)
    b.need = 0
    b.skip_replies = 0
    b.authing = False
    b.auth_hold = 0
    b.auth_before = 0
    b.retry_at_us = core.now_us + b.retry_delay_us
    b.retry_delay_us = b.retry_delay_us * 2 if b.retry_delay_us * 2 < RETRY_MAX_US else RETRY_MAX_US
    # Answer in queue order; answering may touch other clients but never this backend.
    while b.qhead != NULL:
        f = b.qhead
        b.qhead = f.next
        f.next = NULL
        b.queued -= 1
        frag_answered(core, f, line, strlen(line))
    b.qtail = NULL
    b.queued = 0


cdef void backends_tick(Core *core) noexcept nogil:
    """Timers: reconnect shards that are down, fail connections whose oldest request is late
    (unless the shard is busy running a script: busy.pxi), probe shards that are slow to answer."""
    cdef int i, j
    cdef Backend *b
    cdef bint late
    relays_tick(core)
    acl_tick(core)
    tracking_tick(core)
    if core.held_head != NULL:
        held_tick(core, False)
    dedicated_tick(core)
    for i in range(core.nshards):
        late = False
        for j in range(core.shards[i].nconns):
            b = &core.shards[i].conns[j]
            if b.state == BK_DOWN:
                if core.shards[i].active and b.used and b.retry_at_us <= core.now_us:
                    backend_connect(core, b)
            elif b.qhead != NULL and core.backend_timeout_us > 0 \
                    and core.now_us - b.qhead.sent_us > PROBE_AFTER_US:
                late = True
                if core.now_us - b.qhead.sent_us > core.backend_timeout_us \
                        and not shard_keeps_waiting(core, i):
                    backend_fail(core, b, b"timeout waiting for")
            elif not core.shards[i].active and b.qhead == NULL and b.state == BK_UP:
                # No longer in the map and nothing in flight: let it go.
                epoll_want(core, b.fd, b, &b.events, 0)
                backend_socket_close(b)
                b.state = BK_DOWN
                default_shard_changed(core)
        busy_tick(core, i, late)
