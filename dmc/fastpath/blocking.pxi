# Blocking commands (BLPOP & co.): each waits on a connection of its client's own, and the
# client's later requests wait behind it; CLIENT UNBLOCK ends the wait.


cdef void route_blocking(Core *core, Client *c, Request *r, ArgVec *av, KeyList *kl) noexcept nogil:
    """BLPOP & co. wait on a connection of the client's own, so that no other client sharing a
    connection waits with it; the client's next requests wait behind it, as on one Redis."""
    cdef int shard = core.key_shard[0] if kl.n > 0 else default_shard(core)
    cdef Backend *b
    if kl.n > 0 and not same_shard(core, kl.n):
        if not (c.flags & CF_WATCH) and core.multi_slot == MULTI_SLOT_SEQUENTIAL \
                and block_begin(core, c, r, av, kl):
            return      # over several shards, as single-shard steps (blocking_sequential.pxi)
        req_write_str(core, r, b"-CROSSSLOT Keys in request don't hash to the same slot\r\n")
        return
    if c.flags & CF_WATCH and shard != c.watch_shard:
        req_write_str(core, r, b"-CROSSSLOT Keys in request don't hash to the same slot\r\n")
        return
    b = client_dedicated(core, c, shard)
    r.pending = 1
    if b == NULL:
        req_write_str(core, r, b"-ERR out of memory\r\n")
        return
    r.blocking = True
    c.flags |= CF_BLOCKED
    frag_send_on(core, b, &r.frag0, av.wire, av.wire_len)


cdef void client_unblock(Core *core, Client *target, bint as_error) noexcept nogil:
    """CLIENT UNBLOCK of a blocked client: a WAIT is ended by its shards (wait_unblock); a
    blocking command's shard-side connection goes, and the client gets a timeout's null reply
    (or Redis's UNBLOCKED error)."""
    cdef Backend *b = target.dedicated
    cdef Fragment *f
    cdef const char *reply
    if target.waiters != NULL:
        wait_unblock(core, target, as_error)
        return
    if b == NULL or b.qhead == NULL:
        return
    f = b.qhead
    b.qhead = f.next
    if b.qhead == NULL:
        b.qtail = NULL
    b.queued -= 1
    f.next = NULL
    target.dedicated = NULL
    dedicated_close(core, b)
    if as_error:
        reply = b"-UNBLOCKED client unblocked via CLIENT UNBLOCK\r\n"
    else:
        reply = b"_\r\n" if target.proto == 3 else b"*-1\r\n"
    frag_answered(core, f, reply, strlen(reply))
