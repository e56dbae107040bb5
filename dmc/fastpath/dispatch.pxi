# Routing: from a parsed request to the shard(s) that answer it.

cdef int key_shards(Core *core, ArgVec *av, KeyList *kl) noexcept nogil:
    """Fill core.key_shard with the shard of every key in kl. -1 when out of memory."""
    cdef int i, k
    cdef unsigned short *ks
    if kl.n > core.key_shard_cap:
        ks = <unsigned short *>realloc(core.key_shard, kl.n * sizeof(unsigned short))
        if ks == NULL:
            return -1
        core.key_shard = ks
        core.key_shard_cap = kl.n
    for i in range(kl.n):
        k = kl.pos[i]
        core.key_shard[i] = core.slot_map[key_slot(av.argv[k], av.argl[k])]
    return 0


cdef inline bint same_shard(Core *core, int nkeys) noexcept nogil:
    cdef int i
    for i in range(1, nkeys):
        if core.key_shard[i] != core.key_shard[0]:
            return False
    return True


cdef int default_shard(Core *core) noexcept nogil:
    """Where keyless commands go: the first shard of the map that is up."""
    cdef int i, j, s
    for i in range(core.nactive):
        s = core.active[i]
        for j in range(core.shards[s].nconns):
            if core.shards[s].conns[j].state == BK_UP:
                return s
    return core.active[0] if core.nactive else 0


cdef void dispatch_split(Core *core, Request *r, ArgVec *av, KeyList *kl) noexcept nogil:
    """MGET/MSET/DEL/...: one sub-command per shard holding some of the keys; a key's group
    is the key and the arguments up to the next key (MSET: key value)."""
    cdef int i, j, k, nfr = 0, s, prefix = kl.pos[0], nargs, group_end
    cdef Buf *sub = &core.subcommand
    for i in range(core.nshards):
        core.shard_frag[i] = -1
    for i in range(kl.n):
        s = core.key_shard[i]
        if core.shard_frag[s] < 0:
            core.shard_frag[s] = nfr
            nfr += 1
    if request_fragments(r, nfr) < 0:
        request_answer_str(core, r, b"-ERR out of memory\r\n")
        return
    if r.merge == MERGE_KEYED_ARRAY:
        r.key_frag = <unsigned short *>malloc(kl.n * sizeof(unsigned short))
        if r.key_frag == NULL:
            r.nfrags = nfr
            request_answer_str(core, r, b"-ERR out of memory\r\n")
            return
        r.nkeys = kl.n
        for i in range(kl.n):
            r.key_frag[i] = core.shard_frag[core.key_shard[i]]
    r.pending = nfr
    # Build and send the sub-command of each fragment, in order of first appearance.
    for j in range(nfr):
        nargs = prefix
        for i in range(kl.n):
            if core.shard_frag[core.key_shard[i]] == j:
                group_end = kl.pos[i + 1] if i + 1 < kl.n else av.argc
                nargs += group_end - kl.pos[i]
        buf_clear(sub)
        buf_append_int(sub, c'*', nargs)
        for k in range(prefix):
            buf_append_bulk(sub, av.argv[k], av.argl[k])
        s = -1
        for i in range(kl.n):
            if core.shard_frag[core.key_shard[i]] == j:
                s = core.key_shard[i]
                group_end = kl.pos[i + 1] if i + 1 < kl.n else av.argc
                for k in range(kl.pos[i], group_end):
                    buf_append_bulk(sub, av.argv[k], av.argl[k])
        # r may be freed by the last send (a shard that is down answers at once).
        send_fragment(core, s, &r.frags[j], buf_head(sub), buf_len(sub))


cdef void dispatch_all_shards(Core *core, Request *r, ArgVec *av) noexcept nogil:
    cdef int i, n = core.nactive
    if n == 1:
        r.pending = 1
        send_fragment(core, core.active[0], &r.frag0, av.wire, av.wire_len)
        return
    if request_fragments(r, n) < 0:
        request_answer_str(core, r, b"-ERR out of memory\r\n")
        return
    r.pending = n
    for i in range(n):
        send_fragment(core, core.active[i], &r.frags[i], av.wire, av.wire_len)


cdef void dispatch_getkeys(Core *core, Client *c, Request *r, ArgVec *av) noexcept nogil:
    """Ask the default shard which arguments are keys; the client's later requests wait, so
    that none of them overtakes this one on another shard."""
    cdef Buf *sub = &core.subcommand
    cdef int i
    if buf_append(&r.command, av.wire, av.wire_len) < 0:
        request_answer_str(core, r, b"-ERR out of memory\r\n")
        return
    buf_clear(sub)
    buf_append_int(sub, c'*', av.argc + 2)
    buf_append_str(sub, b"$7\r\nCOMMAND\r\n$7\r\nGETKEYS\r\n")
    for i in range(av.argc):
        buf_append_bulk(sub, av.argv[i], av.argl[i])
    r.resolving = True
    r.pending = 1
    c.flags |= CF_RESOLVING
    send_fragment(core, default_shard(core), &r.frag0, buf_head(sub), buf_len(sub))


