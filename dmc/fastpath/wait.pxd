# WAIT.
# Declarations; the code is in wait.pxi.

cdef void client_wrote_more(Client *c, int shard) noexcept nogil
cdef void client_forget_writes(Client *c) noexcept nogil
cdef Backend *client_waiter(Core *core, Client *c, int shard) noexcept nogil
cdef int rsp_waiter(Core *core, Backend *b, const char *p, size_t n, int push) noexcept nogil
cdef void waiters_close(Core *core, Client *c) noexcept nogil
cdef void route_wait(Core *core, Client *c, Request *r, ArgVec *av) noexcept nogil
cdef void wait_unblock(Core *core, Client *c, bint as_error) noexcept nogil
cdef void waiter_unblock(Core *core, Backend *b, bint as_error) noexcept nogil
