# WAIT: what it waits for (the shards a client wrote to since its last WAIT), and the
# connections of the client's own that wait on those shards, one each.


cdef inline void client_wrote(Client *c, int shard) noexcept nogil:
    if shard < 64:
        c.written |= 1ULL << shard
    else:
        client_wrote_more(c, shard)


cdef void client_wrote_more(Client *c, int shard) noexcept nogil:
    cdef int word = (shard >> 6) - 1
    cdef int want
    cdef unsigned long long *grown
    if word >= c.written_more_words:
        want = word + 1
        grown = <unsigned long long *>realloc(c.written_more, want * sizeof(unsigned long long))
        if grown == NULL:
            return
        memset(grown + c.written_more_words, 0,
               (want - c.written_more_words) * sizeof(unsigned long long))
        c.written_more = grown
        c.written_more_words = want
    c.written_more[word] |= 1ULL << (shard & 63)


cdef inline bint client_has_written(Client *c, int shard) noexcept nogil:
    if shard < 64:
        return (c.written >> shard) & 1
    if (shard >> 6) - 1 >= c.written_more_words:
        return False
    return (c.written_more[(shard >> 6) - 1] >> (shard & 63)) & 1


cdef void client_forget_writes(Client *c) noexcept nogil:
    c.written = 0
    if c.written_more != NULL:
        memset(c.written_more, 0, c.written_more_words * sizeof(unsigned long long))


cdef Backend *client_waiter(Core *core, Client *c, int shard) noexcept nogil:
    """A new connection of the client's own to the shard, for one WAIT (see route_wait)."""
    cdef Backend *b = backend_new(shard, c, 2, ROLE_WAITER)   # WAIT answers an integer, the same in RESP2 and 3
    if b == NULL:
        return NULL
    b.next_waiter = c.waiters
    c.waiters = b
    backend_connect(core, b)
    return b


cdef int rsp_waiter(Core *core, Backend *b, const char *p, size_t n, int push) noexcept nogil:
    """A reply on a WAIT connection: first its CLIENT ID on the shard, then the WAIT's own."""
    if b.wants_id:
        b.wants_id = False
        parse_ll(p + 1, n - 3, &b.shard_client_id)
        if b.unblock_wanted:
            waiter_unblock(core, b, b.unblock_wanted == 2)
        return 0
    return rsp_fragment(core, b, p, n, push)


cdef void waiters_close(Core *core, Client *c) noexcept nogil:
    cdef Backend *b = c.waiters
    cdef Backend *nxt
    c.waiters = NULL
    while b != NULL:
        nxt = b.next_waiter
        dedicated_close(core, b)
        b = nxt


# The no-op write that gives a WAIT connection a replication offset of its own: a sharded
# channel nobody subscribes to (SPUBLISH is replicated, has no pattern subscribers and changes no
# key). Its reply is skipped.
cdef const char *WAIT_MARK = b"*3\r\n$8\r\nSPUBLISH\r\n$17\r\n__dmcproxy__:wait\r\n$0\r\n\r\n"