cdef void route_resolved(Core *core, Request *r, const char *reply, size_t n) noexcept nogil:
    """The COMMAND GETKEYS answer for r is in: send r where its keys live."""
    cdef Client *c = r.client
    cdef long long count = 0, i, klen
    cdef const char *p = reply
    cdef const char *end = reply + n
    cdef const char *eol
    cdef int shard = -1, s
    r.resolving = False
    if c == NULL:
        request_free(r)
        return
    c.flags &= ~CF_RESOLVING
    client_mark_dirty(core, c)      # its waiting input is parsed again when it is flushed
    # A `*N` of bulk keys; anything else (an error for bad arguments, say) goes to the default
    # shard with the command itself, which then answers with Redis's own error.
    if p[0] == c'*':
        eol = <const char *>memchr(p, c'\n', n)
        if eol != NULL and parse_ll(p + 1, eol - p - 2, &count) == 0:
            p = eol + 1
            for i in range(count):
                eol = <const char *>memchr(p, c'\n', end - p)
                if p[0] != c'$' or eol == NULL or parse_ll(p + 1, eol - p - 2, &klen) < 0 \
                        or klen < 0 or eol + 1 + klen + 2 > end:
                    shard = -1
                    break
                s = core.slot_map[key_slot(eol + 1, <size_t>klen)]
                if shard >= 0 and s != shard:
                    request_answer_str(core, r, b"-CROSSSLOT Keys in request don't hash to the same slot\r\n")
                    return
                shard = s
                p = eol + 1 + klen + 2
    if shard < 0:
        shard = default_shard(core)
    r.pending = 1
    send_fragment(core, shard, &r.frag0, buf_head(&r.command), buf_len(&r.command))


# SCAN: the proxy's cursor is (shard cursor) * N + (position of the shard in the map), N the
# number of shards in the map. A shard's SCAN cursor is below its hash table size, so the
# product stays far below 2^64. When one shard's scan ends, the cursor moves to the next shard.

cdef void dispatch_scan(Core *core, Request *r, ArgVec *av) noexcept nogil:
    cdef unsigned long long cursor = 0, shard_cursor
    cdef int position, i
    cdef size_t k
    cdef char digits[24]
    cdef Buf *sub = &core.subcommand
    if av.argc < 2:
        # The shard answers with Redis's arity error.
        r.pending = 1
        send_fragment(core, default_shard(core), &r.frag0, av.wire, av.wire_len)
        return
    if av.argl[1] == 0 or av.argl[1] > 20:
        request_answer_str(core, r, b"-ERR invalid cursor\r\n")
        return
    for k in range(av.argl[1]):
        if av.argv[1][k] < c'0' or av.argv[1][k] > c'9':
            request_answer_str(core, r, b"-ERR invalid cursor\r\n")
            return
        cursor = cursor * 10 + <unsigned long long>(av.argv[1][k] - c'0')
    position = <int>(cursor % <unsigned long long>core.nactive)
    shard_cursor = cursor // <unsigned long long>core.nactive
    buf_clear(sub)
    buf_append_int(sub, c'*', av.argc)
    buf_append_bulk(sub, av.argv[0], av.argl[0])
    snprintf(digits, sizeof(digits), b"%llu", shard_cursor)
    buf_append_bulk(sub, digits, strlen(digits))
    for i in range(2, av.argc):
        buf_append_bulk(sub, av.argv[i], av.argl[i])
    r.merge = MERGE_SCAN
    r.scan_position = position
    r.pending = 1
    send_fragment(core, core.active[position], &r.frag0, buf_head(sub), buf_len(sub))


cdef void scan_answer(Core *core, Request *r, const char *reply, size_t n) noexcept nogil:
    """Rewrite `*2 $len <shard cursor> *K keys...` with the proxy's cursor."""
    cdef const char *eol
    cdef const char *p
    cdef long long blen
    cdef unsigned long long shard_cursor = 0, cursor
    cdef int position = r.scan_position
    cdef long long i
    cdef char digits[24]
    cdef Buf *out = &core.merged
    if reply_is_error(reply) or n < 4 or memcmp(reply, b"*2\r\n$", 5) != 0:
        request_answer(core, r, reply, n)
        return
    p = reply + 4
    eol = <const char *>memchr(p, c'\n', n - 4)
    if eol == NULL or parse_ll(p + 1, eol - p - 2, &blen) < 0 or blen <= 0 or blen > 20:
        request_answer_str(core, r, b"-ERR unexpected reply from shard\r\n")
        return
    for i in range(blen):
        shard_cursor = shard_cursor * 10 + <unsigned long long>(eol[1 + i] - c'0')
    if shard_cursor == 0:
        # This shard is done: the next one starts from its beginning, or the scan is over.
        cursor = <unsigned long long>(position + 1) if position + 1 < core.nactive else 0
    else:
        cursor = shard_cursor * <unsigned long long>core.nactive + <unsigned long long>position
    buf_clear(out)
    buf_append_str(out, b"*2\r\n")
    snprintf(digits, sizeof(digits), b"%llu", cursor)
    buf_append_bulk(out, digits, strlen(digits))
    p = eol + 1 + blen + 2
    buf_append(out, p, n - (p - reply))
    request_answer(core, r, buf_head(out), buf_len(out))


# ---- transactions and blocking commands ------------------------------------------------------
#
# MULTI ... EXEC: the proxy answers MULTI and QUEUED itself, checking each queued command as
# Redis Cluster would (all keys on one shard, arity, known command); EXEC then sends
# `MULTI <commands> EXEC` to that shard in one contiguous write on the shared connection. The
# shard runs it atomically, and only the EXEC reply comes back to the client. A command refused
# while queueing makes EXEC answer EXECABORT, as in Redis.

