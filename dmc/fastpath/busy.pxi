# A shard busy running a script (EVAL, FCALL past `busy-reply-threshold`), as one Redis.
#
# Redis does not read the connection whose script runs, and answers -BUSY to every other one,
# except for the commands flagged `allow_busy` (SCRIPT KILL, FUNCTION KILL, FUNCTION STATS). So
# the shard's shared connection that carries the script is stuck behind it, and a kill sent on
# it would wait for ever. Each shard therefore has control connections (one per RESP version,
# opened on first use, outside the round robin): the allow_busy commands go on them
# (ROUTE_CONTROL, to every shard, merged by Redis's response policy), and so does the busy probe.
#
# The probe: when a shared connection's oldest fragment is PROBE_AFTER_US late, the shard is sent
# a PING on its control connection. `-BUSY ...` marks the shard busy: its shared connections are
# not failed as timed out, fragments for it are answered with that same -BUSY line by the proxy
# (as Redis answers them), and PING through the endpoint answers it too (the suite's and clients'
# health checks). Any other answer on a shared connection of the shard (the script's own reply,
# once it ends or is killed) or to a later probe ends it. A probe not answered within the
# backend timeout plus PROBE_GRACE_US fails the control connection: the shard is down, and its
# late shared connections are failed as before.
#
# A script may also run on a client's own connection (EVAL after WATCH, EXEC of a transaction
# with EVAL, a subscriber's or a blocked client's neighbour): every PROBE_INTERVAL_US the clients'
# own connections are looked at (dedicated_tick), and one whose oldest fragment is not a blocking
# command and is late has its shard probed the same way. (Not failed when late: a client's own
# connection has nobody else's requests behind it, and a blocked command waits on purpose.)


cdef const char *PROBE = b"*1\r\n$4\r\nPING\r\n"


cdef bint is_busy_reply(const char *p, size_t n) noexcept nogil:
    return n > 6 and memcmp(p, b"-BUSY ", 6) == 0


cdef Backend *shard_control(Core *core, int shard, int proto) noexcept nogil:
    """The shard's control connection for clients of `proto`, opened on first use (and again
    after its back-off once it failed). NULL when out of memory."""
    cdef Shard *s = &core.shards[shard]
    cdef int p = 1 if proto == 3 else 0
    cdef Backend *b = s.control[p]
    if b == NULL:
        b = backend_new(shard, NULL, 3 if p else 2, ROLE_CONTROL)
        if b == NULL:
            return NULL
        s.control[p] = b
    if b.state == BK_DOWN and b.retry_at_us <= core.now_us:
        backend_connect(core, b)
    return b


cdef void frag_send_control(Core *core, int shard, Fragment *f, const char *data, size_t n) noexcept nogil:
    cdef Client *c = f.req.client
    cdef Backend *b = shard_control(core, shard, c.proto if c != NULL else 2)
    if b == NULL:
        frag_answered(core, f, b"-ERR out of memory\r\n", 20)
        return
    frag_send_on(core, b, f, data, n)


cdef int rsp_control(Core *core, Backend *b, const char *p, size_t n, int push) noexcept nogil:
    """A reply on a control connection: a probe's tells whether the shard is busy; the others
    are their fragments' answers."""
    cdef Shard *s = &core.shards[b.shard]
    cdef Fragment *f = b.qhead
    cdef size_t k
    if not push and f != NULL and f.req.probe:
        s.probe_sent_us = 0
        s.probe_answered_us = core.now_us
        if is_busy_reply(p, n):
            if not s.busy and core.workers != NULL:
                workers_mail_all(core, MAIL_SHARD_BUSY, b.shard, p, n)   # workers.pxi
            shard_busy(core, b.shard, p, n)
        else:
            shard_not_busy(core, b.shard)
    return rsp_fragment(core, b, p, n, push)


cdef void shard_busy(Core *core, int shard, const char *p, size_t n) noexcept nogil:
    """The shard answered -BUSY (p, n: that line) to a probe, this worker's or another's."""
    cdef Shard *s = &core.shards[shard]
    cdef size_t k
    if not s.busy:
        s.busy = True
        core.nbusy += 1
    k = n if n < sizeof(s.busy_reply) - 1 else sizeof(s.busy_reply) - 3
    memcpy(s.busy_reply, p, k)
    memcpy(s.busy_reply + k - 2, b"\r\n\0", 3)
    s.busy_seen_us = core.now_us