cdef void route_wait(Core *core, Client *c, Request *r, ArgVec *av) noexcept nogil:
    """WAIT numreplicas timeout: the smallest number of replicas that acknowledged, on every shard
    the client wrote to since its last WAIT, the writes made before it.

    Redis counts the acknowledgements of the offset a connection's own last write reached. The
    client's writes went over shared connections, so on each such shard the proxy opens a
    connection of the client's own, makes it a no-op replicated write (WAIT_MARK), then sends the
    WAIT there: the offset waited for is past every write the shard had answered, the client's
    included (WAIT is routed only once the client's earlier requests are answered). The shards
    wait in parallel, each with the client's timeout; no shared connection is blocked. With no
    write to wait for, the WAIT goes bare to every shard and answers at once, as in Redis."""
    cdef long long n, timeout
    cdef int i, k, count = 0
    cdef bint moved = False, bare
    cdef Backend *b
    cdef Buf *cmd = &core.subcommand
    if av.argc != 3:
        req_write_str(core, r, b"-ERR wrong number of arguments for 'wait' command\r\n")
        return
    if parse_ll(av.argv[1], av.argl[1], &n) < 0:
        req_write_str(core, r, b"-ERR value is not an integer or out of range\r\n")
        return
    if parse_ll(av.argv[2], av.argl[2], &timeout) < 0:
        req_write_str(core, r, b"-ERR timeout is not an integer or out of range\r\n")
        return
    if timeout < 0:
        req_write_str(core, r, b"-ERR timeout is negative\r\n")
        return
    for i in range(core.nshards):
        if client_has_written(c, i):
            if core.shards[i].active:
                count += 1
            else:
                moved = True
    bare = count == 0 and not moved
    if bare or moved:
        # Nothing written: every shard, bare. Written to a shard the map has since dropped (its
        # slots moved): every shard of the map, as the data may be on any of them now.
        client_forget_writes(c)
        for k in range(core.nactive):
            client_wrote(c, core.active[k])
        count = core.nactive
    buf_clear(cmd)
    if not bare:
        buf_append_str(cmd, WAIT_MARK)
    buf_append(cmd, av.wire, av.wire_len)
    if count > 1 and req_fragment(r, count) < 0:
        req_write_str(core, r, b"-ERR out of memory\r\n")
        return
    r.merge = MERGE_AGG_MIN
    r.pending = count
    r.blocking = True
    c.flags |= CF_BLOCKED
    k = 0
    for i in range(core.nshards):
        if k < count and client_has_written(c, i) and core.shards[i].active:
            r.frags[k].skip = 0 if bare else 1
            b = client_waiter(core, c, i)
            if b == NULL:
                frag_answered(core, &r.frags[k], b"-ERR out of memory\r\n", 20)
            else:
                # Its id on the shard first, for CLIENT UNBLOCK (wait_unblock).
                buf_append_str(&b.wbuf, b"*2\r\n$6\r\nCLIENT\r\n$2\r\nID\r\n")
                b.wants_id = True
                if c.user != NULL:
                    # The WAIT runs as the client's ACL user, its CLIENT ID and mark before it
                    # as the proxy's.
                    acl_wait_prefix(core, b, c.user, not bare)
                    frag_send_on(core, b, &r.frags[k], av.wire, av.wire_len)
                else:
                    frag_send_on(core, b, &r.frags[k], buf_head(cmd), buf_len(cmd))
            k += 1
    client_forget_writes(c)


cdef void wait_unblock(Core *core, Client *c, bint as_error) noexcept nogil:
    """CLIENT UNBLOCK of a client in WAIT: each shard is told to unblock the client's connection
    there, and answers the count it reached (TIMEOUT) or UNBLOCKED (ERROR)."""
    cdef Backend *b = c.waiters
    while b != NULL:
        waiter_unblock(core, b, as_error)
        b = b.next_waiter


cdef void waiter_unblock(Core *core, Backend *b, bint as_error) noexcept nogil:
    """CLIENT UNBLOCK <its id on the shard> TIMEOUT|ERROR, on a shared connection of the
    proxy's; sent once the id is known (rsp_waiter) when it is not yet."""
    cdef char line[96]
    if b.shard_client_id <= 0:
        b.unblock_wanted = 2 if as_error else 1
        return
    b.unblock_wanted = 0
    snprintf(line, sizeof(line), b"*4\r\n$6\r\nCLIENT\r\n$7\r\nUNBLOCK\r\n$%d\r\n%lld\r\n$%d\r\n%s\r\n",
             <int>snprintf(NULL, 0, b"%lld", b.shard_client_id), b.shard_client_id,
             5 if as_error else 7, b"ERROR" if as_error else b"TIMEOUT")
    req_send_unanswered(core, shard_backend(core, b.shard, 2), line, strlen(line))
