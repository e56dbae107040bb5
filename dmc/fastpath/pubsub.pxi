# Pub/sub: subscribers, and the keyspace-notification relay.
#
# A subscriber's connection passes every frame straight to its client. After each
# (P|S)(UN)SUBSCRIBE the proxy sends a barrier, `PING <marker>`, and reads no more of the client
# until the barrier's reply is back: every frame of that command is in by then, and the counts of
# the last (un)subscribe frames say whether the shard still holds a subscription of the client.
# When it holds none, the connection is closed and the client is an ordinary one again, as a
# Redis client whose subscription count reaches 0.


cdef const char *PUBSUB_BARRIER = b"*2\r\n$4\r\nPING\r\n$23\r\ndmcproxy:pubsub-barrier\r\n"
# Its reply: the bulk alone (RESP3, or no longer subscribed), or `*2 pong <bulk>` (RESP2, subscribed).
cdef const char *BARRIER_BULK = b"$23\r\ndmcproxy:pubsub-barrier\r\n"
cdef const char *PONG_PREFIX = b"*2\r\n$4\r\npong\r\n"


cdef inline bint is_barrier_reply(const char *p, size_t n) noexcept nogil:
    if n == BARRIER_BULK_LEN:
        return memcmp(p, BARRIER_BULK, BARRIER_BULK_LEN) == 0
    return n == PONG_PREFIX_LEN + BARRIER_BULK_LEN and memcmp(p, PONG_PREFIX, PONG_PREFIX_LEN) == 0 \
        and memcmp(p + PONG_PREFIX_LEN, BARRIER_BULK, BARRIER_BULK_LEN) == 0


cdef void subscription_count(Core *core, Backend *b, const char *p, size_t n) noexcept nogil:
    """Note the count an (un)subscribe confirmation ends with: `*3 <kind> <channel> :<count>`
    (`>3` in RESP3), the subscriptions of the kind's family left on the connection: channels and
    patterns, or sharded channels (ssubscribe, sunsubscribe)."""
    cdef const char *kind
    cdef const char *q
    cdef const char *end = p + n - 2
    cdef size_t klen
    cdef long long count
    if n < 16 or (p[0] != c'*' and p[0] != c'>') or memcmp(p + 1, b"3\r\n$", 4) != 0:
        return
    if p[5] == c'9' and p[6] == c'\r':
        klen = 9
        kind = p + 8
    elif p[5] == c'1' and c'0' <= p[6] <= c'2' and p[7] == c'\r':
        klen = 10 + <size_t>(p[6] - c'0')
        kind = p + 9
    else:
        return                      # message, pmessage, smessage, pong
    if kind + klen + 2 > end or memcmp(kind + klen - 9, b"subscribe", 9) != 0:
        return
    q = end - 1
    while q > kind + klen and c'0' <= q[0] <= c'9':
        q -= 1
    if q[0] != c':' or (q - 1)[0] != c'\n' or parse_ll(q + 1, end - q - 1, &count) < 0:
        return
    if kind[0] == c's' and klen != 9:
        b.shard_subscriptions = <int>count
        count_subscriptions(core, b, -1, -1, <int>count)
    else:
        # The count is channels + patterns: the change is the family of this frame's kind.
        if kind[0] == c'p':
            count_subscriptions(core, b, -1, b.patterns + <int>count - b.subscriptions, -1)
        else:
            count_subscriptions(core, b, b.channels + <int>count - b.subscriptions, -1, -1)
        b.subscriptions = <int>count


cdef bint route_subscriber(Core *core, Client *c, CommandInfo *cmd, ArgVec *av) noexcept nogil:
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
    b.role = ROLE_SUBSCRIBER
    c.flags |= CF_PUBSUB
    # Counted, not timed: its answer is among the frames the connection passes through.
    count_request(core, cmd)
    count_answer(core, command_class(cmd), False, b"", 0, False)
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


cdef void subscriber_send(Core *core, Backend *b, const char *data, size_t n, bint barrier) noexcept nogil:
    """A client's command on its subscriber connection, followed by the barrier if asked."""
    if n > 0:
        buf_append(&b.wbuf, data, n)
    b.synced = False
    if barrier and b.owner != NULL:
        buf_append_str(&b.wbuf, PUBSUB_BARRIER)
        b.barrier = True
        b.owner.flags |= CF_PUBSUB_SYNC
    backend_mark_dirty(core, b)