cdef inline void multi_reset(Client *c) noexcept nogil:
    c.flags &= ~(CF_MULTI | CF_MULTI_DIRTY)
    c.multi_count = 0
    c.multi_shard = -1
    buf_free(&c.multi_cmds)


cdef void answer_unknown_command(Core *core, Request *r, ArgVec *av) noexcept nogil:
    """Redis's own text: unknown command 'x', with args beginning with: 'a' 'b' """
    cdef Buf *out = &core.merged
    cdef int i
    cdef size_t args_len = 0, take
    buf_clear(out)
    buf_append_str(out, b"-ERR unknown command '")
    buf_append(out, av.argv[0], av.argl[0] if av.argl[0] < 128 else 128)
    buf_append_str(out, b"', with args beginning with: ")
    for i in range(1, av.argc):
        if args_len >= 128:
            break
        take = av.argl[i] if av.argl[i] < 128 - args_len else 128 - args_len
        buf_append_str(out, b"'")
        buf_append(out, av.argv[i], take)
        buf_append_str(out, b"' ")
        args_len += take + 3
    buf_append_str(out, b"\r\n")
    request_answer(core, r, buf_head(out), buf_len(out))


cdef void answer_param_refusal(Core *core, Request *r, ParamPolicy *p, ArgVec *av, int i) noexcept nogil:
    """The policy's error line for the parameter at position i, named as the client wrote it
    (control characters shown as '?', so that the line stays one line)."""
    cdef char name[PARAM_NAME_MAX]
    cdef char line[256]
    cdef size_t k, n = av.argl[i] if av.argl[i] < PARAM_NAME_MAX else PARAM_NAME_MAX
    cdef unsigned char ch
    for k in range(n):
        ch = <unsigned char>av.argv[i][k]
        name[k] = c'?' if ch < 32 or ch == 127 else <char>ch
    snprintf(line, sizeof(line), p.refusal, <int>n, name)
    request_answer(core, r, line, strlen(line))


cdef inline bint params_refused(Core *core, Request *r, CommandInfo *cmd, ArgVec *av) noexcept nogil:
    """True when the command's parameter policy refuses an argument; the request is answered."""
    cdef int k
    if cmd.params == NULL:
        return False
    k = param_refused(cmd.params, av)
    if k < 0:
        return False
    answer_param_refusal(core, r, cmd.params, av, k)
    return True


cdef inline bint arity_ok(CommandInfo *cmd, int argc) noexcept nogil:
    return argc == cmd.arity if cmd.arity > 0 else argc >= -cmd.arity


cdef void multi_queue(Core *core, Client *c, Request *r, CommandInfo *cmd, ArgVec *av) noexcept nogil:
    cdef KeyList *kl = &core.keys
    cdef int s
    if cmd == NULL:
        c.flags |= CF_MULTI_DIRTY
        answer_unknown_command(core, r, av)
        return
    if not arity_ok(cmd, av.argc):
        c.flags |= CF_MULTI_DIRTY
        request_answer_error(core, r, b"-ERR wrong number of arguments for '%s' command\r\n", cmd.name)
        return
    if cmd.route == ROUTE_REFUSED:
        c.flags |= CF_MULTI_DIRTY
        request_answer_str(core, r, cmd.refusal)
        return
    if params_refused(core, r, cmd, av):
        c.flags |= CF_MULTI_DIRTY
        return
    if (cmd.route == ROUTE_ALL_SHARDS and core.nactive > 1) or cmd.route == ROUTE_SCAN \
            or cmd.route == ROUTE_GETKEYS or cmd.route == ROUTE_SUBSCRIBE:
        c.flags |= CF_MULTI_DIRTY
        request_answer_error(core, r, b"-ERR '%s' cannot run inside MULTI on a sharded database\r\n",
                             cmd.name)
        return
    if c.multi_shard >= 0 and c.multi_map != core.map_version and multi_reroute(core, c) < 0:
        c.flags |= CF_MULTI_DIRTY
        request_answer_str(core, r, b"-TRYAGAIN The transaction's keys moved to different shards while it was queued\r\n")
        return
    if command_keys(cmd, av, kl) < 0 or key_shards(core, av, kl) < 0:
        c.flags |= CF_MULTI_DIRTY
        request_answer_str(core, r, b"-ERR out of memory\r\n")
        return
    if kl.n > 0:
        s = core.key_shard[0]
        # A WATCH from an older map is not checked: EXEC fails as if its keys had changed.
        if not same_shard(core, kl.n) or (c.multi_shard >= 0 and s != c.multi_shard) or \
                (c.flags & CF_WATCH and s != c.watch_shard and c.watch_map == core.map_version):
            c.flags |= CF_MULTI_DIRTY
            request_answer_str(core, r, b"-CROSSSLOT Keys in request don't hash to the same slot\r\n")
            return
        c.multi_shard = s
        c.multi_map = core.map_version
    if buf_append(&c.multi_cmds, av.wire, av.wire_len) < 0:
        c.flags |= CF_MULTI_DIRTY
        request_answer_str(core, r, b"-ERR out of memory\r\n")
        return
    c.multi_count += 1
    request_answer_str(core, r, b"+QUEUED\r\n")


