# The lifecycle of a request: parsed -> routed -> (fragmented) -> sent -> answered ->
# (coalesced) -> written, in the order the client sent it.
#
# A Request belongs to its client's queue, in arrival order. It is answered through one or more
# Fragments; each Fragment waits in one backend connection's queue for one reply. A request
# whose replies are all in is `done`; done requests are written to the client strictly from the
# head of its queue, so a pipeline that spans shards still gets its replies in request order.
# A client that goes away leaves its unanswered requests orphaned (client = NULL): they are
# freed when their last reply arrives, so no backend queue ever points at freed memory.


cdef Request *req_alloc(Core *core) noexcept nogil:
    """A blank request with one fragment, from the core's free list (calloc when it is empty),
    as twemproxy's msg_get."""
    cdef Request *r = core.free_requests
    if r != NULL:
        core.free_requests = r.next
        core.nfree_requests -= 1
        memset(r, 0, sizeof(Request))
    else:
        r = <Request *>calloc(1, sizeof(Request))
        if r == NULL:
            return NULL
    r.frags = &r.frag0
    r.nfrags = 1
    r.frag0.req = r
    return r


cdef Request *req_get(Core *core, Client *c, CommandInfo *cmd) noexcept nogil:
    """A new request of c, at the tail of its queue."""
    cdef Request *r = req_alloc(core)
    if r == NULL:
        return NULL
    r.client = c
    r.cmd = cmd
    r.started_us = core.now_us
    count_request(core, cmd)
    if c.flags & (CF_REPLY_OFF | CF_REPLY_SKIP):
        # Decided here, in the client's order, whichever shard answers first.
        r.silent = True
        c.flags &= ~CF_REPLY_SKIP
    if c.tail == NULL:
        c.head = r
    else:
        c.tail.next = r
    c.tail = r
    c.inflight += 1
    return r


cdef int req_fragment(Request *r, int n) noexcept nogil:
    """Give r n fragments (n > 1) for a split or fan-out command."""
    cdef int i
    r.frags = <Fragment *>calloc(n, sizeof(Fragment))
    if r.frags == NULL:
        r.frags = &r.frag0
        return -1
    r.nfrags = n
    for i in range(n):
        r.frags[i].req = r
    return 0


cdef void req_put(Core *core, Request *r) noexcept nogil:
    """r is done with: what it allocated is freed, the struct goes back to the free list (up to
    FREE_REQUESTS_MAX of them; twemproxy's msg_put)."""
    cdef int i
    if r.frags != &r.frag0:
        for i in range(r.nfrags):
            buf_free(&r.frags[i].reply)
        free(r.frags)
    buf_free(&r.frag0.reply)
    buf_free(&r.reply)
    buf_free(&r.command)
    free(r.key_frag)
    free(r.weights)
    if core.nfree_requests >= FREE_REQUESTS_MAX:
        free(r)
        return
    r.next = core.free_requests
    core.free_requests = r
    core.nfree_requests += 1


cdef void frag_answer_unavailable(Core *core, Fragment *f, const char *label) noexcept nogil:
    cdef char line[160]
    snprintf(line, sizeof(line), b"-ERR shard %s is unavailable\r\n", label)
    frag_answered(core, f, line, strlen(line))


cdef void frag_answered(Core *core, Fragment *f, const char *reply, size_t n) noexcept nogil:
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
        # Off the common path: keys asked of a shard, an AUTH/ACL check, or a multi-key
        # command's steps.
        if r.seq != NULL:
            seq_answered(core, r, reply, n)
        elif r.merge == MERGE_SHARD_CHECK:
            shard_check_answered(core, r, reply, n)
        elif r.merge >= MERGE_ACL_FIRST:
            acl_answered(core, r, f, reply, n)
        else:
            route_getkeys_answered(core, r, reply, n)
        return
    if r.merge == MERGE_SCAN:
        route_scan_answered(core, r, reply, n)
        return
    if r.nfrags == 1 and r.merge != MERGE_INFO:     # INFO of one shard: its own fields too
        req_write(core, r, reply, n)
    else:
        buf_append(&f.reply, reply, n)
        if r.pending > 0:
            return
        if req_coalesce(core, r) < 0:
            req_write_str(core, r, b"-ERR out of memory\r\n")
        else:
            req_write(core, r, buf_head(&core.merged), buf_len(&core.merged))
    if waited != NULL:
        # The WAIT is answered: its connections go (only now: `reply` may be in one's buffer).
        waiters_close(core, waited)


cdef void req_account(Core *core, Request *r, const char *reply, long long now_us) noexcept nogil:
    cdef CommandInfo *cmd = r.cmd
    cdef long long us = now_us - r.started_us
    cdef bint error = reply_is_error(reply)
    if cmd != NULL:
        cmd.calls += 1
        cmd.usec += <unsigned long long>us
        cmd.errors += error
        count_answer(core, cmd.cls, error, reply, us, cmd.timed)
    else:
        count_answer(core, CLASS_OTHER, error, reply, us, True)


cdef void req_write(Core *core, Request *r, const char *reply, size_t n) noexcept nogil:
    """The whole answer of r is known: write it now if r heads its client's queue, else keep it
    until the requests before it are answered."""
    cdef Client *c = r.client
    req_account(core, r, reply, core.now_us)
    if r.silent:
        n = 0           # CLIENT REPLY OFF / SKIP: kept in order, written as nothing
    if c == NULL:
        req_put(core, r)
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
    req_put(core, r)
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
        req_put(core, r)
    if over_output_limit(core, c):
        # A client that does not read its replies must not grow the proxy without bound.
        client_close(core, c)
        return
    client_mark_dirty(core, c)


cdef inline void req_write_str(Core *core, Request *r, const char *line) noexcept nogil:
    req_write(core, r, line, strlen(line))


cdef void req_write_error(Core *core, Request *r, const char *fmt, const char *arg) noexcept nogil:
    cdef char line[256]
    snprintf(line, sizeof(line), fmt, arg)
    req_write(core, r, line, strlen(line))