cdef void shard_not_busy(Core *core, int shard) noexcept nogil:
    if core.shards[shard].busy:
        core.shards[shard].busy = False
        core.nbusy -= 1
        if core.workers != NULL:
            workers_mail_all(core, MAIL_SHARD_NOT_BUSY, shard, NULL, 0)


cdef void control_failed(Core *core, int shard) noexcept nogil:
    """A control connection failed: its probe is gone, and nothing says the shard is busy."""
    core.shards[shard].probe_sent_us = 0
    shard_not_busy(core, shard)


cdef void control_close(Core *core, int shard) noexcept nogil:
    cdef int p
    cdef Backend *b
    for p in range(2):
        b = core.shards[shard].control[p]
        if b == NULL:
            continue
        core.shards[shard].control[p] = NULL
        backend_fail(core, b, b"closed control connection to")
        b.next_closed = core.closed_backends
        core.closed_backends = b


cdef bint shard_keeps_waiting(Core *core, int shard) noexcept nogil:
    """May a late shared connection of the shard wait on? Yes while the shard answers -BUSY
    (a script runs: it is alive), or a probe is still within its time."""
    cdef Shard *s = &core.shards[shard]
    cdef long long limit = core.backend_timeout_us + PROBE_GRACE_US
    if s.busy and core.now_us - s.busy_seen_us <= limit:
        return True
    return s.probe_sent_us != 0 and core.now_us - s.probe_sent_us <= limit


cdef void busy_tick(Core *core, int shard, bint late) noexcept nogil:
    """Timers of a shard's control connections: a late one is failed; the shard is probed when
    one of its shared connections is late (`late`) or it is busy."""
    cdef Shard *s = &core.shards[shard]
    cdef Backend *b
    cdef Request *r
    cdef int p
    if s.control[0] == NULL and s.control[1] == NULL and not late:
        return
    for p in range(2):
        b = s.control[p]
        if b != NULL and b.qhead != NULL and core.backend_timeout_us > 0 \
                and core.now_us - b.qhead.sent_us > core.backend_timeout_us + PROBE_GRACE_US:
            backend_fail(core, b, b"timeout waiting for")
    if not (late or s.busy) or s.probe_sent_us != 0 \
            or core.now_us - s.probe_answered_us < PROBE_INTERVAL_US:
        return
    b = shard_control(core, shard, 2)
    if b == NULL or b.state == BK_DOWN:
        return
    r = req_alloc(core)
    if r == NULL:
        return
    r.pending = 1
    r.probe = True
    s.probe_sent_us = core.now_us
    frag_send_on(core, b, &r.frag0, PROBE, 14)


cdef void dedicated_tick(Core *core) noexcept nogil:
    """Every PROBE_INTERVAL_US: the shard of a client's own connection whose oldest fragment is
    late and not a blocking command is probed (a script may run on it)."""
    cdef Client *c
    cdef Fragment *f
    if core.now_us < core.next_dedicated_check_us:
        return
    core.next_dedicated_check_us = core.now_us + PROBE_INTERVAL_US
    c = core.all_clients
    while c != NULL:
        if c.dedicated != NULL and c.dedicated.qhead != NULL:
            f = c.dedicated.qhead
            if not f.req.blocking and core.now_us - f.sent_us > PROBE_AFTER_US:
                busy_tick(core, c.dedicated.shard, True)
        c = c.next
    return


cdef const char *busy_reply(Core *core) noexcept nogil:
    """The -BUSY line of a busy shard of the map (core.nbusy > 0), or NULL."""
    cdef int i
    for i in range(core.nactive):
        if core.shards[core.active[i]].busy:
            return core.shards[core.active[i]].busy_reply
    return NULL


cdef int coalesce_function_stats(Request *r, Buf *out) noexcept nogil:
    """FUNCTION STATS of every shard: the one that runs a script (its `running_script` is not
    null), else the first. The libraries are the same on every shard (FUNCTION LOAD goes to
    all), so `engines` reads as one Redis's."""
    cdef int i
    cdef const char *p
    cdef size_t n
    for i in range(r.nfrags):
        p = buf_head(&r.frags[i].reply)
        n = buf_len(&r.frags[i].reply)
        # `*4` (RESP2) or `%2` (RESP3), `$14 running_script`, then its value: a map or null.
        if n > 26 and memcmp(p + 4, b"$14\r\nrunning_script\r\n", 22) == 0 \
                and (p[26] == c'%' or (p[26] == c'*' and p[27] != c'-')):
            return buf_append(out, p, n)
    return buf_append(out, buf_head(&r.frags[0].reply), buf_len(&r.frags[0].reply))
