# Holding instead of failing: a request for a shard whose connection is down (its master died
# and is being failed over) is not answered "unavailable" at once; its fragment is kept, with
# its command bytes, never sent, for up to core.hold_us (Proxy's hold_ms; 0: no holding) and
# HOLD_MAX_BYTES in all. A shard whose connection failed stays "suspect" (Shard.suspect_until_us)
# until the next map or for the hold time, even if its address answers again: a master that
# died may be back there as a replica before the map that promotes its replica is here, and
# would answer -READONLY. What is held is sent
#
# - when a new map takes the shard's slots to one shard (a failover): to that shard, in order;
# - when the shard is no longer suspect and its connection is up (no new map came): to it;
#
# and answered "-ERR shard ... is unavailable" when its time is out (and the shard is not back),
# or -TRYAGAIN when a new map splits the shard's slots between several shards (it was never
# sent: retrying is safe). So a client sees latency, not errors, for a failover that ends within
# the hold time. Only what was never sent is held: what was in flight when the connection broke
# may have been applied, and is answered with an error as before. Only a connection the shard
# broke makes it suspect (backend_fail); the proxy closing its own (backend_drop: a user's once
# its last client left) does not; and a shard whose connection is back to the same process,
# still master, is trusted again at once (shard_check_send, below).
#
# The fence holds fragments here too (Held.fenced; fence.pxi): until the fence is down
# (held_release(core, FENCE_DOWN)) or core.fence_hold_us is out.


cdef bint shard_up(Core *core, int shard) noexcept nogil:
    cdef int j
    for j in range(core.shards[shard].nconns):
        if core.shards[shard].conns[j].state == BK_UP:
            return True
    return False


cdef int shard_any_slot(Core *core, int shard) noexcept nogil:
    cdef int i
    for i in range(SLOT_COUNT):
        if core.slot_map[i] == shard:
            return i
    return -1


cdef bint hold_fragment(Core *core, int shard, Fragment *f, const char *data, size_t n) noexcept nogil:
    """Hold f for the shard (True), or False when holding is off or full."""
    return held_new(core, shard, f, data, n, core.hold_us, False)


cdef bint hold_fenced(Core *core, int shard, Fragment *f, const char *data, size_t n) noexcept nogil:
    """Hold f, which the fence refuses, until the fence is down (True), or False when fence
    holding is off or full (fence.pxi)."""
    return held_new(core, shard, f, data, n, core.fence_hold_us, True)


cdef bint held_new(Core *core, int shard, Fragment *f, const char *data, size_t n,
                   long long for_us, bint fenced) noexcept nogil:
    cdef Held *h
    if for_us <= 0 or core.held_bytes + n > HOLD_MAX_BYTES:
        return False
    h = <Held *>calloc(1, sizeof(Held))
    if h == NULL:
        return False
    if buf_append(&h.cmd, data, n) < 0:
        free(h)
        return False
    h.f = f
    h.shard = shard
    h.slot = shard_any_slot(core, shard)
    h.until_us = core.now_us + for_us
    h.fenced = fenced
    held_append(core, h)
    return True


cdef inline void held_append(Core *core, Held *h) noexcept nogil:
    h.next = NULL
    if core.held_tail == NULL:
        core.held_head = h
    else:
        core.held_tail.next = h
    core.held_tail = h
    core.held_bytes += buf_len(&h.cmd)


cdef void held_free(Core *core, Held *h) noexcept nogil:
    core.held_bytes -= buf_len(&h.cmd)
    buf_free(&h.cmd)
    free(h)


cdef void held_send(Core *core, Held *h, int shard) noexcept nogil:
    """Send h's fragment to the shard now, on the connection frag_send picks for its client
    (its ACL user's: never the default user's); held again, with its deadline, if the fence
    or the shard's state holds it once more."""
    cdef Fragment *f = h.f
    cdef long long until = h.until_us
    cdef Held *tail = core.held_tail
    frag_send(core, shard, f, buf_head(&h.cmd), buf_len(&h.cmd))
    if core.held_tail != tail and core.held_tail.f == f:
        core.held_tail.until_us = until
        core.held_tail.late = until <= core.now_us      # that was its one try past its time
    held_free(core, h)


cdef void held_keep(Core *core, Held *h) noexcept nogil:
    """h, taken off the list (its bytes still counted), back at its end."""
    core.held_bytes -= buf_len(&h.cmd)      # re-added by held_append
    held_append(core, h)


cdef void held_release(Core *core, int shard) noexcept nogil:
    """What was held goes, in order: for `shard`, its shared connection being up; or, with
    shard FENCE_DOWN, every fragment the fence held (the fence is down). A fragment that
    cannot go yet (its shard down, the fence up) is held again (held_send)."""
    cdef Held *h = core.held_head
    cdef Held *nxt
    core.held_head = core.held_tail = NULL
    while h != NULL:
        nxt = h.next
        if (h.fenced if shard == FENCE_DOWN else h.shard == shard):
            held_send(core, h, h.shard)
        else:
            held_keep(core, h)
        h = nxt


