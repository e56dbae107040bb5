# SORT / SORT_RO with BY / GET patterns over keys of several shards (multi_slot_commands =
# sequential). Declarations; the code and its steps are in sort_sequential.pxi.

cdef int sort_pattern_key(const char *pat, size_t plen, const char *elem, size_t elen, Buf *out) noexcept nogil
cdef bint sort_seq_begin(Core *core, Request *r, ArgVec *av) noexcept nogil
cdef int sort_seq_refs(Core *core, Sequence *s, const char *reply, size_t n) noexcept nogil
cdef void sort_seq_next(Core *core, Request *r) noexcept nogil
cdef void sort_seq_fetch_next(Core *core, Request *r) noexcept nogil
cdef void sort_seq_run(Core *core, Request *r) noexcept nogil
cdef void sort_seq_answered(Core *core, Request *r, const char *reply, size_t n) noexcept nogil
