# Pub/sub: subscribers, and the keyspace-notification relay.
# Declarations; the code is in pubsub.pxi.

cdef enum:
    BARRIER_BULK_LEN = 30       # strlen(BARRIER_BULK)
    PONG_PREFIX_LEN = 14        # strlen(PONG_PREFIX)


cdef void subscription_count(Core *core, Backend *b, const char *p, size_t n) noexcept nogil
cdef bint route_subscriber(Core *core, Client *c, CommandInfo *cmd, ArgVec *av) noexcept nogil
cdef bint subscriber_synced(Core *core, Client *c) noexcept nogil
cdef void subscriber_send(Core *core, Backend *b, const char *data, size_t n, bint barrier) noexcept nogil
cdef int rsp_subscriber(Core *core, Backend *b, const char *p, size_t n) noexcept nogil
cdef void subscriber_release(Core *core, Client *c) noexcept nogil
cdef void relay_open(Core *core, int shard) noexcept nogil
cdef void relay_close(Core *core, int shard) noexcept nogil
cdef void relays_sync(Core *core) noexcept nogil
cdef void relays_tick(Core *core) noexcept nogil
cdef int rsp_relay(Core *core, Backend *b, const char *p, size_t n) noexcept nogil
