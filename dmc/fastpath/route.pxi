# Routing: from a parsed request to the shard(s) that answer it, and the fragments it is cut
# into when its keys live on several shards (split, one per key, every shard).


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


cdef inline int default_shard(Core *core) noexcept nogil:
    """Where keyless commands go: the first shard of the map that is up. Found again only after
    a shared connection went up or down or the map changed (default_shard_changed)."""
    if core.default_shard < 0:
        core.default_shard = default_shard_find(core)
    return core.default_shard


cdef inline void default_shard_changed(Core *core) noexcept nogil:
    core.default_shard = -1
    scripts_forget(core)        # a shard that went away and back may have lost its scripts


cdef int default_shard_find(Core *core) noexcept nogil:
    cdef int i, j, s
    for i in range(core.nactive):
        s = core.active[i]
        for j in range(core.shards[s].nconns):
            if core.shards[s].conns[j].state == BK_UP:
                return s
    return core.active[0] if core.nactive else 0


cdef inline bint arity_ok(CommandInfo *cmd, int argc) noexcept nogil:
    return argc == cmd.arity if cmd.arity > 0 else argc >= -cmd.arity


cdef void route_unknown_command(Core *core, Request *r, ArgVec *av) noexcept nogil:
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
    req_write(core, r, buf_head(out), buf_len(out))


cdef void route_param_refusal(Core *core, Request *r, ParamPolicy *p, ArgVec *av, int i) noexcept nogil:
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
    req_write(core, r, line, strlen(line))


cdef inline bint params_refused(Core *core, Request *r, CommandInfo *cmd, ArgVec *av,
                                bint queued=False) noexcept nogil:
    """True when the command's parameter policy refuses an argument, or every parameter asks for
    what the shards apply; the request is answered. When only some do, they are left out of av
    (the rest is sent). queued (inside MULTI): refusals only, the command is queued whole (an
    equal value is a no-op on the shard too)."""
    cdef int k, noops
    if cmd.params == NULL:
        return False
    k = param_refused(cmd.params, av, &noops)
    if k >= 0:
        route_param_refusal(core, r, cmd.params, av, k)
        return True
    if noops == 0 or queued:
        return False
    if noops == (av.argc - cmd.params.first) // cmd.params.step:
        req_write_str(core, r, b"+OK\r\n")       # a no-op, as on a Redis that has these values
        return True
    return params_rewrite(core, r, cmd.params, av)


cdef bint params_rewrite(Core *core, Request *r, ParamPolicy *p, ArgVec *av) noexcept nogil:
    """Rewrite av for the shards: without its parameters that ask for what the shards apply,
    and with each PARAM_SPLIT one's value (the database's) replaced by a shard's share; av.wire
    then points at core.subcommand (rare: CONFIG SET). True when r was answered (refused, or
    out of memory)."""
    cdef Buf *sub = &core.subcommand
    cdef int i = p.first, k, n = p.first, nsplit = 0, rc, per_shard = 0
    cdef ParamEntry *e
    while i < av.argc:
        e = param_entry(p, av.argv[i], av.argl[i])
        if e != NULL and e.verdict == PARAM_APPLIED \
                and param_is_applied(e, av.argv[i + 1], av.argl[i + 1]):
            i += p.step
            continue
        for k in range(p.step):
            av.argv[n + k] = av.argv[i + k]
            av.argl[n + k] = av.argl[i + k]
        if e != NULL and e.verdict == PARAM_SPLIT:
            if nsplit == PARAM_SPLIT_MAX:
                req_write_str(core, r, b"-ERR too many size parameters in one CONFIG SET\r\n")
                return True
            rc = param_split(core, r, e, av, n, core.split_values[nsplit])
            if rc < 0:
                return True
            if rc > 0:
                per_shard = n + 1
            nsplit += 1
        n += p.step
        i += p.step
    av.argc = n
    buf_clear(sub)
    buf_append_int(sub, c'*', n)
    for i in range(n):
        if buf_append_bulk(sub, av.argv[i], av.argl[i]) < 0:
            req_write_str(core, r, b"-ERR out of memory\r\n")
            return True
    av.wire = buf_head(sub)
    av.wire_len = buf_len(sub)
    core.split_arg = per_shard     # route_all_shards gives each shard its share
    return False


