# A shard busy running a script: the control connections, the busy probe, and the commands Redis
# serves while busy. Declarations; the code is in busy.pxi.

cdef enum:
    PROBE_AFTER_US = 20000      # a shared connection's oldest fragment this late: its shard is probed
    PROBE_INTERVAL_US = 100000  # a shard is probed at most this often
    PROBE_GRACE_US = 1000000    # a control connection silent for the backend timeout plus this is failed


cdef bint is_busy_reply(const char *p, size_t n) noexcept nogil
cdef Backend *shard_control(Core *core, int shard, int proto) noexcept nogil
cdef void frag_send_control(Core *core, int shard, Fragment *f, const char *data, size_t n) noexcept nogil
cdef int rsp_control(Core *core, Backend *b, const char *p, size_t n, int push) noexcept nogil
cdef void control_failed(Core *core, int shard) noexcept nogil
cdef void control_close(Core *core, int shard) noexcept nogil
cdef void shard_not_busy(Core *core, int shard) noexcept nogil
cdef void shard_busy(Core *core, int shard, const char *p, size_t n) noexcept nogil
cdef bint shard_keeps_waiting(Core *core, int shard) noexcept nogil
cdef void busy_tick(Core *core, int shard, bint late) noexcept nogil
cdef void dedicated_tick(Core *core) noexcept nogil
cdef const char *busy_reply(Core *core) noexcept nogil
cdef int coalesce_function_stats(Request *r, Buf *out) noexcept nogil