cdef int multi_reroute(Core *core, Client *c) noexcept nogil:
    """The shard map changed while the transaction was queued (a live migration, say): find
    the shard of its queued commands' keys in the current map. -1 when they are now on several
    shards (or out of memory). Rare: the queued bytes are parsed again."""
    cdef ArgVec av
    cdef KeyList *kl = &core.keys
    cdef const char *p = buf_head(&c.multi_cmds)
    cdef size_t left = buf_len(&c.multi_cmds), consumed, need
    cdef int shard = -1, i, rc = 0
    cdef CommandInfo *cmd
    argvec_init(&av)
    while left > 0 and rc == 0:
        if parse_request(p, left, &av, &consumed, &need) != PARSE_OK:
            break               # cannot happen: these bytes were parsed when they were queued
        cmd = command_lookup(core.commands, &av)     # known: an unknown one is not queued
        if cmd == NULL or command_keys(cmd, &av, kl) < 0 or key_shards(core, &av, kl) < 0:
            rc = -1
            break
        for i in range(kl.n):
            if shard >= 0 and core.key_shard[i] != shard:
                rc = -1
                break
            shard = core.key_shard[i]
        p += consumed
        left -= consumed
    argvec_free(&av)
    c.multi_shard = shard
    c.multi_map = core.map_version
    return rc


cdef void send_unanswered(Core *core, Backend *b, const char *cmd, size_t n) noexcept nogil:
    """A command of the proxy's own whose reply nobody reads (an UNWATCH, say)."""
    cdef Request *r = <Request *>calloc(1, sizeof(Request))
    if r == NULL:
        return
    r.frags = &r.frag0
    r.nfrags = 1
    r.frag0.req = r
    r.pending = 1
    send_fragment_on(core, b, &r.frag0, cmd, n)


cdef void watch_end(Core *core, Client *c, bint tell_shard) noexcept nogil:
    if c.flags & CF_WATCH:
        c.flags &= ~CF_WATCH
        if tell_shard and c.dedicated != NULL:
            send_unanswered(core, c.dedicated, b"*1\r\n$7\r\nUNWATCH\r\n", 17)


cdef void multi_exec(Core *core, Client *c, Request *r) noexcept nogil:
    cdef Buf *sub = &core.subcommand
    cdef int shard
    if c.flags & CF_MULTI_DIRTY:
        multi_reset(c)
        watch_end(core, c, True)
        request_answer_str(core, r, b"-EXECABORT Transaction discarded because of previous errors.\r\n")
        return
    if c.flags & CF_WATCH and c.watch_map != core.map_version:
        # The keys were watched on the shard that owned them then, which may not see their
        # changes any more: the transaction fails as if they had changed, and the client retries.
        multi_reset(c)
        watch_end(core, c, True)
        request_answer_str(core, r, b"_\r\n" if c.proto == 3 else b"*-1\r\n")
        return
    if c.multi_shard >= 0 and c.multi_map != core.map_version and multi_reroute(core, c) < 0:
        multi_reset(c)
        watch_end(core, c, True)
        request_answer_str(core, r, b"-EXECABORT Transaction discarded because its keys moved to different shards.\r\n")
        return
    buf_clear(sub)
    buf_append_str(sub, b"*1\r\n$5\r\nMULTI\r\n")
    buf_append(sub, buf_head(&c.multi_cmds), buf_len(&c.multi_cmds))
    buf_append_str(sub, b"*1\r\n$4\r\nEXEC\r\n")
    r.frag0.skip = c.multi_count + 1
    r.pending = 1
    shard = c.multi_shard if c.multi_shard >= 0 else default_shard(core)
    multi_reset(c)
    if c.flags & CF_WATCH:
        # Checked against the watched keys, on the connection that watches them; EXEC unwatches.
        c.flags &= ~CF_WATCH
        send_fragment_on(core, c.dedicated, &r.frag0, buf_head(sub), buf_len(sub))
        return
    send_fragment(core, shard, &r.frag0, buf_head(sub), buf_len(sub))


cdef void watch_keys(Core *core, Client *c, Request *r, ArgVec *av) noexcept nogil:
    """WATCH on a connection of the client's own to the keys' shard."""
    cdef KeyList *kl = &core.keys
    cdef Backend *b
    cdef int shard
    if c.flags & CF_MULTI:
        c.flags |= CF_MULTI_DIRTY
        request_answer_str(core, r, b"-ERR WATCH inside MULTI is not allowed\r\n")
        return
    if c.flags & CF_PUBSUB:
        # A RESP3 subscriber (a RESP2 one gets Redis's own error from its subscriber connection).
        request_answer_str(core, r, b"-ERR WATCH is not available to a subscribed client through this proxy\r\n")
        return
    if command_keys(r.cmd, av, kl) < 0 or key_shards(core, av, kl) < 0 or kl.n == 0:
        request_answer_error(core, r, b"-ERR wrong number of arguments for '%s' command\r\n", r.cmd.name)
        return
    shard = core.key_shard[0]
    if not same_shard(core, kl.n) or (c.flags & CF_WATCH and shard != c.watch_shard):
        request_answer_str(core, r, b"-CROSSSLOT Keys in request don't hash to the same slot\r\n")
        return
    b = client_dedicated(core, c, shard)
    r.pending = 1
    if b == NULL:
        request_answer_str(core, r, b"-ERR out of memory\r\n")
        return
    c.flags |= CF_WATCH
    c.watch_shard = shard
    c.watch_map = core.map_version
    send_fragment_on(core, b, &r.frag0, av.wire, av.wire_len)


