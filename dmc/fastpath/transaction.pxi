# Transactions: MULTI ... EXEC, and WATCH.
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


cdef void route_multi_queued(Core *core, Client *c, Request *r, CommandInfo *cmd, ArgVec *av) noexcept nogil:
    cdef KeyList *kl = &core.keys
    cdef int s, store, leaves
    if cmd == NULL:
        c.flags |= CF_MULTI_DIRTY
        route_unknown_command(core, r, av)
        return
    if not arity_ok(cmd, av.argc):
        c.flags |= CF_MULTI_DIRTY
        req_write_error(core, r, b"-ERR wrong number of arguments for '%s' command\r\n", cmd.name)
        return
    if cmd.no_multi and cmd.route != ROUTE_LOCAL:
        # (WATCH, MULTI & co. are the proxy's own, answered as Redis answers them.)
        c.flags |= CF_MULTI_DIRTY
        req_write_str(core, r, b"-ERR Command not allowed inside a transaction\r\n")
        return
    if cmd.route == ROUTE_REFUSED:
        c.flags |= CF_MULTI_DIRTY
        req_write_str(core, r, cmd.refusal)
        return
    if params_refused(core, r, cmd, av, True):
        c.flags |= CF_MULTI_DIRTY
        return
    if core.nbusy > 0 and cmd.route != ROUTE_CONTROL and busy_reply(core) != NULL:
        # A shard runs a script: the database is busy, and Redis refuses the command rather
        # than queue it (EXEC then answers EXECABORT), as one Redis does.
        c.flags |= CF_MULTI_DIRTY
        req_write_str(core, r, busy_reply(core))
        return
    if ((cmd.route == ROUTE_ALL_SHARDS or cmd.route == ROUTE_CONTROL) and core.nactive > 1) \
            or cmd.route == ROUTE_SCAN \
            or cmd.route == ROUTE_GETKEYS or cmd.route == ROUTE_SUBSCRIBE:
        c.flags |= CF_MULTI_DIRTY
        req_write_error(core, r, b"-ERR '%s' cannot run inside MULTI on a sharded database\r\n",
                             cmd.name)
        return
    if cmd.route == ROUTE_LOCAL and (cmd.local == LOCAL_AUTH or cmd.local == LOCAL_HELLO or
                                     cmd.local == LOCAL_ACL):
        # Run by a shard in the transaction, they would change the user (or protocol) of a
        # connection other clients share, or the ACL of one shard only.
        c.flags |= CF_MULTI_DIRTY
        req_write_error(core, r, b"-ERR '%s' cannot run inside MULTI through this proxy\r\n",
                        cmd.name)
        return
    if c.multi_shard >= 0 and c.multi_map != core.map_version and multi_reroute(core, c) < 0:
        c.flags |= CF_MULTI_DIRTY
        req_write_str(core, r, b"-TRYAGAIN The transaction's keys moved to different shards while it was queued\r\n")
        return
    if cmd.route == ROUTE_SORT:
        leaves = sort_options(av, &store)
        if leaves != 0:
            # Its patterns' keys on other shards cannot be read inside the transaction.
            c.flags |= CF_MULTI_DIRTY
            req_write_str(core, r, sort_pattern_refusal(leaves))
            return
    if transaction_keys(cmd, av, kl) < 0 or key_shards(core, av, kl) < 0:
        c.flags |= CF_MULTI_DIRTY
        req_write_str(core, r, b"-ERR out of memory\r\n")
        return
    if kl.n > 0:
        s = core.key_shard[0]
        # A WATCH from an older map is not checked: EXEC fails as if its keys had changed.
        if not same_shard(core, kl.n) or (c.multi_shard >= 0 and s != c.multi_shard) or \
                (c.flags & CF_WATCH and s != c.watch_shard and c.watch_map == core.map_version):
            c.flags |= CF_MULTI_DIRTY
            req_write_str(core, r, b"-CROSSSLOT Keys in request don't hash to the same slot\r\n")
            return
        c.multi_shard = s
        c.multi_map = core.map_version
    if buf_append(&c.multi_cmds, av.wire, av.wire_len) < 0:
        c.flags |= CF_MULTI_DIRTY
        req_write_str(core, r, b"-ERR out of memory\r\n")
        return
    c.multi_count += 1
    req_write_str(core, r, b"+QUEUED\r\n")


