# One turn of the event loop: wait, read and route everything that is ready, then write every
# connection that has output, once.


cdef inline long long monotonic_us() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <long long>ts.tv_sec * 1000000 + ts.tv_nsec // 1000


cdef inline unsigned long long core_random(Core *core) noexcept nogil:
    """The next number of the core's own PRNG (splitmix64): nothing is shared with the other
    proxies of the process, as libc's rand() would be."""
    cdef unsigned long long z
    core.random_state += 0x9e3779b97f4a7c15ULL
    z = core.random_state
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL
    return z ^ (z >> 31)


cdef void epoll_want(Core *core, int fd, void *conn, unsigned int *current, unsigned int wanted) noexcept nogil:
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


cdef void flush_all(Core *core) noexcept nogil:
    cdef Backend *b
    cdef Client *c
    # Backends first: requests routed in this turn reach the shards as early as possible.
    while core.dirty_backends != NULL:
        b = core.dirty_backends
        core.dirty_backends = b.next_dirty
        if core.dirty_backends == NULL:
            core.dirty_backends_tail = NULL
        b.dirty = False
        backend_send(core, b)
    while core.dirty_clients != NULL:
        c = core.dirty_clients
        core.dirty_clients = c.next_dirty
        c.flags &= ~CF_DIRTY
        if not (c.flags & CF_CLOSED):
            client_send(core, c)
    # Resuming a paused client may have routed more requests.
    while core.dirty_backends != NULL:
        b = core.dirty_backends
        core.dirty_backends = b.next_dirty
        if core.dirty_backends == NULL:
            core.dirty_backends_tail = NULL
        b.dirty = False
        backend_send(core, b)


cdef void wake_drain(Core *core) noexcept nogil:
    cdef unsigned long long count
    read(core.wake.fd, &count, sizeof(count))
    core.woken = True


cdef void core_resume(Core *core) noexcept nogil:
    """The end of a pause: every client held while it lasted is parsed again from its input,
    in order, and routed by the shard map of now; what that sends is written at once."""
    cdef Client *c = core.all_clients
    core.paused = False
    core.now_us = monotonic_us()
    while c != NULL:
        if c.flags & CF_READ_PAUSED:
            client_mark_dirty(core, c)      # client_send reads it again and parses its input
        c = c.next
    flush_all(core)


cdef long long core_inflight(Core *core) noexcept nogil:
    """Fragments written (or queued to be written) to a shard and not answered yet. Blocking
    commands wait on purpose and subscriber connections carry no fragments: not counted."""
    cdef long long n = 0
    cdef int i, j
    cdef Client *c = core.all_clients
    cdef Fragment *f
    for i in range(core.nshards):
        for j in range(core.shards[i].nconns):
            n += core.shards[i].conns[j].queued
    while c != NULL:
        if c.dedicated != NULL:
            f = c.dedicated.qhead
            while f != NULL:
                if not f.req.blocking:
                    n += 1
                f = f.next
        c = c.next
    return n


cdef void core_close(Core *core) noexcept nogil:
    """Stop serving: no more accepts, every client closed, every shard connection closed (what
    was in flight is answered with an error and freed), no reconnection."""
    cdef int i, j
    cdef Backend *b
    cdef epoll_event ev
    if core.listener.fd >= 0:
        epoll_ctl(core.epfd, EPOLL_CTL_DEL, core.listener.fd, &ev)
        core.listener.fd = -1       # the socket itself belongs to whoever opened it
    while core.all_clients != NULL:
        client_close(core, core.all_clients)
    held_tick(core, True)
    for i in range(core.nshards):
        core.shards[i].active = False
        relay_close(core, i)
        control_close(core, i)
        spares_close(core, i)
    tracking_close(core)
    for i in range(core.nshards):
        for j in range(core.shards[i].nconns):
            b = &core.shards[i].conns[j]
            if b.fd >= 0:
                backend_drop(core, b, b"proxy closed its connection to")
            b.used = False
    acl_close(core, True)
    core.nactive = 0
    default_shard_changed(core)
    core.dirty_backends = NULL
    core.dirty_backends_tail = NULL
    core.dirty_clients = NULL
    free_closed(core)


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
    worker_turn_begin(core)
    core.now_us = monotonic_us()
    if core.now_us >= core.counters.next_sample_us:
        counters_sample(core)
    if n < 0:
        worker_turn_end(core)
        return -1
    if core.tracking != NULL:
        tracking_read_first(core, events, n)
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
                client_recv(core, c)
            if ev & EPOLLOUT and not (c.flags & CF_CLOSED):
                if c.flags & CF_TLS_WANT_WRITE:     # a TLS read waited for this (tls.pxi)
                    c.flags &= ~CF_TLS_WANT_WRITE
                    client_recv(core, c)
                client_mark_dirty(core, c)
        elif kind == KIND_BACKEND:
            b = <Backend *>ptr
            if b.fd < 0:
                continue        # closed earlier in this turn
            if ev & EPOLLOUT or (b.state == BK_CONNECTING and ev & (EPOLLIN | EPOLLERR | EPOLLHUP)):
                # (EPOLLIN while connecting: a shard TLS handshake's next message, tls.pxi)
                backend_writable(core, b)
            if b.state == BK_UP and ev & (EPOLLIN | EPOLLERR | EPOLLHUP):
                backend_recv(core, b)
        elif kind == KIND_LISTENER:
            accept_clients(core)
        elif kind == KIND_WAKE:
            wake_drain(core)
    flush_all(core)
    if core.now_us >= core.next_tick_us:
        # The timers (reconnections, late shards, probes, held requests) need no finer grain
        # than a millisecond, and one pass over every shard connection cost more instructions
        # than the request a busy turn served (bench/RESULTS.md, "Worker threads").
        core.next_tick_us = core.now_us + TICK_US
        backends_tick(core)
    if core.tls_ctx != NULL and core.tls_handshake_timeout_us > 0 \
            and core.now_us >= core.next_handshake_check_us:
        close_slow_handshakes(core)
    if core.idle_timeout_us > 0 and core.now_us >= core.next_idle_check_us and not core.paused:
        # Not while paused: a held client's requests wait, it is not idle.
        close_idle_clients(core)
    flush_all(core)
    free_closed(core)
    worker_turn_end(core)
    return n
