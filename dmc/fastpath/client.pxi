# Client connections: accepted, read (input), parsed into requests, written (output), closed.
#
# Input: client_recv brings bytes and req_parse cuts them into requests, each handed to
# req_route (route.pxi). Output: answers are appended to the client's wbuf in request order
# (request.pxi), and client_send writes it once per loop turn. Limits: a client with too many
# requests in flight or too much unwritten output is not read until it catches up; one owed
# more than client_output_limit bytes is disconnected; the input limits are input_limit.pxi.


cdef inline void client_mark_dirty(Core *core, Client *c) noexcept nogil:
    if not (c.flags & CF_DIRTY):
        c.flags |= CF_DIRTY
        c.next_dirty = core.dirty_clients
        core.dirty_clients = c


cdef inline ssize_t client_read(Core *core, Client *c, char *buf, size_t cap) noexcept nogil:
    if c.ssl == NULL:
        return recv(c.fd, buf, cap, 0)
    return tls_read(core, c, buf, cap)


cdef inline ssize_t client_write(Client *c, const char *buf, size_t n) noexcept nogil:
    if c.ssl == NULL:
        return send(c.fd, buf, n, MSG_NOSIGNAL)
    return tls_write(c, buf, n)


cdef inline bint over_output_limit(Core *core, Client *c) noexcept nogil:
    return core.client_output_limit > 0 and buf_len(&c.wbuf) + c.held > core.client_output_limit


cdef void accept_clients(Core *core) noexcept nogil:
    cdef int fd, i
    cdef Client *c
    cdef sockaddr_in peer
    cdef socklen_t peer_len
    for i in range(256):
        peer_len = sizeof(peer)
        fd = accept4(core.listener.fd, <sockaddr *>&peer, &peer_len, SOCK_NONBLOCK | SOCK_CLOEXEC)
        if fd < 0:
            return
        core.total_connections += 1
        if endpoint_clients(core) >= core.max_clients:
            core.rejected_connections += 1
            if core.tls_ctx == NULL:        # (a TLS client could not read it)
                send(fd, b"-ERR max number of clients reached\r\n", 36, MSG_NOSIGNAL)
            close(fd)
            continue
        c = <Client *>calloc(1, sizeof(Client))
        if c == NULL:
            close(fd)
            continue
        set_nodelay(fd)
        c.kind = KIND_CLIENT
        c.fd = fd
        if core.tls_ctx != NULL and not tls_accept(core, c):
            if c.ssl != NULL:
                SSL_free(c.ssl)
            close(fd)
            free(c)
            continue
        c.proto = 2
        if core.password == NULL:
            c.flags |= CF_AUTHED
        c.created_us = c.last_us = core.now_us
        c.peer = peer
        c.next = core.all_clients
        if c.next != NULL:
            c.next.prev = c
        core.all_clients = c
        # Worker i of N gives ids i+N, i+2N ...: unique over the endpoint (workers.pxi).
        core.next_client_id += <unsigned long long>(core.workers.n if core.workers != NULL else 1)
        c.id = core.next_client_id
        core.nclients += 1
        if core.workers != NULL:
            dmc_atomic_add_int(&core.workers.nclients, 1)
        epoll_want(core, fd, c, &c.events, EPOLLIN)


