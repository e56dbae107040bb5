# Routing a parsed request to its shard(s); cutting it into fragments.
# Declarations; the code is in route.pxi.

cdef int key_shards(Core *core, ArgVec *av, KeyList *kl) noexcept nogil
cdef int default_shard_find(Core *core) noexcept nogil
cdef void route_unknown_command(Core *core, Request *r, ArgVec *av) noexcept nogil
cdef void route_param_refusal(Core *core, Request *r, ParamPolicy *p, ArgVec *av, int i) noexcept nogil
cdef bint params_rewrite(Core *core, Request *r, ParamPolicy *p, ArgVec *av) noexcept nogil
cdef bint param_split(Core *core, Request *r, ParamEntry *e, ArgVec *av, int i, char *out) noexcept nogil
cdef bint req_route(Core *core, Client *c, ArgVec *av) noexcept nogil
cdef void route_split(Core *core, Request *r, ArgVec *av, KeyList *kl) noexcept nogil
cdef void route_per_key(Core *core, Request *r, ArgVec *av, KeyList *kl, const char *head,
                         const char *tail) noexcept nogil
cdef void route_all_shards(Core *core, Request *r, ArgVec *av) noexcept nogil
cdef void route_getkeys(Core *core, Client *c, Request *r, ArgVec *av) noexcept nogil
cdef void route_getkeys_answered(Core *core, Request *r, const char *reply, size_t n) noexcept nogil
cdef void route_scan(Core *core, Request *r, ArgVec *av) noexcept nogil
cdef void route_scan_answered(Core *core, Request *r, const char *reply, size_t n) noexcept nogil
