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
# - the counters: summed over the workers by dmc/endpoint.py (Endpoint.stats);
# - --max-clients and INFO's connected_clients: every worker's clients (an atomic count);
# - INFO's own figures and CONFIG RESETSTAT: routed as CLIENT LIST is (worker_needs_all), with
#   every worker stopped: INFO takes every worker's counters then (info.pxi: info_snapshot);
# - ACL DELUSER: the worker that saw the shards' OK closes its own clients of the users at once,
#   the other workers' at the end of its turn, every worker stopped (worker_turn_end);
# - CLIENT TRACKING REDIRECT to a client of another worker: checked with every worker stopped;
#   each invalidation is mail to that worker (below), which frames it for its client or answers
#   that the client is gone (tracking-redir-broken);
# - a shard's -BUSY (busy.pxi): mail to every other worker when it starts and ends;
# - the sequential commands' slot locks: one table (Workers.seq_locks) under a leaf lock taken
#   only by sequences (sequential.pxi); a worker that releases slots wakes the workers whose
#   sequences wait (workers_seq_released), which try them again at the start of their next turn.
#
# Mail: each worker has an inbox (MONITOR lines) and a mailbox (MailHeader records), both under
# its inbox_lock, a leaf lock (nothing is taken while it is held); the sender sets inbox_full
# and writes the worker's eventfd; the worker drains both at the start of its turn (one atomic
# read per turn when there is nothing).
#
# Per worker (as between the proxies of two nodes): what a Core keeps for its own clients (the
# tracking table, the shard and ACL users' connections), and the order of two clients'
# commands on two workers. With one thread there is no Workers struct (core.workers NULL) and
# none of this costs anything but that pointer test.


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
    """What the other workers left for this one: MONITOR lines for its monitors, mail for its
    clients (worker_mail), sequences to try again (workers_seq_released)."""
    cdef Workers *w = core.workers
    cdef Buf *inbox = &w.inbox[core.worker]
    cdef Buf mail
    cdef bint seq_again
    cdef Client *m
    cdef Client *nxt
    pthread_mutex_lock(&w.inbox_lock[core.worker])
    m = core.monitors
    while m != NULL:
        nxt = m.next_monitor
        if not (m.flags & CF_CLOSED) and buf_len(inbox):
            buf_append(&m.wbuf, buf_head(inbox), buf_len(inbox))
            client_mark_dirty(core, m)
        m = nxt
    buf_clear(inbox)
    mail = w.mail[core.worker]
    memset(&w.mail[core.worker], 0, sizeof(Buf))
    seq_again = w.seq_wake[core.worker]
    w.seq_wake[core.worker] = 0
    w.inbox_full[core.worker] = 0
    pthread_mutex_unlock(&w.inbox_lock[core.worker])
    m = core.monitors
    while m != NULL:
        nxt = m.next_monitor
        if over_output_limit(core, m):
            client_close(core, m)       # a monitor that does not keep up, as in Redis
        m = nxt
    if buf_len(&mail):
        worker_mail_read(core, buf_head(&mail), buf_head(&mail) + buf_len(&mail))
    buf_free(&mail)
    if seq_again and core.seq_waiting != NULL:
        seq_wake(core)


cdef void worker_mail(Core *core, int to, int kind, unsigned long long to_id,
                      unsigned long long from_id, const char *p, size_t n) noexcept nogil:
    """A message for client to_id of worker `to` (from client from_id of this one): read there
    at the start of its next turn (worker_mail_read)."""
    cdef Workers *w = core.workers
    cdef MailHeader h
    cdef unsigned long long one = 1
    h.kind = kind
    h.to_id = to_id
    h.from_id = from_id
    h.n = n
    pthread_mutex_lock(&w.inbox_lock[to])
    buf_append(&w.mail[to], <const char *>&h, sizeof(MailHeader))
    if n:
        buf_append(&w.mail[to], p, n)
    w.inbox_full[to] = 1
    pthread_mutex_unlock(&w.inbox_lock[to])
    write(w.cores[to].wake.fd, &one, sizeof(one))


