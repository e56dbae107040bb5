# Coalescing the replies of a request's fragments into one answer.
# Declarations; the code is in coalesce.pxi.

cdef int req_coalesce(Core *core, Request *r) noexcept nogil