cdef void dispatch_blocking(Core *core, Client *c, Request *r, ArgVec *av, KeyList *kl) noexcept nogil:
    """BLPOP & co. wait on a connection of the client's own, so that no other client sharing a
    connection waits with it; the client's next requests wait behind it, as on one Redis."""
    cdef int shard = core.key_shard[0] if kl.n > 0 else default_shard(core)
    cdef Backend *b
    if kl.n > 0 and not same_shard(core, kl.n):
        request_answer_str(core, r, b"-CROSSSLOT Keys in request don't hash to the same slot\r\n")
        return
    if c.flags & CF_WATCH and shard != c.watch_shard:
        request_answer_str(core, r, b"-CROSSSLOT Keys in request don't hash to the same slot\r\n")
        return
    b = client_dedicated(core, c, shard)
    r.pending = 1
    if b == NULL:
        request_answer_str(core, r, b"-ERR out of memory\r\n")
        return
    r.blocking = True
    c.flags |= CF_BLOCKED
    send_fragment_on(core, b, &r.frag0, av.wire, av.wire_len)


# The no-op write that gives a WAIT connection a replication offset of its own: a sharded
# channel nobody subscribes to (SPUBLISH is replicated, has no pattern subscribers and changes no
# key). Its reply is skipped.
cdef const char *WAIT_MARK = b"*3\r\n$8\r\nSPUBLISH\r\n$17\r\n__dmcproxy__:wait\r\n$0\r\n\r\n"


cdef void dispatch_wait(Core *core, Client *c, Request *r, ArgVec *av) noexcept nogil:
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
        request_answer_str(core, r, b"-ERR wrong number of arguments for 'wait' command\r\n")
        return
    if parse_ll(av.argv[1], av.argl[1], &n) < 0:
        request_answer_str(core, r, b"-ERR value is not an integer or out of range\r\n")
        return
    if parse_ll(av.argv[2], av.argl[2], &timeout) < 0:
        request_answer_str(core, r, b"-ERR timeout is not an integer or out of range\r\n")
        return
    if timeout < 0:
        request_answer_str(core, r, b"-ERR timeout is negative\r\n")
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
    if count > 1 and request_fragments(r, count) < 0:
        request_answer_str(core, r, b"-ERR out of memory\r\n")
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
                fragment_answer(core, &r.frags[k], b"-ERR out of memory\r\n", 20)
            else:
                # Its id on the shard first, for CLIENT UNBLOCK (client_unblock).
                buf_append_str(&b.wbuf, b"*2\r\n$6\r\nCLIENT\r\n$2\r\nID\r\n")
                b.wants_id = True
                send_fragment_on(core, b, &r.frags[k], buf_head(cmd), buf_len(cmd))
            k += 1
    client_forget_writes(c)


cdef int check_credentials(Core *core, Client *c, const char *user, size_t ulen,
                           const char *pw, size_t plen) noexcept nogil:
    """AUTH [user] password, for the database's `default` user: 0 accepted, -1 refused."""
    if user != NULL and not arg_equals_ci(user, ulen, b"default", 7):
        return -1
    if core.password == NULL:
        c.flags |= CF_AUTHED        # nopass: any password is accepted for `default`
        return 0
    if plen == strlen(core.password) and memcmp(pw, core.password, plen) == 0:
        c.flags |= CF_AUTHED
        return 0
    return -1


cdef void client_reset(Core *core, Client *c) noexcept nogil:
    """RESET: back to a fresh connection's state (the shard-side state goes with `dedicated`)."""
    multi_reset(c)
    c.flags &= ~(CF_WATCH | CF_PUBSUB | CF_PUBSUB_SYNC)
    if c.dedicated != NULL:
        dedicated_close(core, c.dedicated)
        c.dedicated = NULL
    c.proto = 2
    buf_free(&c.name)
    if core.password != NULL:
        c.flags &= ~CF_AUTHED


