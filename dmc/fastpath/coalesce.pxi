# Coalescing: the replies of a request's fragments merged into one answer, by the request's
# merge (commands.pxi's Merge): the first error, sums and other aggregates, concatenations,
# MGET's keyed array, RANDOMKEY; INFO (info.pxi), set algebra (coalesce_sets.pxi) and PFCOUNT
# (coalesce_pfcount.pxi) have files of their own.


cdef inline long long agg_step(int merge, long long acc, long long v) noexcept nogil:
    if merge == MERGE_AGG_SUM:
        return acc + v
    if merge == MERGE_AGG_MIN:
        return v if v < acc else acc
    if merge == MERGE_AGG_MAX:
        return v if v > acc else acc
    if merge == MERGE_AGG_AND:
        return 1 if (acc and v) else 0
    return 1 if (acc or v) else 0


cdef int coalesce_agg_arrays(Request *r, Buf *out) noexcept nogil:
    """An agg_* merge of arrays of integers (SCRIPT EXISTS: agg_logical_and), element by
    element, as Redis's response policy defines it for array replies."""
    cdef long long n = -1, m, v, acc = 0, k
    cdef int i
    cdef Fragment *f
    cdef const char *p
    cdef const char *eol
    for i in range(r.nfrags):
        f = &r.frags[i]
        p = buf_head(&f.reply)
        eol = <const char *>memchr(p, c'\n', buf_len(&f.reply))
        if p[0] != c'*' or eol == NULL or parse_ll(p + 1, eol - p - 2, &m) < 0 or (n >= 0 and m != n):
            return buf_append_str(out, b"-ERR unexpected reply from shard\r\n")
        n = m
        f.cursor = eol - p + 1
    buf_append_int(out, c'*', n)
    for k in range(n):
        for i in range(r.nfrags):
            f = &r.frags[i]
            p = buf_head(&f.reply) + f.cursor
            eol = <const char *>memchr(p, c'\n', buf_len(&f.reply) - f.cursor)
            if p[0] != c':' or eol == NULL or parse_ll(p + 1, eol - p - 2, &v) < 0:
                buf_clear(out)
                return buf_append_str(out, b"-ERR unexpected reply from shard\r\n")
            f.cursor += eol - p + 1
            acc = v if i == 0 else agg_step(r.merge, acc, v)
        buf_append_int(out, c':', acc)
    return 0