cdef int param_split(Core *core, Request *r, ParamEntry *e, ArgVec *av, int i, char *out) noexcept nogil:
    """CONFIG SET maxmemory of the database (av.argv[i + 1]): each shard's share, written into
    out and pointed at by av (0), or one per shard in Shard.memory_share (1). The share: when
    every shard's used_memory is known from an INFO of the last minute and the limit is above
    their sum, each shard's use plus an even part of the room above the sum (a client that
    reads used_memory and asks for 100kb more gets 100kb more, not a limit some shard is
    already over); else an even part, rounded up (`1` stays a limit). `0` (no limit asked)
    gives the shards their own limit back. Above the database's limit (a shard's times the
    shards): refused (r answered, -1). Not a size: left to the shards (their error)."""
    cdef char norm[PARAM_VALUE_MAX]
    cdef char line[256]
    cdef int k = param_normalise(PARAM_MEMORY, av.argv[i + 1], av.argl[i + 1], norm)
    cdef unsigned long long asked = 0, shard_limit = 0, share, used = 0, room
    cdef int j, nshards = core.nactive if core.nactive > 0 else 1
    cdef Shard *s
    if k < 0:
        return 0                # not a size: the shards answer Redis's own error
    for j in range(k):
        asked = asked * 10 + <unsigned long long>(norm[j] - c'0')
    for j in range(e.applied_len):
        shard_limit = shard_limit * 10 + <unsigned long long>(e.applied[j] - c'0')
    if asked == 0:
        share = shard_limit
    elif shard_limit > 0 and asked > shard_limit * <unsigned long long>nshards:
        snprintf(line, sizeof(line), b"-ERR CONFIG SET '%.*s' above the database's memory limit "
                 b"(%llu bytes): the limit is the database's memory_size\r\n",
                 <int>e.name_len, e.name, shard_limit * <unsigned long long>nshards)
        req_write(core, r, line, strlen(line))
        return -1
    else:
        share = (asked + <unsigned long long>nshards - 1) // <unsigned long long>nshards
    k = snprintf(out, 24, b"%llu", share)
    av.argv[i + 1] = out
    av.argl[i + 1] = <size_t>k
    if asked == 0 or core.nactive == 0:
        return 0
    for j in range(core.nactive):
        s = &core.shards[core.active[j]]
        if s.used_memory_us == 0 or core.now_us - s.used_memory_us > 60000000:
            return 0
        used += s.used_memory
    if asked <= used:
        return 0
    room = (asked - used + <unsigned long long>nshards - 1) // <unsigned long long>nshards
    for j in range(core.nactive):
        s = &core.shards[core.active[j]]
        s.memory_share = s.used_memory + room
        if shard_limit > 0 and s.memory_share > shard_limit:
            s.memory_share = shard_limit
    return 1