cdef void client_close(Core *core, Client *c) noexcept nogil:
    cdef Request *r
    cdef Request *nxt
    if c.flags & CF_CLOSED:
        return
    epoll_want(core, c.fd, c, &c.events, 0)
    if c.ssl != NULL:
        tls_close(c)
    close(c.fd)
    c.fd = -1
    c.flags |= CF_CLOSED
    # Unanswered requests stay referenced by backend queues: orphan them, free the rest.
    r = c.head
    while r != NULL:
        nxt = r.next
        if r.pending == 0:
            req_put(core, r)
        else:
            r.client = NULL
        r = nxt
    c.head = c.tail = NULL
    c.inflight = 0
    if c.dedicated != NULL:
        dedicated_release(core, c, c.dedicated)
        c.dedicated = NULL
    waiters_close(core, c)
    if c.flags & CF_MONITOR:
        monitor_remove(core, c)
    if c.flags & CF_CROSS:
        worker_cross_forget(core, c)
    if c.track_slot:
        tracking_client_closed(core, c)
    free(c.written_more)
    c.written_more = NULL
    buf_free(&c.multi_cmds)
    buf_free(&c.name)
    client_set_user(core, c, NULL)
    if c.prev != NULL:
        c.prev.next = c.next
    else:
        core.all_clients = c.next
    if c.next != NULL:
        c.next.prev = c.prev
    buf_free(&c.rbuf)
    input_release(c)
    buf_free(&c.wbuf)
    core.nclients -= 1
    if core.workers != NULL:
        dmc_atomic_add_int(&core.workers.nclients, -1)
    c.next_closed = core.closed_clients
    core.closed_clients = c


cdef void close_idle_clients(Core *core) noexcept nogil:
    """As Redis's `timeout`: a client idle that long is closed, unless it is blocked or
    subscribed (those wait on purpose)."""
    cdef Client *c = core.all_clients
    cdef Client *nxt
    core.next_idle_check_us = core.now_us + 1000000
    while c != NULL:
        nxt = c.next
        if not (c.flags & (CF_BLOCKED | CF_PUBSUB | CF_MONITOR)) and c.head == NULL \
                and core.now_us - c.last_us > core.idle_timeout_us:
            client_close(core, c)
        c = nxt


cdef void client_pause(Core *core, Client *c) noexcept nogil:
    if not (c.flags & CF_READ_PAUSED):
        c.flags |= CF_READ_PAUSED
        # Still told when it hangs up, so that a blocked client that leaves is cleaned up.
        epoll_want(core, c.fd, c, &c.events, (c.events & ~EPOLLIN) | EPOLLRDHUP)


cdef void req_parse(Core *core, Client *c, Buf *inp) noexcept nogil:
    """Route every complete request in inp; leave a partial one there."""
    cdef size_t consumed, need
    cdef int rc
    cdef Request *r
    cdef char line[64]
    while buf_len(inp) > 0:
        if c.flags & (CF_CLOSED | CF_CLOSE_AFTER_WRITE):
            buf_clear(inp)
            return
        if c.flags & (CF_RESOLVING | CF_BLOCKED | CF_WAIT_DRAIN | CF_PUBSUB_SYNC | CF_CROSS):
            client_pause(core, c)
            return
        if c.inflight >= MAX_INFLIGHT or buf_len(&c.wbuf) >= OUTPUT_PAUSE or core.paused:
            # core.paused: the proxy is paused (pause()): the request waits in the input,
            # unparsed, and is routed by the shard map of the moment resume() is called.
            client_pause(core, c)
            return
        if buf_len(inp) < c.need:
            return
        rc = parse_request(buf_head(inp), buf_len(inp), &core.av, &consumed, &need)
        if rc == PARSE_INCOMPLETE:
            c.need = need
            return
        c.need = 0
        if rc < 0:
            # The error is answered after the replies the client is still owed, then it is closed.
            r = req_get(core, c, NULL)
            if r != NULL:
                if rc == PARSE_ERR_EXPECTED_DOLLAR:
                    snprintf(line, sizeof(line), b"-ERR Protocol error: expected '$', got '%c'\r\n",
                             core.av.bad_byte)
                    req_write_str(core, r, line)
                else:
                    req_write_str(core, r, parse_error_text(rc))
            c.flags |= CF_CLOSE_AFTER_WRITE
            buf_clear(inp)
            return
        if core.av.argc > 0 and not req_route(core, c, &core.av):
            client_pause(core, c)
            return
        buf_consume(inp, consumed)


