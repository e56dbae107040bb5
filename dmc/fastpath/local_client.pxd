# CLIENT ... about the proxy's own clients.
# Declarations; the code is in local_client.pxi.

cdef Client *client_by_id(Core *core, long long id) noexcept nogil
cdef bint has_address(Client *c, const char *text, size_t n) noexcept nogil
cdef void client_info_line(Core *core, Client *c, Buf *out) noexcept nogil
cdef bint client_listed(Client *c, ArgVec *av) noexcept nogil
cdef void answer_bulk_or_null(Core *core, Client *c, Request *r, const char *p, size_t n,
                              bint null) noexcept nogil
cdef void route_local_client(Core *core, Client *c, Request *r, ArgVec *av) noexcept nogil
cdef void client_reply(Core *core, Client *c, Request *r, ArgVec *av) noexcept nogil
