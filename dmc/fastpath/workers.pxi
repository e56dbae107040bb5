# Worker threads of one endpoint (dmcproxy --threads N, a database's proxy_threads).
#
# N Cores serve one endpoint, each on a thread of its own with its own listening socket (the
# same port, SO_REUSEPORT: the kernel spreads the accepted connections), its own epoll loop, its
# own clients and its own shard connections: nothing is shared on the per-command path, and a
# command costs what it costs with one thread. What is per endpoint stays per endpoint:
#
# - client ids: worker i of N gives ids i+N, i+2N, ...: unique over the endpoint;
# - CLIENT LIST, CLIENT KILL and CLIENT UNBLOCK see every worker's clients. Such a request
#   waits (its client's input is left unparsed, CF_CROSS) until the end of its worker's turn;
#   there the worker stops every worker (workers_stop: the `world` lock, then each worker's
#   `turn` lock, which a worker holds only during a turn of its loop and never while it waits
#   for another lock, so this cannot deadlock) and routes it with core.world_held set: it then
#   reads and changes the other workers' Cores as their own threads would, while they wait;
# - MONITOR sees every command: a worker hands the lines of its commands to each other worker
#   that has monitors through that worker's inbox (a leaf lock) and wakes it; with no monitor
#   anywhere this costs one atomic read per command;
# - one keyspace relay per endpoint: worker 0's (relays_sync);
# - a shard map change, pause, resume, fence, password ...: dmc/endpoint.py stops every worker
#   (WorkerGroup.stop) and applies it to each before any runs again;
# - the counters: summed over the workers by dmc/endpoint.py (Endpoint.stats).
#
# - --max-clients and INFO's connected_clients: every worker's clients (an atomic count).
#
# Per worker (as between the proxies of two nodes): what a Core keeps for its own clients
# (CLIENT TRACKING's table and REDIRECT, sequential commands' slot locks, the clients ACL
# DELUSER closes, INFO's own counters but connected_clients) is its worker's. With one thread there is no
# Workers struct (core.workers NULL) and none of this costs anything but that pointer test.


cdef void workers_stop(Workers *w) noexcept nogil:
    """Every worker waits outside its loop's turns until workers_start."""
    cdef int i
    pthread_mutex_lock(&w.world)
    for i in range(w.n):
        pthread_mutex_lock(&w.turn[i])


cdef void workers_start(Workers *w) noexcept nogil:
    cdef int i
    for i in range(w.n - 1, -1, -1):
        pthread_mutex_unlock(&w.turn[i])
    pthread_mutex_unlock(&w.world)


cdef void workers_wake(Workers *w, Core *except_core) noexcept nogil:
    """End the turn of every worker waiting in epoll (but except_core's): they flush what was
    changed for them meanwhile."""
    cdef unsigned long long one = 1
    cdef int i
    for i in range(w.n):
        if w.cores[i] != except_core:
            write(w.cores[i].wake.fd, &one, sizeof(one))


cdef int endpoint_clients(Core *core) noexcept nogil:
    """Clients of the endpoint now (every worker's): what --max-clients and INFO count."""
    if core.workers == NULL:
        return core.nclients
    return dmc_atomic_load_int(&core.workers.nclients)


cdef void worker_inbox_drain(Core *core) noexcept nogil:
    """The other workers' MONITOR lines, to this worker's monitors."""
    cdef Workers *w = core.workers
    cdef Buf *inbox = &w.inbox[core.worker]
    cdef Client *m
    cdef Client *nxt
    pthread_mutex_lock(&w.inbox_lock[core.worker])
    m = core.monitors
    while m != NULL:
        nxt = m.next_monitor
        if not (m.flags & CF_CLOSED):
            buf_append(&m.wbuf, buf_head(inbox), buf_len(inbox))
            client_mark_dirty(core, m)
        m = nxt
    buf_clear(inbox)
    w.inbox_full[core.worker] = 0
    pthread_mutex_unlock(&w.inbox_lock[core.worker])
    m = core.monitors
    while m != NULL:
        nxt = m.next_monitor
        if over_output_limit(core, m):
            client_close(core, m)       # a monitor that does not keep up, as in Redis
        m = nxt


cdef void worker_monitor_feed(Core *core, Buf *line) noexcept nogil:
    """A MONITOR line of this worker's command, to the other workers' monitors."""
    cdef Workers *w = core.workers
    cdef unsigned long long one = 1
    cdef int i
    for i in range(w.n):
        if i == core.worker or w.cores[i].counters.monitors == 0:
            continue
        pthread_mutex_lock(&w.inbox_lock[i])
        buf_append(&w.inbox[i], buf_head(line), buf_len(line))
        w.inbox_full[i] = 1
        pthread_mutex_unlock(&w.inbox_lock[i])
        write(w.cores[i].wake.fd, &one, sizeof(one))


cdef void worker_turn_begin(Core *core) noexcept nogil:
    cdef Workers *w = core.workers
    if w == NULL:
        return
    pthread_mutex_lock(&w.turn[core.worker])
    if dmc_atomic_load_int(&w.inbox_full[core.worker]):
        worker_inbox_drain(core)


cdef void worker_turn_end(Core *core) noexcept nogil:
    """After a turn: release the worker; route the requests that needed every worker."""
    cdef Workers *w = core.workers
    cdef Client *c
    if w == NULL:
        return
    pthread_mutex_unlock(&w.turn[core.worker])
    if core.cross_waiting == NULL:
        return
    workers_stop(w)
    core.world_held = True
    while core.cross_waiting != NULL:
        c = core.cross_waiting
        core.cross_waiting = c.next_cross
        c.next_cross = NULL
        c.flags &= ~CF_CROSS
        client_mark_dirty(core, c)      # client_send parses its waiting input again
    flush_all(core)
    core.world_held = False
    workers_start(w)
    workers_wake(w, core)


cdef bint worker_cross_wait(Core *core, Client *c) noexcept nogil:
    """The client's next request needs every worker's clients: it waits for the end of the turn
    (worker_turn_end). Always False (req_route: the request stays in the input)."""
    if not (c.flags & CF_CROSS):
        c.flags |= CF_CROSS
        c.next_cross = core.cross_waiting
        core.cross_waiting = c
    return False


cdef void worker_cross_forget(Core *core, Client *c) noexcept nogil:
    """A closed client leaves the list of those waiting for every worker."""
    cdef Client **p = &core.cross_waiting
    while p[0] != NULL:
        if p[0] == c:
            p[0] = c.next_cross
            break
        p = &p[0].next_cross
    c.flags &= ~CF_CROSS


cdef inline int worker_count(Core *core) noexcept nogil:
    """How many Cores a CLIENT LIST/KILL/UNBLOCK looks at: every worker's while they are all
    stopped for it, else this one's."""
    return core.workers.n if core.world_held else 1


cdef inline Core *worker_core(Core *core, int i) noexcept nogil:
    return core.workers.cores[i] if core.world_held else core
