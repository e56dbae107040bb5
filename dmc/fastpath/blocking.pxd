# Blocking commands (BLPOP & co.) and CLIENT UNBLOCK.
# Declarations; the code is in blocking.pxi.

cdef void route_blocking(Core *core, Client *c, Request *r, ArgVec *av, KeyList *kl) noexcept nogil
cdef void client_unblock(Core *core, Client *target, bint as_error) noexcept nogil