cdef void answer_local(Core *core, Client *c, Request *r, ArgVec *av) noexcept nogil:
    cdef long long db
    cdef int k
    cdef Buf *out = &core.merged
    cdef int local = r.cmd.local
    buf_clear(out)
    if local == LOCAL_PING:
        if av.argc == 1:
            request_answer_str(core, r, b"+PONG\r\n")
            return
        if av.argc == 2:
            buf_append_bulk(out, av.argv[1], av.argl[1])
            request_answer(core, r, buf_head(out), buf_len(out))
            return
    elif local == LOCAL_ECHO:
        if av.argc == 2:
            buf_append_bulk(out, av.argv[1], av.argl[1])
            request_answer(core, r, buf_head(out), buf_len(out))
            return
    elif local == LOCAL_AUTH:
        if av.argc == 2 or av.argc == 3:
            if av.argc == 2 and core.password == NULL:
                request_answer_str(core, r, b"-ERR AUTH <password> called without any password "
                                   b"configured for the default user. Are you sure your configuration is correct?\r\n")
            elif check_credentials(core, c, av.argv[1] if av.argc == 3 else NULL, av.argl[1],
                                   av.argv[av.argc - 1], av.argl[av.argc - 1]) == 0:
                request_answer_str(core, r, b"+OK\r\n")
            else:
                request_answer_str(core, r, b"-WRONGPASS invalid username-password pair or user is disabled.\r\n")
            return
    elif local == LOCAL_RESET:
        if av.argc == 1:
            client_reset(core, c)
            request_answer_str(core, r, b"+RESET\r\n")
            return
    elif local == LOCAL_HELLO:
        for k in range(2, av.argc - 2):
            if arg_is(av, k, b"auth"):
                if check_credentials(core, c, av.argv[k + 1], av.argl[k + 1], av.argv[k + 2],
                                     av.argl[k + 2]) < 0:
                    request_answer_str(core, r, b"-WRONGPASS invalid username-password pair or user is disabled.\r\n")
                    return
                break
        if not (c.flags & CF_AUTHED):
            request_answer_str(core, r, b"-NOAUTH HELLO must be called with the client already "
                               b"authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be "
                               b"used to authenticate the client and select the RESP protocol version at the same time\r\n")
            return
        if av.argc >= 2:
            if parse_ll(av.argv[1], av.argl[1], &db) < 0:
                request_answer_str(core, r, b"-ERR Protocol version is not an integer or out of range\r\n")
                return
            if db != 2 and db != 3:
                request_answer_str(core, r, b"-NOPROTO sorry, this protocol version is not supported.\r\n")
                return
            # From now on the client's requests go to connections speaking its protocol.
            c.proto = <int>db
        buf_append_str(out, b"%7\r\n" if c.proto == 3 else b"*14\r\n")
        buf_append_str(out, b"$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n")
        buf_append_bulk(out, core.server_version, strlen(core.server_version))
        buf_append_str(out, b"$5\r\nproto\r\n:3\r\n$2\r\nid\r\n" if c.proto == 3
                       else b"$5\r\nproto\r\n:2\r\n$2\r\nid\r\n")
        buf_append_int(out, c':', <long long>c.id)
        buf_append_str(out, b"$4\r\nmode\r\n$10\r\nstandalone\r\n$4\r\nrole\r\n$6\r\nmaster\r\n"
                       b"$7\r\nmodules\r\n*0\r\n")
        request_answer(core, r, buf_head(out), buf_len(out))
        return
    elif local == LOCAL_MULTI:
        if av.argc == 1:
            if c.flags & CF_MULTI:
                request_answer_str(core, r, b"-ERR MULTI calls can not be nested\r\n")
                return
            multi_reset(c)
            c.flags |= CF_MULTI
            request_answer_str(core, r, b"+OK\r\n")
            return
    elif local == LOCAL_EXEC or local == LOCAL_DISCARD:
        if not (c.flags & CF_MULTI):
            request_answer_str(core, r, b"-ERR EXEC without MULTI\r\n" if local == LOCAL_EXEC
                               else b"-ERR DISCARD without MULTI\r\n")
            return
        if av.argc == 1:
            if local == LOCAL_EXEC:
                multi_exec(core, c, r)
            else:
                multi_reset(c)
                watch_end(core, c, True)
                request_answer_str(core, r, b"+OK\r\n")
            return
        c.flags |= CF_MULTI_DIRTY
    elif local == LOCAL_WATCH:
        watch_keys(core, c, r, av)
        return
    elif local == LOCAL_UNWATCH:
        if av.argc == 1:
            watch_end(core, c, True)
            request_answer_str(core, r, b"+OK\r\n")
            return
    elif local == LOCAL_CLIENT:
        client_command(core, c, r, av)
        return
    elif local == LOCAL_MONITOR:
        if av.argc == 1:
            monitor_start(core, c, r)
            return
    elif local == LOCAL_QUIT:
        request_answer_str(core, r, b"+OK\r\n")
        c.flags |= CF_CLOSE_AFTER_WRITE
        return
    elif local == LOCAL_SELECT:
        if av.argc == 2:
            if parse_ll(av.argv[1], av.argl[1], &db) < 0:
                request_answer_str(core, r, b"-ERR value is not an integer or out of range\r\n")
            elif db != 0:
                request_answer_str(core, r, b"-ERR DB index is out of range\r\n")
            else:
                request_answer_str(core, r, b"+OK\r\n")
            return
    request_answer_error(core, r, b"-ERR wrong number of arguments for '%s' command\r\n", r.cmd.name)


cdef bint subscriber_command(Core *core, Client *c, CommandInfo *cmd, ArgVec *av) noexcept nogil:
    """Send a (P|S)(UN)SUBSCRIBE, or any command of a subscribed RESP2 client, on the client's
    own connection to the pub/sub shard, whose frames go straight back to the client; a
    (P|S)(UN)SUBSCRIBE is followed by the barrier, and the client's next requests wait for it.
    False: not now, replies owed before it must be written first."""
    cdef Backend *b
    if not (c.flags & CF_PUBSUB) and c.head != NULL:
        c.flags |= CF_WAIT_DRAIN
        return False
    if c.flags & CF_WATCH:
        # Its WATCH lives on a connection of its own to another shard, or would be mixed with
        # the subscriber's frames: the proxy keeps the two apart.
        buf_append_str(&c.wbuf, b"-ERR SUBSCRIBE while WATCHing keys is not supported by this proxy: UNWATCH first\r\n")
        client_mark_dirty(core, c)
        return True
    b = client_dedicated(core, c, core.active[0])
    if b == NULL or b.state == BK_DOWN:
        buf_append_str(&c.wbuf, b"-ERR the pub/sub shard is unavailable\r\n")
        c.flags |= CF_CLOSE_AFTER_WRITE
        client_mark_dirty(core, c)
        return True
    b.passthrough = True
    c.flags |= CF_PUBSUB
    subscriber_send(core, b, av.wire, av.wire_len, cmd != NULL and cmd.route == ROUTE_SUBSCRIBE)
    return True


