# Coalescing the replies of a request's fragments into one answer.
# Declarations; the code is in coalesce.pxi.

cdef long long info_field(const char *p, const char *end, const char *name) noexcept nogil
cdef int coalesce_info(Request *r, Buf *out) noexcept nogil
cdef int req_coalesce(Core *core, Request *r) noexcept nogil
