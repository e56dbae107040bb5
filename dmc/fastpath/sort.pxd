# SORT / SORT_RO: BY and GET patterns checked against the sorted key's slot.
# Declarations; the code is in sort.pxi.

cdef enum:
    SORT_BY_LEAVES = 1      # a BY pattern may form keys outside the sorted key's slot
    SORT_GET_LEAVES = 2     # a GET pattern may

cdef int pattern_slot(const char *p, size_t n) noexcept nogil
cdef int sort_options(ArgVec *av, int *store) noexcept nogil
cdef const char *sort_pattern_refusal(int leaves) noexcept nogil
cdef bint sort_patterns_refused(Core *core, Request *r, ArgVec *av) noexcept nogil
cdef int sort_keys(ArgVec *av, KeyList *kl) noexcept nogil