cdef void held_remap(Core *core, const unsigned short *old_map) noexcept nogil:
    """A new map is installed (core.slot_map); old_map was the one before. A held fragment
    goes where its shard's slots went, if they all went to one shard."""
    cdef Held *h = core.held_head
    cdef Held *nxt
    cdef int i, to
    cdef int *target = core.shard_frag         # scratch: shard -> where its slots went
    cdef char line[200]
    for i in range(core.nshards):
        target[i] = -1
    for i in range(SLOT_COUNT):
        to = core.slot_map[i]
        if target[old_map[i]] == -1:
            target[old_map[i]] = to
        elif target[old_map[i]] != to:
            target[old_map[i]] = -2             # split between shards
    core.held_head = core.held_tail = NULL
    while h != NULL:
        nxt = h.next
        to = target[h.shard] if h.slot >= 0 else -1
        if to == h.shard or (to == -1 and core.shards[h.shard].active):
            held_keep(core, h)   # same shard: still waits for it
        elif to >= 0:
            held_send(core, h, to)
        else:
            snprintf(line, sizeof(line), b"-TRYAGAIN the slots of shard %s moved to several "
                     b"shards while the command waited for it\r\n", core.shards[h.shard].label)
            frag_answered(core, h.f, line, strlen(line))
            held_free(core, h)
        h = nxt


cdef void held_tick(Core *core, bint every) noexcept nogil:
    """Held fragments of a shard that is back are sent; those whose time is out (every one:
    the proxy closes) are answered "unavailable", or the fence's refusal if the fence held
    them and is still up. The shard is looked at first: a request held just after the
    failure has its deadline just after the suspicion's end, and the tick that sees the shard
    back may come after both (one try, then: `late`)."""
    cdef Held *h = core.held_head
    cdef Held *nxt
    cdef const char *line
    core.held_head = core.held_tail = NULL
    while h != NULL:
        nxt = h.next
        if h.fenced and not fence_up(core):
            held_send(core, h, h.shard)         # (held_release sends them at once)
        elif not every and not h.fenced and not h.late and \
                core.shards[h.shard].suspect_until_us <= core.now_us and shard_up(core, h.shard):
            held_send(core, h, h.shard)         # no new map came, but the shard is back
        elif every or h.until_us <= core.now_us:
            line = fence_refusal(h.f) if h.fenced else NULL
            if line != NULL:
                frag_answered(core, h.f, line, strlen(line))
            else:
                frag_answer_unavailable(core, h.f, core.shards[h.shard].label)
            held_free(core, h)
        else:
            held_keep(core, h)
        h = nxt


# A suspect shard is trusted again at once when its connection is back to the same process,
# still master: the shard only closed the proxy's connection (or the network dropped it), and
# nothing can have been failed over. Every shared connection of the shard's own (not an ACL
# user's) asks, when it is up, INFO server replication, ahead of anything else sent on it; the
# run_id it answers is kept. Another run_id (the process restarted: maybe as a replica, maybe
# empty) or another role leaves the shard suspect, as before.

cdef const char *SHARD_CHECK = b"*3\r\n$4\r\nINFO\r\n$6\r\nserver\r\n$11\r\nreplication\r\n"


cdef void shard_check_send(Core *core, Backend *b) noexcept nogil:
    """b, a shared connection of the shard's own, is up: ask the shard who answers."""
    cdef Request *r = req_alloc(core)
    if r == NULL:
        return
    r.pending = 1
    r.resolving = True
    r.merge = MERGE_SHARD_CHECK
    r.acl_arg = b.shard
    frag_queue_on(core, b, &r.frag0, SHARD_CHECK, strlen(SHARD_CHECK))


cdef void shard_check_answered(Core *core, Request *r, const char *reply, size_t n) noexcept nogil:
    cdef Shard *s = &core.shards[<int>r.acl_arg]
    cdef const char *id = <const char *>memmem(reply, n, b"\nrun_id:", 8)
    cdef bint master = memmem(reply, n, b"\nrole:master\r", 13) != NULL
    r.resolving = False
    if id != NULL and <size_t>(reply + n - id) >= 8 + 40:
        id += 8
        if master and s.run_id[0] != 0 and memcmp(s.run_id, id, 40) == 0 and \
                s.suspect_until_us > core.now_us:
            # The same process, still master: only the connection was lost.
            s.suspect_until_us = 0
            if core.held_head != NULL:
                held_release(core, <int>r.acl_arg)
        memcpy(s.run_id, id, 40)
        s.run_id[40] = 0
    req_put(core, r)