cdef bint subscriber_synced(Core *core, Client *c) noexcept nogil:
    """Are all the frames of the client's subscriber connection in? If not, the barrier is sent
    (once) and False returned: the request waits for it."""
    cdef Backend *b = c.dedicated
    if b == NULL or b.synced or b.state == BK_DOWN:
        return True
    if not b.barrier:
        subscriber_send(core, b, NULL, 0, True)
    c.flags |= CF_PUBSUB_SYNC
    return False


cdef bint dispatch(Core *core, Client *c, ArgVec *av) noexcept nogil:
    """Route one request. False when it must wait (its bytes stay in the input)."""
    cdef CommandInfo *cmd = command_lookup(core.commands, av)
    cdef Request *r
    cdef KeyList *kl = &core.keys
    cdef int route
    if c.flags & CF_AUTHED and core.nactive > 0 and not (c.flags & CF_MULTI) and ((cmd != NULL and cmd.route == ROUTE_SUBSCRIBE) or
            (c.flags & CF_PUBSUB and c.proto == 2 and
             not (cmd != NULL and (cmd.local == LOCAL_QUIT or cmd.local == LOCAL_RESET)))):
        return subscriber_command(core, c, cmd, av)
    if c.flags & CF_PUBSUB and cmd != NULL and (cmd.local == LOCAL_RESET or cmd.local == LOCAL_QUIT) \
            and not subscriber_synced(core, c):
        return False        # answered after the frames still owed on the subscriber connection
    if cmd != NULL and cmd.route == ROUTE_WAIT and c.head != NULL and not (c.flags & CF_MULTI):
        # WAIT counts acknowledgements of what the shards answered before it: its client's
        # earlier requests are answered first.
        c.flags |= CF_WAIT_DRAIN
        return False
    c.last_us = core.now_us
    c.last_cmd = cmd
    r = request_new(c, cmd, core.now_us)
    if r == NULL:
        c.flags |= CF_CLOSE_AFTER_WRITE
        return True
    if not (c.flags & CF_AUTHED) and not (cmd != NULL and (cmd.local == LOCAL_AUTH or
            cmd.local == LOCAL_HELLO or cmd.local == LOCAL_QUIT or cmd.local == LOCAL_RESET)):
        request_answer_str(core, r, b"-NOAUTH Authentication required.\r\n")
        return True
    if core.monitors != NULL and cmd != NULL and not cmd.unmonitored:
        monitor_feed(core, c, cmd, av)
    if core.nactive == 0:
        request_answer_str(core, r, b"-CLUSTERDOWN No shard map yet\r\n")
        return True
    if cmd == NULL and c.flags & CF_MULTI:
        multi_queue(core, c, r, cmd, av)
        return True
    if cmd == NULL:
        # Unknown to the table: the shard answers with Redis's own error text.
        r.pending = 1
        send_fragment(core, default_shard(core), &r.frag0, av.wire, av.wire_len)
        return True
    route = cmd.route
    if c.flags & CF_MULTI and not (route == ROUTE_LOCAL and (cmd.local == LOCAL_MULTI or
            cmd.local == LOCAL_EXEC or cmd.local == LOCAL_DISCARD or cmd.local == LOCAL_QUIT or
            cmd.local == LOCAL_WATCH or cmd.local == LOCAL_RESET)):
        multi_queue(core, c, r, cmd, av)
        return True
    if route == ROUTE_LOCAL:
        answer_local(core, c, r, av)
        return True
    if route == ROUTE_REFUSED:
        request_answer_str(core, r, cmd.refusal)
        return True
    if params_refused(core, r, cmd, av):
        return True
    if route == ROUTE_GETKEYS:
        dispatch_getkeys(core, c, r, av)
        return True
    if route == ROUTE_SCAN:
        dispatch_scan(core, r, av)
        return True
    if route == ROUTE_ALL_SHARDS:
        r.merge = cmd.merge
        dispatch_all_shards(core, r, av)
        return True
    if command_keys(cmd, av, kl) < 0 or key_shards(core, av, kl) < 0:
        request_answer_str(core, r, b"-ERR out of memory\r\n")
        return True
    if route == ROUTE_BLOCKING:
        if c.flags & CF_PUBSUB:
            request_answer_str(core, r, b"-ERR blocking commands are not available to a subscribed client through this proxy\r\n")
        else:
            dispatch_blocking(core, c, r, av, kl)
        return True
    if route == ROUTE_WAIT:
        dispatch_wait(core, c, r, av)
        return True
    if route == ROUTE_PUBSUB:
        r.pending = 1
        send_fragment(core, core.active[0], &r.frag0, av.wire, av.wire_len)
        return True
    r.pending = 1
    if kl.n == 0:
        send_fragment(core, default_shard(core), &r.frag0, av.wire, av.wire_len)
    elif same_shard(core, kl.n):
        if c.flags & CF_WATCH and core.key_shard[0] == c.watch_shard:
            # In order with the WATCH, on its connection: what it reads is what EXEC checks.
            send_fragment_on(core, c.dedicated, &r.frag0, av.wire, av.wire_len)
        else:
            send_fragment(core, core.key_shard[0], &r.frag0, av.wire, av.wire_len)
    elif route == ROUTE_SPLIT:
        r.merge = cmd.merge
        dispatch_split(core, r, av, kl)
    elif MERGE_SUNION <= cmd.merge <= MERGE_SINTERCARD:
        dispatch_set_algebra(core, r, av, kl)
    elif MERGE_ZUNION <= cmd.merge <= MERGE_ZINTERCARD:
        dispatch_zset_algebra(core, r, av, kl)
    elif cmd.merge == MERGE_PFCOUNT:
        dispatch_pfcount(core, r, av, kl)
    else:
        request_answer_str(core, r, b"-CROSSSLOT Keys in request don't hash to the same slot\r\n")
    return True


