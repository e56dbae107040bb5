# PFCOUNT over keys on several shards. Each key's HyperLogLog is fetched as a string (GET) from
# its shard; the proxy merges the 16384 registers (max of each, from the dense or the sparse
# encoding, as Redis stores them) and estimates the cardinality as redis-server does
# (hllCount with the improved estimator of Ertl).


cdef int hll_merge(unsigned char *regs, const unsigned char *p, size_t n) noexcept nogil:
    """Max each register of regs with the HLL in p[0:n]; -1 if it is not a HyperLogLog."""
    cdef size_t i, pos, idx = 0, run
    cdef unsigned int fb, v
    cdef unsigned char op
    if n < HLL_HEADER or memcmp(p, b"HYLL", 4) != 0 or p[4] > 1:
        return -1
    if p[4] == 0:
        if n != HLL_DENSE_SIZE:
            return -1
        for i in range(HLL_REGISTERS):
            pos = HLL_HEADER + i * 6 // 8
            fb = (i * 6) & 7
            v = p[pos] >> fb
            if fb > 2:
                v |= <unsigned int>p[pos + 1] << (8 - fb)
            v &= 63
            if v > regs[i]:
                regs[i] = <unsigned char>v
        return 0
    pos = HLL_HEADER
    while pos < n:
        op = p[pos]
        if op & 0xc0 == 0:                      # ZERO: 1-64 registers at 0
            idx += (op & 0x3f) + 1
            pos += 1
        elif op & 0xc0 == 0x40:                 # XZERO: 1-16384 registers at 0
            if pos + 1 >= n:
                return -1
            idx += (((op & 0x3f) << 8) | p[pos + 1]) + 1
            pos += 2
        else:                                   # VAL: 1-4 registers at 1-32
            v = ((op >> 2) & 0x1f) + 1
            run = (op & 0x3) + 1
            if idx + run > HLL_REGISTERS:
                return -1
            for i in range(run):
                if v > regs[idx + i]:
                    regs[idx + i] = <unsigned char>v
            idx += run
            pos += 1
    return 0 if idx == HLL_REGISTERS else -1


cdef double hll_sigma(double x) noexcept nogil:
    cdef double y = 1.0, z = x, zp
    if x == 1.0:
        return 1.0 / 0.0
    while True:
        x *= x
        zp = z
        z += x * y
        y += y
        if zp == z:
            return z


cdef double hll_tau(double x) noexcept nogil:
    cdef double y = 1.0, z = 1.0 - x, zp
    if x == 0.0 or x == 1.0:
        return 0.0
    while True:
        x = sqrt(x)
        zp = z
        y *= 0.5
        z -= pow(1.0 - x, 2) * y
        if zp == z:
            return z / 3.0


cdef long long hll_estimate(const unsigned char *regs) noexcept nogil:
    cdef int histo[64]
    cdef int i, j
    cdef double m = HLL_REGISTERS, z
    memset(histo, 0, sizeof(histo))
    for i in range(HLL_REGISTERS):
        histo[regs[i]] += 1
    z = m * hll_tau((m - histo[HLL_Q + 1]) / m)
    j = HLL_Q
    while j >= 1:
        z += histo[j]
        z *= 0.5
        j -= 1
    z += m * hll_sigma(histo[0] / m)
    return llroundl(0.721347520444481703680 * m * m / z)


cdef int coalesce_pfcount(Request *r, Buf *out) noexcept nogil:
    cdef unsigned char *regs = <unsigned char *>calloc(HLL_REGISTERS, 1)
    cdef const char *p
    cdef const char *data
    cdef size_t n
    cdef int i
    if regs == NULL:
        return -1
    for i in range(r.nfrags):
        p = buf_head(&r.frags[i].reply)
        if p[0] == c'_' or (p[0] == c'$' and p[1] == c'-'):
            continue                            # no such key: an empty HyperLogLog
        if next_bulk(p, p + buf_len(&r.frags[i].reply), &data, &n) == NULL or \
                hll_merge(regs, <const unsigned char *>data, n) < 0:
            free(regs)
            return buf_append_str(out, b"-WRONGTYPE Key is not a valid HyperLogLog string value.\r\n")
    buf_append_int(out, c':', hll_estimate(regs))
    free(regs)
    return 0


cdef void route_pfcount(Core *core, Request *r, ArgVec *av, KeyList *kl) noexcept nogil:
    r.merge = MERGE_PFCOUNT
    route_per_key(core, r, av, kl, b"*2\r\n$3\r\nGET\r\n", b"")
