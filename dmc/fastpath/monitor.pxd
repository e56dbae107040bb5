# MONITOR.
# Declarations; the code is in monitor.pxi.

cdef void monitor_start(Core *core, Client *c, Request *r) noexcept nogil
cdef void monitor_remove(Core *core, Client *c) noexcept nogil
cdef void append_repr(Buf *out, const char *p, size_t n) noexcept nogil
cdef bint monitor_redacted(CommandInfo *cmd, ArgVec *av, int j) noexcept nogil
cdef void monitor_feed(Core *core, Client *c, CommandInfo *cmd, ArgVec *av) noexcept nogil