# ---- clients: input ---------------------------------------------------------------------------

cdef void client_pause(Core *core, Client *c) noexcept nogil:
    if not (c.flags & CF_READ_PAUSED):
        c.flags |= CF_READ_PAUSED
        # Still told when it hangs up, so that a blocked client that leaves is cleaned up.
        watch(core, c.fd, c, &c.events, (c.events & ~EPOLLIN) | EPOLLRDHUP)


cdef void client_parse(Core *core, Client *c, Buf *inp) noexcept nogil:
    """Route every complete request in inp; leave a partial one there."""
    cdef size_t consumed, need
    cdef int rc
    cdef Request *r
    cdef char line[64]
    while buf_len(inp) > 0:
        if c.flags & (CF_CLOSED | CF_CLOSE_AFTER_WRITE):
            buf_clear(inp)
            return
        if c.flags & (CF_RESOLVING | CF_BLOCKED | CF_WAIT_DRAIN | CF_PUBSUB_SYNC):
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
            r = request_new(c, NULL, core.now_us)
            if r != NULL:
                if rc == PARSE_ERR_EXPECTED_DOLLAR:
                    snprintf(line, sizeof(line), b"-ERR Protocol error: expected '$', got '%c'\r\n",
                             core.av.bad_byte)
                    request_answer_str(core, r, line)
                else:
                    request_answer_str(core, r, parse_error_text(rc))
            c.flags |= CF_CLOSE_AFTER_WRITE
            buf_clear(inp)
            return
        if core.av.argc > 0 and not dispatch(core, c, &core.av):
            client_pause(core, c)
            return
        buf_consume(inp, consumed)


cdef void client_read(Core *core, Client *c) noexcept nogil:
    cdef ssize_t n
    cdef Buf chunk
    cdef size_t want
    if buf_len(&c.rbuf) == 0:
        # The common case: read into the shared chunk, keep only a partial request.
        n = recv(c.fd, core.read_chunk, READ_CHUNK, 0)
        if n <= 0:
            if n < 0 and (errno == EAGAIN or errno == EWOULDBLOCK or errno == EINTR):
                return
            client_close(core, c)
            return
        chunk.data = core.read_chunk
        chunk.pos = 0
        chunk.end = n
        chunk.cap = READ_CHUNK
        client_parse(core, c, &chunk)
        if buf_len(&chunk) > 0 and not (c.flags & CF_CLOSED):
            if buf_append(&c.rbuf, buf_head(&chunk), buf_len(&chunk)) < 0:
                client_close(core, c)
        return
    want = READ_CHUNK
    if c.need > buf_len(&c.rbuf) + want:
        want = c.need - buf_len(&c.rbuf)
    if buf_reserve(&c.rbuf, want) < 0:
        client_close(core, c)
        return
    n = recv(c.fd, c.rbuf.data + c.rbuf.end, c.rbuf.cap - c.rbuf.end, 0)
    if n <= 0:
        if n < 0 and (errno == EAGAIN or errno == EWOULDBLOCK or errno == EINTR):
            return
        client_close(core, c)
        return
    c.rbuf.end += n
    client_parse(core, c, &c.rbuf)
    if not (c.flags & CF_CLOSED) and buf_len(&c.rbuf) == 0:
        buf_free(&c.rbuf)


cdef void client_flush(Core *core, Client *c) noexcept nogil:
    cdef ssize_t n
    while buf_len(&c.wbuf) > 0:
        n = send(c.fd, buf_head(&c.wbuf), buf_len(&c.wbuf), MSG_NOSIGNAL)
        if n < 0:
            if errno == EINTR:
                continue
            if errno == EAGAIN or errno == EWOULDBLOCK:
                break
            client_close(core, c)
            return
        buf_consume(&c.wbuf, <size_t>n)
    if buf_len(&c.wbuf) > 0:
        watch(core, c.fd, c, &c.events, c.events | EPOLLOUT)
        return
    if c.flags & CF_CLOSE_AFTER_WRITE and c.head == NULL:
        client_close(core, c)
        return
    watch(core, c.fd, c, &c.events, c.events & ~EPOLLOUT)
    if c.flags & CF_WAIT_DRAIN and c.head == NULL:
        c.flags &= ~CF_WAIT_DRAIN
    if c.flags & CF_READ_PAUSED and c.inflight < MAX_INFLIGHT // 2 and not core.paused \
            and not (c.flags & (CF_RESOLVING | CF_BLOCKED | CF_WAIT_DRAIN | CF_PUBSUB_SYNC)):
        # Caught up: read again, starting with what was left unparsed.
        c.flags &= ~CF_READ_PAUSED
        watch(core, c.fd, c, &c.events, c.events | EPOLLIN)
        if buf_len(&c.rbuf) > 0:
            client_parse(core, c, &c.rbuf)
