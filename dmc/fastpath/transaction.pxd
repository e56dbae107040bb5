# Transactions: MULTI ... EXEC, and WATCH.
# Declarations; the code is in transaction.pxi.

cdef void route_multi_queued(Core *core, Client *c, Request *r, CommandInfo *cmd, ArgVec *av) noexcept nogil
cdef int multi_reroute(Core *core, Client *c) noexcept nogil
cdef void multi_exec(Core *core, Client *c, Request *r) noexcept nogil
cdef void route_watch(Core *core, Client *c, Request *r, ArgVec *av) noexcept nogil
cdef void watch_end(Core *core, Client *c, bint tell_shard) noexcept nogil