cdef int rsp_subscriber(Core *core, Backend *b, const char *p, size_t n) noexcept nogil:
    """A frame from a subscriber's connection: to its client, except the barrier's reply. When
    that reply shows the connection subscribed to nothing, the connection is released (closed)
    and -1 returned: nothing more can come, the client is paused and subscribed to nothing."""
    cdef Client *c = b.owner
    if b.barrier and is_barrier_reply(p, n):
        b.barrier = False
        b.synced = True
        if c == NULL or c.flags & CF_CLOSED:
            return 0
        c.flags &= ~CF_PUBSUB_SYNC
        client_mark_dirty(core, c)      # its waiting input is parsed again when it is flushed
        if b.subscriptions == 0 and b.shard_subscriptions == 0:
            subscriber_release(core, c)
            return -1
        return 0
    if c == NULL or c.flags & CF_CLOSED:
        return 0
    subscription_count(core, b, p, n)
    buf_append(&c.wbuf, p, n)
    client_mark_dirty(core, c)
    return 0


cdef void subscriber_release(Core *core, Client *c) noexcept nogil:
    """The client is subscribed to nothing any more: close its subscriber connection; its
    requests are routed as any client's again."""
    cdef Backend *b = c.dedicated
    c.flags &= ~(CF_PUBSUB | CF_PUBSUB_SYNC)
    if b != NULL:
        c.dedicated = NULL
        dedicated_close(core, b)


# ---- keyspace notifications across shards ----------------------------------------------------
#
# Each shard publishes the notifications of its own keys (`__keyspace@0__:<key>`,
# `__keyevent@0__:<event>`) on itself, but the database's subscribers live on the pub/sub shard
# (the map's first). So the proxy keeps one relay connection to every other shard of the map,
# pattern-subscribed to both families, and re-publishes each notification it receives with
# PUBLISH on the pub/sub shard (replies unread): a subscriber of any proxy connection receives
# every shard's notifications once, in Redis's frames. Where `notify-keyspace-events` is empty
# (Redis's default) no notification is made and the relays carry nothing. A database served by
# a proxy on every node of a cluster has one relaying proxy, not one per node (each would
# publish every notification again): the control plane turns the others' relays off
# (Proxy.set_keyspace_relay; control/node_proxy.py: the proxy on the pub/sub shard's node).


cdef const char *RELAY_SUBSCRIBE = b"*3\r\n$10\r\nPSUBSCRIBE\r\n$16\r\n__keyspace@*__:*\r\n$16\r\n__keyevent@*__:*\r\n"


cdef void relay_open(Core *core, int shard) noexcept nogil:
    cdef Backend *b = core.shards[shard].relay
    if b == NULL:
        b = backend_new(shard, NULL, 2, ROLE_RELAY)
        if b == NULL:
            return
        core.shards[shard].relay = b
    if b.state == BK_DOWN and b.retry_at_us <= core.now_us:
        backend_connect(core, b)
        if b.state != BK_DOWN:
            buf_append_str(&b.wbuf, RELAY_SUBSCRIBE)
            backend_mark_dirty(core, b)


cdef void relay_close(Core *core, int shard) noexcept nogil:
    cdef Backend *b = core.shards[shard].relay
    if b == NULL:
        return
    core.shards[shard].relay = NULL
    backend_fail(core, b, b"closed relay to")
    b.next_closed = core.closed_backends
    core.closed_backends = b


cdef void relays_sync(Core *core) noexcept nogil:
    """After a map change: a relay for every shard of the map but the pub/sub one, no other."""
    cdef int i
    for i in range(core.nshards):
        # One relay per endpoint: worker 0's, when there are worker threads (workers.pxi).
        if core.shards[i].active and (core.nactive == 0 or i != core.active[0]) \
                and (core.workers == NULL or core.worker == 0) and not core.keyspace_relay_off:
            relay_open(core, i)
        else:
            relay_close(core, i)


cdef void relays_tick(Core *core) noexcept nogil:
    """Relays whose connection dropped are opened again (after their back-off)."""
    cdef int i
    for i in range(core.nshards):
        if core.shards[i].relay != NULL and core.shards[i].relay.state == BK_DOWN:
            relay_open(core, i)


cdef int rsp_relay(Core *core, Backend *b, const char *p, size_t n) noexcept nogil:
    """A frame from a relay: a notification is re-published on the pub/sub shard; the
    subscription confirmations are dropped."""
    cdef ArgVec *av = &core.relay_av
    cdef Buf *cmd = &core.relay_cmd
    cdef size_t consumed, need
    if core.nactive == 0 or parse_request(p, n, av, &consumed, &need) != PARSE_OK or av.argc != 4 \
            or not arg_equals_ci(av.argv[0], av.argl[0], b"pmessage", 8):
        return 0
    buf_clear(cmd)
    buf_append_str(cmd, b"*3\r\n$7\r\nPUBLISH\r\n")
    buf_append_bulk(cmd, av.argv[2], av.argl[2])
    buf_append_bulk(cmd, av.argv[3], av.argl[3])
    req_send_unanswered(core, shard_backend(core, core.active[0], 2), buf_head(cmd), buf_len(cmd))
    return 0
