# The blocking forms over keys of several shards (multi_slot_commands = sequential).
# Declarations; the code and its design are in blocking_sequential.pxi.

cdef bint block_begin(Core *core, Client *c, Request *r, ArgVec *av, KeyList *kl) noexcept nogil
cdef void block_next(Core *core, Request *r) noexcept nogil
cdef void block_tried(Core *core, Request *r, const char *reply, size_t n) noexcept nogil
cdef void block_wait(Core *core, Request *r) noexcept nogil
cdef void block_answered(Core *core, Request *r, const char *reply, size_t n) noexcept nogil
cdef bint stream_begin(Core *core, Client *c, Request *r, ArgVec *av, KeyList *kl) noexcept nogil
cdef void stream_tried(Core *core, Request *r, const char *reply, size_t n) noexcept nogil
