# SORT / SORT_RO: BY and GET patterns checked against the sorted key's slot.
# Declarations; the code is in sort.pxi.

cdef int pattern_slot(const char *p, size_t n) noexcept nogil
cdef bint sort_patterns_refused(Core *core, Request *r, ArgVec *av) noexcept nogil
