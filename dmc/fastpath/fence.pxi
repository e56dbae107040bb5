# Fencing the data path.
#
# A map change that takes slots from a shard (a failover, a migration) or takes it out of the
# map: what is in flight on that shard's connections was sent to a shard that may no longer be
# the master of its keys. Its reply could come from a demoted master (one that was paused,
# SIGSTOP or a long stall, while its replica was promoted), which applies a write, answers +OK
# and loses it when it resyncs from the new master. So those replies are never read: every
# fragment in flight there is answered -TRYAGAIN (the command may or may not have been applied,
# as when a connection is lost) and the connections are closed. A paused switch (migration,
# graceful failover) has nothing in flight by then: only forced switches meet it.
#
# The fence (Proxy.fence()): while the node is cut off from the cluster's majority, a command
# that writes is answered -READONLY instead of being sent, and one that reads data (the
# `readonly` flag: GET, MGET, SCAN, EVAL_RO ...) -MASTERDOWN: once the node's lease has run out
# the majority may fail its shards over and write to the new masters, so what a shard here holds
# may be stale -- a read of it would answer a value that is no longer the key's (a chaos run's
# partition showed it: a register read on the minority side after the majority had written it).
# As Redis Cluster's minority with cluster-allow-reads-when-down no. Everything else (PING,
# INFO, SUBSCRIBE, the proxy's own commands) is still sent.
#
# The fence is up while fence(True) says so, and also, by itself, once the node's majority lease
# (Proxy.fence_until, a time.monotonic() deadline the node's dmcproxy passes on from
# run/lease.json) has run out -- checked against the loop's clock for every command, so that a
# proxy that was stopped (SIGSTOP of its node) refuses what it reads on waking up, before any
# Python code has run to notice that the lease is out (a chaos run's pause_node showed writes
# acknowledged there and lost).
#
# Holding instead of refusing: with core.fence_hold_us (Proxy's fence_hold_ms; the cluster's
# endpoints: control/node_proxy.py's FENCE_HOLD_MS) a fragment the fence refuses is first held,
# never sent, as hold.pxi holds one for a dead shard: sent in order the moment the fence is
# down again (fence(False), or a renewed lease: held_release), answered the refusal when
# its time is out. An election (a master that stepped down for a late turn of a loaded machine)
# lets the lease lapse for a moment; the node's clients see latency, not errors. Nothing is
# sent while the fence is up, so nothing is applied on the wrong side of a partition. Only
# fragments for a shard's shared connections are held (as hold.pxi's, a transaction's EXEC
# too, and an ACL user's shared connections); those for a connection of a client's own (a
# blocking command, after WATCH, a tracking client's) are refused at once.


cdef void fence_map_change(Core *core, const unsigned char *lost) noexcept nogil:
    """lost[i]: shard i lost slots (or its place in the map) in the map just installed."""
    cdef char line[200]
    cdef int i, j
    cdef Backend *b
    cdef Backend *nxt
    cdef Client *c
    cdef Client *cnext
    for i in range(core.nshards):
        if not lost[i]:
            continue
        snprintf(line, sizeof(line), b"-TRYAGAIN the shard map changed while the command was in "
                 b"flight to shard %s: it may or may not have been applied\r\n",
                 core.shards[i].label)
        for j in range(core.shards[i].nconns):
            b = &core.shards[i].conns[j]
            if b.state != BK_DOWN and b.qhead != NULL:
                backend_fail_line(core, b, line)
    c = core.all_clients
    while c != NULL:
        cnext = c.next
        b = c.dedicated
        if b != NULL and b.role == ROLE_DEDICATED and lost[b.shard] and b.state != BK_DOWN \
                and b.qhead != NULL:
            # (The struct stays the client's: client_dedicated opens it again on next use.)
            snprintf(line, sizeof(line), b"-TRYAGAIN the shard map changed while the command "
                     b"was in flight to shard %s: it may or may not have been applied\r\n",
                     core.shards[b.shard].label)
            backend_fail_line(core, b, line)
        b = c.waiters
        while b != NULL and c.waiters != NULL:
            nxt = b.next_waiter
            if lost[b.shard] and b.state != BK_DOWN and b.qhead != NULL:
                snprintf(line, sizeof(line), b"-TRYAGAIN the shard map changed while WAIT was "
                         b"in flight to shard %s\r\n", core.shards[b.shard].label)
                backend_fail_line(core, b, line)    # the last one closes them all
            b = nxt
        c = cnext


cdef bint fence_up(Core *core) noexcept nogil:
    return core.fenced or (core.lease_until_us != 0 and core.now_us >= core.lease_until_us)


cdef const char *fence_refusal(Fragment *f) noexcept nogil:
    """The fence's answer to f: -READONLY if it writes, -MASTERDOWN if it reads data, NULL if
    it does neither (it is served while the fence is up)."""
    if f.req.cmd == NULL or f.req.resolving:
        return NULL
    if f.req.cmd.writes:
        return (b"-READONLY this proxy's node is cut off from the cluster's majority: writes "
                b"are refused until it is back\r\n")
    if f.req.cmd.cls == CLASS_READ:
        return (b"-MASTERDOWN this proxy's node is cut off from the cluster's majority: reads "
                b"are refused until it is back (its data may be stale)\r\n")
    return NULL