cdef inline int transaction_keys(CommandInfo *cmd, ArgVec *av, KeyList *kl) noexcept nogil:
    """The keys of a queued command (SORT's: its sorted key and STORE's destination)."""
    if cmd.route == ROUTE_SORT:
        return sort_keys(av, kl)
    return command_keys(cmd, av, kl)


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
        if cmd == NULL or transaction_keys(cmd, &av, kl) < 0 or key_shards(core, &av, kl) < 0:
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


cdef void multi_exec(Core *core, Client *c, Request *r) noexcept nogil:
    cdef Buf *sub = &core.subcommand
    cdef int shard
    if core.nbusy > 0 and busy_reply(core) != NULL:
        # As Redis refuses EXEC while a script runs (before its queueing errors): the transaction is discarded, not run
        # (also on the shards that are not busy: it is one atomic step of the database).
        multi_reset(c)
        watch_end(core, c, True)
        buf_clear(sub)
        buf_append_str(sub, b"-EXECABORT Transaction discarded because of: ")
        buf_append_str(sub, busy_reply(core) + 1)
        req_write(core, r, buf_head(sub), buf_len(sub))
        return
    if c.flags & CF_MULTI_DIRTY:
        multi_reset(c)
        watch_end(core, c, True)
        req_write_str(core, r, b"-EXECABORT Transaction discarded because of previous errors.\r\n")
        return
    if c.flags & CF_WATCH and c.watch_map != core.map_version:
        # The keys were watched on the shard that owned them then, which may not see their
        # changes any more: the transaction fails as if they had changed, and the client retries.
        multi_reset(c)
        watch_end(core, c, True)
        req_write_str(core, r, b"_\r\n" if c.proto == 3 else b"*-1\r\n")
        return
    if c.multi_shard >= 0 and c.multi_map != core.map_version and multi_reroute(core, c) < 0:
        multi_reset(c)
        watch_end(core, c, True)
        req_write_str(core, r, b"-EXECABORT Transaction discarded because its keys moved to different shards.\r\n")
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
        frag_send_on(core, c.dedicated, &r.frag0, buf_head(sub), buf_len(sub))
        return
    frag_send(core, shard, &r.frag0, buf_head(sub), buf_len(sub))


cdef void route_watch(Core *core, Client *c, Request *r, ArgVec *av) noexcept nogil:
    """WATCH on a connection of the client's own to the keys' shard."""
    cdef KeyList *kl = &core.keys
    cdef Backend *b
    cdef int shard
    if c.flags & CF_MULTI:
        # Refused, and the transaction goes on, as in Redis (it is not queued, nor counted
        # as a queueing error).
        req_write_str(core, r, b"-ERR WATCH inside MULTI is not allowed\r\n")
        return
    if c.flags & CF_PUBSUB:
        # A RESP3 subscriber (a RESP2 one gets Redis's own error from its subscriber connection).
        req_write_str(core, r, b"-ERR WATCH is not available to a subscribed client through this proxy\r\n")
        return
    if command_keys(r.cmd, av, kl) < 0 or key_shards(core, av, kl) < 0 or kl.n == 0:
        req_write_error(core, r, b"-ERR wrong number of arguments for '%s' command\r\n", r.cmd.name)
        return
    shard = core.key_shard[0]
    if not same_shard(core, kl.n) or (c.flags & CF_WATCH and shard != c.watch_shard):
        req_write_str(core, r, b"-CROSSSLOT Keys in request don't hash to the same slot\r\n")
        return
    b = client_dedicated(core, c, shard)
    r.pending = 1
    if b == NULL:
        req_write_str(core, r, b"-ERR out of memory\r\n")
        return
    c.flags |= CF_WATCH
    c.watch_shard = shard
    c.watch_map = core.map_version
    frag_send_on(core, b, &r.frag0, av.wire, av.wire_len)


cdef void watch_end(Core *core, Client *c, bint tell_shard) noexcept nogil:
    if c.flags & CF_WATCH:
        c.flags &= ~CF_WATCH
        if tell_shard and c.dedicated != NULL:
            req_send_unanswered(core, c.dedicated, b"*1\r\n$7\r\nUNWATCH\r\n", 17)
