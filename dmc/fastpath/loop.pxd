# One turn of the event loop; pause, resume, close.
# Declarations; the code is in loop.pxi.

cdef void epoll_want(Core *core, int fd, void *conn, unsigned int *current, unsigned int wanted) noexcept nogil
cdef void flush_all(Core *core) noexcept nogil
cdef void wake_drain(Core *core) noexcept nogil
cdef void core_resume(Core *core) noexcept nogil
cdef long long core_inflight(Core *core) noexcept nogil
cdef void core_close(Core *core) noexcept nogil
cdef void free_closed(Core *core) noexcept nogil
cdef int loop_once(Core *core, int timeout_ms) noexcept nogil
