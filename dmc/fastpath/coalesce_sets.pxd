# Set and sorted-set algebra across shards.
# Declarations; the code is in coalesce_sets.pxi.

cdef struct Member:
    const char *p           # the member's bytes, inside a fragment's reply (NULL: empty slot)
    size_t n
    unsigned int hash
    int count               # SINTER: sets seen in; SDIFF: < 0 once removed
    double score            # sorted sets: the aggregated score


cdef struct MemberSet:
    Member *slots
    size_t cap              # a power of two, at least twice the members
    size_t used


cdef int members_init(MemberSet *s, size_t expected) noexcept nogil
cdef Member *members_find(MemberSet *s, const char *p, size_t n, bint add) noexcept nogil
cdef long long array_header(const char *p, size_t n, const char **body) noexcept nogil
cdef int members_for_replies(Request *r, MemberSet *set) noexcept nogil
cdef int coalesce_set_algebra(Core *core, Request *r, Buf *out) noexcept nogil
cdef void route_set_algebra(Core *core, Request *r, ArgVec *av, KeyList *kl) noexcept nogil
cdef int compare_scored(const void *a, const void *b) noexcept nogil
cdef void append_score(Buf *out, double score, bint resp3) noexcept nogil
cdef int coalesce_zset_algebra(Core *core, Request *r, Buf *out) noexcept nogil
cdef void route_zset_algebra(Core *core, Request *r, ArgVec *av, KeyList *kl) noexcept nogil
