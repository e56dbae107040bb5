# One turn of the event loop: wait, read and route everything that is ready, then write every
# connection that has output, once.

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
        if core.nclients >= core.max_clients:
            core.rejected_connections += 1
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
        c.proto = 2
        if core.password == NULL:
            c.flags |= CF_AUTHED
        c.created_us = c.last_us = core.now_us
        c.peer = peer
        c.next = core.all_clients
        if c.next != NULL:
            c.next.prev = c
        core.all_clients = c
        core.next_client_id += 1
        c.id = core.next_client_id
        core.nclients += 1
        watch(core, fd, c, &c.events, EPOLLIN)


cdef void close_idle_clients(Core *core) noexcept nogil:
    """As Redis's `timeout`: a client idle that long is closed, unless it is blocked or
    subscribed (those wait on purpose)."""
    cdef Client *c = core.all_clients
    cdef Client *nxt
    core.next_idle_check_us = core.now_us + 1000000
    while c != NULL:
        nxt = c.next
        if not (c.flags & (CF_BLOCKED | CF_PUBSUB)) and c.head == NULL \
                and core.now_us - c.last_us > core.idle_timeout_us:
            client_close(core, c)
        c = nxt


cdef void flush_all(Core *core) noexcept nogil:
    cdef Backend *b
    cdef Client *c
    # Backends first: requests routed in this turn reach the shards as early as possible.
    while core.dirty_backends != NULL:
        b = core.dirty_backends
        core.dirty_backends = b.next_dirty
        b.dirty = False
        backend_flush(core, b)
    while core.dirty_clients != NULL:
        c = core.dirty_clients
        core.dirty_clients = c.next_dirty
        c.flags &= ~CF_DIRTY
        if not (c.flags & CF_CLOSED):
            client_flush(core, c)
    # Resuming a paused client may have routed more requests.
    while core.dirty_backends != NULL:
        b = core.dirty_backends
        core.dirty_backends = b.next_dirty
        b.dirty = False
        backend_flush(core, b)


cdef void free_closed(Core *core) noexcept nogil:
    cdef Client *c
    cdef Backend *b
    while core.closed_clients != NULL:
        c = core.closed_clients
        core.closed_clients = c.next_closed
        free(c)
    while core.closed_backends != NULL:
        b = core.closed_backends
        core.closed_backends = b.next_closed
        free(b)


cdef int loop_once(Core *core, int timeout_ms) noexcept nogil:
    """One turn. Returns the number of events handled, or -1 with errno set."""
    cdef epoll_event events[MAX_EVENTS]
    cdef int n, i
    cdef unsigned int ev
    cdef void *ptr
    cdef Client *c
    cdef Backend *b
    cdef int kind
    n = epoll_wait(core.epfd, events, MAX_EVENTS, timeout_ms)
    core.now_us = monotonic_us()
    if n < 0:
        return -1
    for i in range(n):
        ptr = events[i].data.ptr
        ev = events[i].events
        kind = (<int *>ptr)[0]
        if kind == KIND_CLIENT:
            c = <Client *>ptr
            if c.flags & CF_CLOSED:
                continue
            if c.flags & CF_READ_PAUSED and ev & (EPOLLRDHUP | EPOLLERR | EPOLLHUP):
                # Not reading it, but it went away (a client blocked in BLPOP, say).
                client_close(core, c)
                continue
            if ev & (EPOLLIN | EPOLLERR | EPOLLHUP | EPOLLRDHUP):
                client_read(core, c)
            if ev & EPOLLOUT and not (c.flags & CF_CLOSED):
                client_mark_dirty(core, c)
        elif kind == KIND_BACKEND:
            b = <Backend *>ptr
            if b.fd < 0:
                continue        # closed earlier in this turn
            if ev & EPOLLOUT or (b.state == BK_CONNECTING and ev & (EPOLLERR | EPOLLHUP)):
                backend_writable(core, b)
            if b.state == BK_UP and ev & (EPOLLIN | EPOLLERR | EPOLLHUP):
                backend_read(core, b)
        elif kind == KIND_LISTENER:
            accept_clients(core)
    flush_all(core)
    backends_tick(core)
    if core.idle_timeout_us > 0 and core.now_us >= core.next_idle_check_us:
        close_idle_clients(core)
    flush_all(core)
    free_closed(core)
    return n