cdef void client_recv(Core *core, Client *c) noexcept nogil:
    cdef ssize_t n
    cdef Buf chunk
    cdef size_t want
    cdef unsigned long long before = requests_total(core)
    if buf_len(&c.rbuf) == 0:
        # The common case: read into the shared chunk, keep only a partial request.
        n = client_read(core, c, core.read_chunk, READ_CHUNK)
        if n <= 0:
            if n < 0 and (errno == EAGAIN or errno == EWOULDBLOCK or errno == EINTR):
                return
            client_close(core, c)
            return
        chunk.data = core.read_chunk
        chunk.pos = 0
        chunk.end = n
        chunk.cap = READ_CHUNK
        core.counters.ingress_bytes += <unsigned long long>n
        core.counters.reads += 1
        req_parse(core, c, &chunk)
        count_pipeline(core, before)
        if buf_len(&chunk) > 0 and not (c.flags & CF_CLOSED):
            if buf_append(&c.rbuf, buf_head(&chunk), buf_len(&chunk)) < 0:
                client_close(core, c)
                return
            input_account(core, c)
        return
    want = READ_CHUNK
    if c.need > buf_len(&c.rbuf) + want:
        want = c.need - buf_len(&c.rbuf)
    if buf_reserve(&c.rbuf, want) < 0:
        client_close(core, c)
        return
    n = client_read(core, c, c.rbuf.data + c.rbuf.end, c.rbuf.cap - c.rbuf.end)
    if n <= 0:
        if n < 0 and (errno == EAGAIN or errno == EWOULDBLOCK or errno == EINTR):
            return
        client_close(core, c)
        return
    c.rbuf.end += n
    core.counters.ingress_bytes += <unsigned long long>n
    core.counters.reads += 1
    if not input_account(core, c):      # over its client-query-buffer-limit, or evicted
        return
    req_parse(core, c, &c.rbuf)
    count_pipeline(core, before)
    if not (c.flags & CF_CLOSED) and buf_len(&c.rbuf) == 0:
        buf_free(&c.rbuf)
    input_account(core, c)


cdef void client_send(Core *core, Client *c) noexcept nogil:
    cdef ssize_t n
    while buf_len(&c.wbuf) > 0:
        n = client_write(c, buf_head(&c.wbuf), buf_len(&c.wbuf))
        if n < 0:
            if errno == EINTR:
                continue
            if errno == EAGAIN or errno == EWOULDBLOCK:
                break
            client_close(core, c)
            return
        core.counters.egress_bytes += <unsigned long long>n
        buf_consume(&c.wbuf, <size_t>n)
    if buf_len(&c.wbuf) > 0:
        epoll_want(core, c.fd, c, &c.events, c.events | EPOLLOUT)
        return
    if c.flags & CF_CLOSE_AFTER_WRITE and c.head == NULL:
        client_close(core, c)
        return
    if not (c.flags & CF_TLS_WANT_WRITE):
        epoll_want(core, c.fd, c, &c.events, c.events & ~EPOLLOUT)
    if c.flags & CF_WAIT_DRAIN and c.head == NULL:
        c.flags &= ~CF_WAIT_DRAIN
    if c.flags & CF_READ_PAUSED and c.inflight < MAX_INFLIGHT // 2 and not core.paused \
            and not (c.flags & (CF_RESOLVING | CF_BLOCKED | CF_WAIT_DRAIN | CF_PUBSUB_SYNC | CF_CROSS)):
        # Caught up: read again, starting with what was left unparsed.
        c.flags &= ~CF_READ_PAUSED
        epoll_want(core, c.fd, c, &c.events, c.events | EPOLLIN)
        if buf_len(&c.rbuf) > 0:
            req_parse(core, c, &c.rbuf)
            input_account(core, c)


cdef void format_address(const sockaddr_in *sa, char *out) noexcept nogil:
    cdef char ip[20]
    out[0] = 0
    if inet_ntop(AF_INET, &sa.sin_addr, ip, sizeof(ip)) != NULL:
        snprintf(out, 48, b"%s:%d", ip, <int>ntohs(sa.sin_port))