cdef int req_coalesce(Core *core, Request *r) noexcept nogil:
    """Coalesce the fragments' replies of r into core.merged according to r.merge."""
    cdef Buf *out = &core.merged
    cdef Fragment *f
    cdef int i, push
    cdef long long v, acc = 0, count = 0
    cdef const char *p
    cdef ssize_t flen
    cdef size_t need, hdr
    cdef const char *eol
    cdef int start
    buf_clear(out)
    if r.merge == MERGE_FIRST:
        return buf_append(out, buf_head(&r.frags[0].reply), buf_len(&r.frags[0].reply))
    # The first error of any shard wins, except where one success is enough.
    if r.merge == MERGE_ONE_SUCCEEDED:
        for i in range(r.nfrags):
            if not reply_is_error(buf_head(&r.frags[i].reply)):
                return buf_append(out, buf_head(&r.frags[i].reply), buf_len(&r.frags[i].reply))
        # All failed: a shard's real error (SCRIPT KILL while a function runs: -BUSY) before
        # the NOTBUSY of the shards that run nothing.
        for i in range(r.nfrags):
            if buf_len(&r.frags[i].reply) < 8 or memcmp(buf_head(&r.frags[i].reply), b"-NOTBUSY", 8) != 0:
                return buf_append(out, buf_head(&r.frags[i].reply), buf_len(&r.frags[i].reply))
        return buf_append(out, buf_head(&r.frags[0].reply), buf_len(&r.frags[0].reply))
    for i in range(r.nfrags):
        if reply_is_error(buf_head(&r.frags[i].reply)):
            return buf_append(out, buf_head(&r.frags[i].reply), buf_len(&r.frags[i].reply))
    if r.merge == MERGE_RANDOM:
        start = <int>(core_random(core) % <unsigned long long>r.nfrags)
        for i in range(r.nfrags):
            f = &r.frags[(start + i) % r.nfrags]
            p = buf_head(&f.reply)
            if p[0] != c'_' and not (p[0] == c'$' and p[1] == c'-'):
                return buf_append(out, p, buf_len(&f.reply))
        return buf_append(out, buf_head(&r.frags[0].reply), buf_len(&r.frags[0].reply))
    if r.merge == MERGE_INFO:
        return info_merge(core, r, out)
    if r.merge == MERGE_FUNCTION_STATS:
        return coalesce_function_stats(r, out)
    if MERGE_SUNION <= r.merge <= MERGE_SINTERCARD:
        return coalesce_set_algebra(core, r, out)
    if MERGE_ZUNION <= r.merge <= MERGE_ZINTERCARD:
        return coalesce_zset_algebra(core, r, out)
    if r.merge == MERGE_PFCOUNT:
        return coalesce_pfcount(r, out)
    if r.merge == MERGE_ALL_SUCCEEDED or r.merge == MERGE_NONE:
        return buf_append(out, buf_head(&r.frags[0].reply), buf_len(&r.frags[0].reply))
    if r.merge == MERGE_KEYED_ARRAY:
        for i in range(r.nfrags):
            f = &r.frags[i]
            p = buf_head(&f.reply)
            eol = <const char *>memchr(p, c'\n', buf_len(&f.reply))
            if p[0] != c'*' or eol == NULL:
                return buf_append_str(out, b"-ERR unexpected reply from shard\r\n")
            f.cursor = eol - p + 1
        buf_append_int(out, c'*', r.nkeys)
        for i in range(r.nkeys):
            f = &r.frags[r.key_frag[i]]
            flen = reply_frame(buf_head(&f.reply) + f.cursor, buf_len(&f.reply) - f.cursor, &need, &push)
            if flen <= 0:
                buf_clear(out)
                return buf_append_str(out, b"-ERR unexpected reply from shard\r\n")
            buf_append(out, buf_head(&f.reply) + f.cursor, flen)
            f.cursor += flen
        return 0
    if r.merge == MERGE_CONCAT:
        for i in range(r.nfrags):
            p = buf_head(&r.frags[i].reply)
            eol = <const char *>memchr(p, c'\r', buf_len(&r.frags[i].reply))
            if (p[0] != c'*' and p[0] != c'~') or eol == NULL or parse_ll(p + 1, eol - p - 1, &v) < 0:
                return buf_append_str(out, b"-ERR unexpected reply from shard\r\n")
            count += v if v > 0 else 0
        buf_append_int(out, c'*', count)
        for i in range(r.nfrags):
            p = buf_head(&r.frags[i].reply)
            hdr = <const char *>memchr(p, c'\n', buf_len(&r.frags[i].reply)) - p + 1
            buf_append(out, p + hdr, buf_len(&r.frags[i].reply) - hdr)
        return 0
    # Integer aggregates; a shard's error is the answer, as in Redis Cluster.
    for i in range(r.nfrags):
        if buf_len(&r.frags[i].reply) > 0 and buf_head(&r.frags[i].reply)[0] == c'-':
            return buf_append(out, buf_head(&r.frags[i].reply), buf_len(&r.frags[i].reply))
    if buf_len(&r.frags[0].reply) > 0 and buf_head(&r.frags[0].reply)[0] == c'*':
        return coalesce_agg_arrays(r, out)
    for i in range(r.nfrags):
        p = buf_head(&r.frags[i].reply)
        eol = <const char *>memchr(p, c'\r', buf_len(&r.frags[i].reply))
        if p[0] != c':' or eol == NULL or parse_ll(p + 1, eol - p - 1, &v) < 0:
            return buf_append_str(out, b"-ERR unexpected reply from shard\r\n")
        acc = v if i == 0 else agg_step(r.merge, acc, v)
    return buf_append_int(out, c':', acc)