cdef void worker_mail_read(Core *core, const char *p, const char *end) noexcept nogil:
    """The other workers' messages for this one (what one process would know at once): a
    tracking client's invalidation for its REDIRECT client here, which is framed as that client
    needs; a REDIRECT client that is gone, for a tracking client here; a shard that runs a
    script (PING, MULTI answer -BUSY as one Redis would) or no longer does."""
    cdef MailHeader h
    cdef Client *c
    while p + sizeof(MailHeader) <= end:
        memcpy(&h, p, sizeof(MailHeader))
        p += sizeof(MailHeader)
        if h.kind == MAIL_SHARD_BUSY or h.kind == MAIL_SHARD_NOT_BUSY:
            # Every worker's shard table is the same (every map reaches them all at once).
            if h.to_id < <unsigned long long>core.nshards:
                if h.kind == MAIL_SHARD_BUSY:
                    shard_busy(core, <int>h.to_id, p, h.n)
                elif core.shards[h.to_id].busy:
                    core.shards[h.to_id].busy = False
                    core.nbusy -= 1
            p += h.n
            continue
        c = client_by_id(core, <long long>h.to_id)
        if c != NULL and c.flags & CF_CLOSED:
            c = NULL
        if h.kind == MAIL_INVALIDATE:
            if c != NULL:
                tracking_deliver(core, c, True, p, h.n)
            else:
                worker_mail(core, worker_of(core, h.from_id), MAIL_REDIR_BROKEN, h.from_id,
                            h.to_id, NULL, 0)
        elif h.kind == MAIL_REDIR_BROKEN:
            if c != NULL and c.flags & CF_TRACKING and c.track_redirect == h.from_id:
                tracking_redirect_broken(core, c, h.from_id)
        p += h.n


cdef void workers_mail_all(Core *core, int kind, unsigned long long to_id, const char *p,
                           size_t n) noexcept nogil:
    """The same message for every other worker."""
    cdef int i
    for i in range(core.workers.n):
        if i != core.worker:
            worker_mail(core, i, kind, to_id, 0, p, n)


cdef void workers_seq_released(Core *core) noexcept nogil:
    """A sequence of this worker's released its slots: the other workers with sequences waiting
    try theirs again (each at the start of its next turn)."""
    cdef Workers *w = core.workers
    cdef unsigned long long one = 1
    cdef bint waiting[MAX_WORKERS]
    cdef int i
    pthread_mutex_lock(&w.seq_lock)
    for i in range(w.n):
        waiting[i] = i != core.worker and w.seq_waiting[i]
    pthread_mutex_unlock(&w.seq_lock)
    for i in range(w.n):
        if waiting[i]:
            pthread_mutex_lock(&w.inbox_lock[i])
            w.seq_wake[i] = 1
            w.inbox_full[i] = 1
            pthread_mutex_unlock(&w.inbox_lock[i])
            write(w.cores[i].wake.fd, &one, sizeof(one))


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
    cdef int i
    if w == NULL:
        return
    pthread_mutex_unlock(&w.turn[core.worker])
    if core.cross_waiting == NULL and buf_len(&core.users_deleted) == 0:
        return
    workers_stop(w)
    core.world_held = True
    if buf_len(&core.users_deleted):
        for i in range(w.n):
            if i != core.worker:
                users_delete(w.cores[i], buf_head(&core.users_deleted),
                             buf_head(&core.users_deleted) + buf_len(&core.users_deleted), NULL)
        buf_clear(&core.users_deleted)
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


cdef bint worker_needs_all(Core *core, CommandInfo *cmd, ArgVec *av) noexcept nogil:
    """Whether a request reads or changes what every worker has (req_route, with workers only):
    CLIENT LIST / KILL / UNBLOCK (every worker's clients), INFO and CONFIG RESETSTAT (every
    worker's counters), CLIENT TRACKING ... REDIRECT to a client of another worker."""
    if cmd.merge == MERGE_INFO:
        return True
    if cmd.local == LOCAL_CLIENT:
        if arg_is(av, 1, b"list") or arg_is(av, 1, b"kill") or arg_is(av, 1, b"unblock"):
            return True
        return arg_is(av, 1, b"tracking") and tracking_redirect_remote(core, av)
    return cmd.name_len == 16 and memcmp(cmd.name, b"config|resetstat", 16) == 0


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


cdef inline int worker_of(Core *core, unsigned long long client_id) noexcept nogil:
    """The worker whose client has this id (worker i of N gives ids i+N, i+2N ...)."""
    return <int>(client_id % <unsigned long long>core.workers.n)


cdef inline int worker_count(Core *core) noexcept nogil:
    """How many Cores a CLIENT LIST/KILL/UNBLOCK looks at: every worker's while they are all
    stopped for it, else this one's."""
    return core.workers.n if core.world_held else 1


cdef inline Core *worker_core(Core *core, int i) noexcept nogil:
    return core.workers.cores[i] if core.world_held else core
