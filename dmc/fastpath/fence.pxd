# Fencing: what a shard map change does to the requests in flight on shards that lost slots,
# and the write fence of a proxy whose node lost the majority. Declarations; the code is in
# fence.pxi.

cdef void fence_map_change(Core *core, const unsigned char *lost) noexcept nogil
cdef bint fence_up(Core *core) noexcept nogil
cdef const char *fence_refusal(Fragment *f) noexcept nogil
