# PFCOUNT across shards: HyperLogLog registers merged by the proxy.
# Declarations; the code is in coalesce_pfcount.pxi.

cdef enum:
    HLL_P = 14
    HLL_REGISTERS = 16384
    HLL_Q = 50                  # 64 - HLL_P
    HLL_HEADER = 16             # "HYLL", encoding, 3 unused bytes, 8 bytes of cached cardinality
    HLL_DENSE_SIZE = 12304      # HLL_HEADER + 16384 * 6 / 8


cdef int hll_merge(unsigned char *regs, const unsigned char *p, size_t n) noexcept nogil
cdef double hll_sigma(double x) noexcept nogil
cdef double hll_tau(double x) noexcept nogil
cdef long long hll_estimate(const unsigned char *regs) noexcept nogil
cdef int coalesce_pfcount(Request *r, Buf *out) noexcept nogil
cdef void route_pfcount(Core *core, Request *r, ArgVec *av, KeyList *kl) noexcept nogil