cdef bint req_route(Core *core, Client *c, ArgVec *av) noexcept nogil:
    """Route one request. False when it must wait (its bytes stay in the input)."""
    cdef CommandInfo *cmd = command_lookup(core.commands, av)
    cdef Request *r
    cdef KeyList *kl = &core.keys
    cdef int route
    if c.flags & CF_AUTHED and core.nactive > 0 and not (c.flags & CF_MULTI) and ((cmd != NULL and cmd.route == ROUTE_SUBSCRIBE) or
            (c.flags & CF_PUBSUB and c.proto == 2 and
             not (cmd != NULL and (cmd.local == LOCAL_QUIT or cmd.local == LOCAL_RESET)))):
        return route_subscriber(core, c, cmd, av)
    if c.flags & CF_PUBSUB and cmd != NULL and (cmd.local == LOCAL_RESET or cmd.local == LOCAL_QUIT) \
            and not subscriber_synced(core, c):
        return False        # answered after the frames still owed on the subscriber connection
    if cmd != NULL and cmd.local == LOCAL_CLIENT and c.head != NULL and av.argc > 2 \
            and not (c.flags & CF_MULTI) and arg_is(av, 1, b"tracking"):
        # Its later requests take other shard connections: the ones before it are answered first.
        c.flags |= CF_WAIT_DRAIN
        return False
    if cmd != NULL and cmd.route == ROUTE_WAIT and c.head != NULL and not (c.flags & CF_MULTI):
        # WAIT counts acknowledgements of what the shards answered before it: its client's
        # earlier requests are answered first.
        c.flags |= CF_WAIT_DRAIN
        return False
    if core.workers != NULL and not core.world_held and cmd != NULL and not (c.flags & CF_MULTI) \
            and worker_needs_all(core, cmd, av):
        return worker_cross_wait(core, c)   # about every worker's clients: at the turn's end
    c.last_us = core.now_us
    c.last_cmd = cmd
    r = req_get(core, c, cmd)
    if r == NULL:
        c.flags |= CF_CLOSE_AFTER_WRITE
        return True
    if not (c.flags & CF_AUTHED) and not (cmd != NULL and (cmd.local == LOCAL_AUTH or
            cmd.local == LOCAL_HELLO or cmd.local == LOCAL_QUIT or cmd.local == LOCAL_RESET)):
        req_write_str(core, r, b"-NOAUTH Authentication required.\r\n")
        return True
    if (core.monitors != NULL or (core.workers != NULL and dmc_atomic_load_int(&core.workers.monitors) > 0)) \
            and cmd != NULL and not cmd.unmonitored:
        monitor_feed(core, c, cmd, av)
    if core.nactive == 0:
        req_write_str(core, r, b"-CLUSTERDOWN No shard map yet\r\n")
        return True
    if c.flags & CF_TRACKING and cmd != NULL:
        tracking_command(core, c, cmd, av)
    if cmd == NULL and c.flags & CF_MULTI:
        route_multi_queued(core, c, r, cmd, av)
        return True
    if cmd == NULL:
        # Unknown to the table: the shard answers with Redis's own error text.
        r.pending = 1
        frag_send(core, default_shard(core), &r.frag0, av.wire, av.wire_len)
        return True
    route = cmd.route
    if c.flags & CF_MULTI and not (route == ROUTE_LOCAL and (cmd.local == LOCAL_MULTI or
            cmd.local == LOCAL_EXEC or cmd.local == LOCAL_DISCARD or cmd.local == LOCAL_QUIT or
            cmd.local == LOCAL_WATCH or cmd.local == LOCAL_RESET)):
        route_multi_queued(core, c, r, cmd, av)
        return True
    if route == ROUTE_LOCAL:
        route_local(core, c, r, av)
        return True
    if route == ROUTE_REFUSED:
        req_write_str(core, r, cmd.refusal)
        return True
    if params_refused(core, r, cmd, av):
        return True
    if route == ROUTE_SORT and sort_patterns_refused(core, r, av):
        return True
    if route == ROUTE_GETKEYS or route == ROUTE_SORT:
        route_getkeys(core, c, r, av)
        return True
    if route == ROUTE_SCAN:
        route_scan(core, r, av)
        return True
    if route == ROUTE_ALL_SHARDS or route == ROUTE_CONTROL:
        if cmd.name_len == 16 and memcmp(cmd.name, b"config|resetstat", 16) == 0:
            info_reset_stats(core)
        elif cmd.name_len == 12 and memcmp(cmd.name, b"script|flush", 12) == 0:
            scripts_forget(core)
        r.merge = cmd.merge
        if core.world_held and r.merge == MERGE_INFO:
            info_snapshot(core, r)      # every worker's figures (workers.pxi)
        route_all_shards(core, r, av)
        return True
    if command_keys(cmd, av, kl) < 0 or key_shards(core, av, kl) < 0:
        req_write_str(core, r, b"-ERR out of memory\r\n")
        return True
    if core.cluster != NULL and kl.n > 0 and cluster_redirected(core, r, av, kl):
        return True         # -MOVED: its keys are another node's (cluster_api.pxi)
    if route == ROUTE_BLOCKING:
        if c.flags & CF_PUBSUB:
            req_write_str(core, r, b"-ERR blocking commands are not available to a subscribed client through this proxy\r\n")
        else:
            route_blocking(core, c, r, av, kl)
        return True
    if route == ROUTE_WAIT:
        route_wait(core, c, r, av)
        return True
    if route == ROUTE_PUBSUB:
        r.pending = 1
        frag_send(core, core.active[0], &r.frag0, av.wire, av.wire_len)
        return True
    if cmd.caches_script and not (c.flags & CF_WATCH) and (kl.n == 0 or same_shard(core, kl.n)) \
            and script_spread(core, r, av, default_shard(core) if kl.n == 0 else core.key_shard[0]):
        return True         # its body cached on every shard too (scripts.pxi)
    r.pending = 1
    if kl.n == 0:
        frag_send(core, default_shard(core), &r.frag0, av.wire, av.wire_len)
    elif same_shard(core, kl.n):
        if c.flags & CF_WATCH and core.key_shard[0] == c.watch_shard:
            # In order with the WATCH, on its connection: what it reads is what EXEC checks.
            frag_send_on(core, c.dedicated, &r.frag0, av.wire, av.wire_len)
        else:
            frag_send(core, core.key_shard[0], &r.frag0, av.wire, av.wire_len)
    elif route == ROUTE_SPLIT:
        r.merge = cmd.merge
        route_split(core, r, av, kl)
    elif MERGE_SUNION <= cmd.merge <= MERGE_SINTERCARD:
        route_set_algebra(core, r, av, kl)
    elif MERGE_ZUNION <= cmd.merge <= MERGE_ZINTERCARD:
        route_zset_algebra(core, r, av, kl)
    elif cmd.merge == MERGE_PFCOUNT:
        route_pfcount(core, r, av, kl)
    elif core.multi_slot == MULTI_SLOT_SEQUENTIAL and seq_begin(core, c, r, cmd, av, kl):
        pass                # carried out as single-shard steps (sequential.pxi)
    else:
        req_write_str(core, r, b"-CROSSSLOT Keys in request don't hash to the same slot\r\n")
    return True


