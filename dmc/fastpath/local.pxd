# What the proxy answers itself.
# Declarations; the code is in local.pxi.

cdef int check_credentials(Core *core, Client *c, const char *user, size_t ulen,
                           const char *pw, size_t plen) noexcept nogil
cdef void client_reset(Core *core, Client *c) noexcept nogil
cdef void route_local(Core *core, Client *c, Request *r, ArgVec *av) noexcept nogil
