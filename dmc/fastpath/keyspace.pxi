# Keyspace notifications across shards.
#
# Each shard publishes the notifications of its own keys (`__keyspace@0__:<key>`,
# `__keyevent@0__:<event>`) on itself, but the database's subscribers live on the pub/sub shard
# (the map's first). So the proxy keeps one relay connection to every other shard of the map,
# pattern-subscribed to both families, and re-publishes each notification it receives with
# PUBLISH on the pub/sub shard (replies unread): a subscriber of any proxy connection receives
# every shard's notifications once, in Redis's frames. Where `notify-keyspace-events` is empty
# (Redis's default) no notification is made and the relays carry nothing.

cdef const char *RELAY_SUBSCRIBE = b"*3\r\n$10\r\nPSUBSCRIBE\r\n$16\r\n__keyspace@*__:*\r\n$16\r\n__keyevent@*__:*\r\n"


cdef void relay_open(Core *core, int shard) noexcept nogil:
    cdef Backend *b = core.shards[shard].relay
    if b == NULL:
        b = backend_new(shard, NULL, 2)
        if b == NULL:
            return
        b.relay = True
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
        if core.shards[i].active and (core.nactive == 0 or i != core.active[0]):
            relay_open(core, i)
        else:
            relay_close(core, i)


cdef void relays_tick(Core *core) noexcept nogil:
    """Relays whose connection dropped are opened again (after their back-off)."""
    cdef int i
    for i in range(core.nshards):
        if core.shards[i].relay != NULL and core.shards[i].relay.state == BK_DOWN:
            relay_open(core, i)


cdef void relay_frame(Core *core, const char *p, size_t n) noexcept nogil:
    """A frame from a relay: a notification is re-published on the pub/sub shard; the
    subscription confirmations are dropped."""
    cdef ArgVec *av = &core.relay_av
    cdef Buf *cmd = &core.relay_cmd
    cdef size_t consumed, need
    if core.nactive == 0 or parse_request(p, n, av, &consumed, &need) != PARSE_OK or av.argc != 4 \
            or not arg_equals_ci(av.argv[0], av.argl[0], b"pmessage", 8):
        return
    buf_clear(cmd)
    buf_append_str(cmd, b"*3\r\n$7\r\nPUBLISH\r\n")
    buf_append_bulk(cmd, av.argv[2], av.argl[2])
    buf_append_bulk(cmd, av.argv[3], av.argl[3])
    send_unanswered(core, shard_backend(core, core.active[0], 2), buf_head(cmd), buf_len(cmd))