cdef void route_split(Core *core, Request *r, ArgVec *av, KeyList *kl) noexcept nogil:
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
    if req_fragment(r, nfr) < 0:
        req_write_str(core, r, b"-ERR out of memory\r\n")
        return
    if r.merge == MERGE_KEYED_ARRAY:
        r.key_frag = <unsigned short *>malloc(kl.n * sizeof(unsigned short))
        if r.key_frag == NULL:
            r.nfrags = nfr
            req_write_str(core, r, b"-ERR out of memory\r\n")
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
        frag_send(core, s, &r.frags[j], buf_head(sub), buf_len(sub))


cdef void route_per_key(Core *core, Request *r, ArgVec *av, KeyList *kl, const char *head,
                         const char *tail) noexcept nogil:
    """One fragment per key: `head <key> tail` sent to the key's shard (SMEMBERS, ZRANGE ...,
    GET); r's merge combines the replies when all are in."""
    cdef Buf *sub = &core.subcommand
    cdef int i, k
    if req_fragment(r, kl.n) < 0:
        req_write_str(core, r, b"-ERR out of memory\r\n")
        return
    r.pending = kl.n
    for i in range(kl.n):
        k = kl.pos[i]
        buf_clear(sub)
        buf_append_str(sub, head)
        buf_append_bulk(sub, av.argv[k], av.argl[k])
        buf_append_str(sub, tail)
        # r may be freed by the last send (a shard that is down answers at once).
        frag_send(core, core.key_shard[i], &r.frags[i], buf_head(sub), buf_len(sub))


cdef void route_all_shards(Core *core, Request *r, ArgVec *av) noexcept nogil:
    """To every shard of the map; ROUTE_CONTROL commands on the shards' control connections
    (busy.pxi), past a script that holds a shared one."""
    cdef int i, n = core.nactive
    cdef bint control = r.cmd.route == ROUTE_CONTROL
    if n > 1 and req_fragment(r, n) < 0:
        req_write_str(core, r, b"-ERR out of memory\r\n")
        return
    r.pending = n
    if core.split_arg > 0:
        route_all_shards_split(core, r, av)
        return
    for i in range(n):
        # r may be freed by the last send (a shard that is down answers at once).
        if control:
            frag_send_control(core, core.active[i], &r.frags[i], av.wire, av.wire_len)
        else:
            frag_send(core, core.active[i], &r.frags[i], av.wire, av.wire_len)


cdef void route_all_shards_split(Core *core, Request *r, ArgVec *av) noexcept nogil:
    """CONFIG SET maxmemory with a share per shard (param_split): each shard its own command,
    argument core.split_arg its Shard.memory_share."""
    cdef int i, j, n = core.nactive, arg = core.split_arg
    cdef Buf *sub = &core.subcommand
    cdef char share[24]
    core.split_arg = 0
    for i in range(n):
        buf_clear(sub)
        buf_append_int(sub, c'*', av.argc)
        for j in range(av.argc):
            if j == arg:
                snprintf(share, sizeof(share), b"%llu", core.shards[core.active[i]].memory_share)
                buf_append_bulk(sub, share, strlen(share))
            else:
                buf_append_bulk(sub, av.argv[j], av.argl[j])
        # (frag_send copies the bytes: sub is free again for the next shard.)
        frag_send(core, core.active[i], &r.frags[i], buf_head(sub), buf_len(sub))


cdef void route_getkeys(Core *core, Client *c, Request *r, ArgVec *av) noexcept nogil:
    """Ask the default shard which arguments are keys; the client's later requests wait, so
    that none of them overtakes this one on another shard."""
    cdef Buf *sub = &core.subcommand
    cdef int i
    if buf_append(&r.command, av.wire, av.wire_len) < 0:
        req_write_str(core, r, b"-ERR out of memory\r\n")
        return
    buf_clear(sub)
    buf_append_int(sub, c'*', av.argc + 2)
    buf_append_str(sub, b"$7\r\nCOMMAND\r\n$7\r\nGETKEYS\r\n")
    for i in range(av.argc):
        buf_append_bulk(sub, av.argv[i], av.argl[i])
    r.resolving = True
    r.pending = 1
    c.flags |= CF_RESOLVING
    # The proxy's own question: on its own connections, whatever the client's ACL user.
    frag_send_on(core, shard_backend(core, default_shard(core), c.proto), &r.frag0, buf_head(sub),
                 buf_len(sub))


cdef void route_getkeys_answered(Core *core, Request *r, const char *reply, size_t n) noexcept nogil:
    """The COMMAND GETKEYS answer for r is in: send r where its keys live."""
    cdef Client *c = r.client
    cdef long long count = 0, i, klen
    cdef const char *p = reply
    cdef const char *end = reply + n
    cdef const char *eol
    cdef int shard = -1, s
    r.resolving = False
    if c == NULL:
        req_put(core, r)
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
                    if core.multi_slot == MULTI_SLOT_SEQUENTIAL and seq_begin_resolved(core, r, reply, n):
                        return      # carried out as single-shard steps (sequential.pxi)
                    req_write_str(core, r, b"-CROSSSLOT Keys in request don't hash to the same slot\r\n")
                    return
                shard = s
                p = eol + 1 + klen + 2
    if shard < 0:
        shard = default_shard(core)
    r.pending = 1
    frag_send(core, shard, &r.frag0, buf_head(&r.command), buf_len(&r.command))


# SCAN: the proxy's cursor is (shard cursor) * N + (position of the shard in the map), N the
# number of shards in the map. A shard's SCAN cursor is below its hash table size, so the
# product stays far below 2^64. When one shard's scan ends, the cursor moves to the next shard.


cdef void route_scan(Core *core, Request *r, ArgVec *av) noexcept nogil:
    cdef unsigned long long cursor = 0, shard_cursor
    cdef int position, i
    cdef size_t k
    cdef char digits[24]
    cdef Buf *sub = &core.subcommand
    if av.argc < 2:
        # The shard answers with Redis's arity error.
        r.pending = 1
        frag_send(core, default_shard(core), &r.frag0, av.wire, av.wire_len)
        return
    if av.argl[1] == 0 or av.argl[1] > 20:
        req_write_str(core, r, b"-ERR invalid cursor\r\n")
        return
    for k in range(av.argl[1]):
        if av.argv[1][k] < c'0' or av.argv[1][k] > c'9':
            req_write_str(core, r, b"-ERR invalid cursor\r\n")
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
    frag_send(core, core.active[position], &r.frag0, buf_head(sub), buf_len(sub))


cdef void route_scan_answered(Core *core, Request *r, const char *reply, size_t n) noexcept nogil:
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
        req_write(core, r, reply, n)
        return
    p = reply + 4
    eol = <const char *>memchr(p, c'\n', n - 4)
    if eol == NULL or parse_ll(p + 1, eol - p - 2, &blen) < 0 or blen <= 0 or blen > 20:
        req_write_str(core, r, b"-ERR unexpected reply from shard\r\n")
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
    req_write(core, r, buf_head(out), buf_len(out))
