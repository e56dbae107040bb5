# Coalescing: the replies of a request's fragments merged into one answer, by the request's
# merge (commands.pxi's Merge): the first error, sums and other aggregates, concatenations,
# MGET's keyed array, RANDOMKEY, INFO; set algebra (coalesce_sets.pxi) and PFCOUNT
# (coalesce_pfcount.pxi) have files of their own.


cdef long long info_field(const char *p, const char *end, const char *name) noexcept nogil:
    """The integer after `name=` in p[0:end] (a keyspace line); 0 when absent."""
    cdef size_t n = strlen(name)
    cdef long long v = 0
    while p + n < end:
        if memcmp(p, name, n) == 0 and p[n] == c'=':
            p += n + 1
            while p < end and c'0' <= p[0] <= c'9':
                v = v * 10 + (p[0] - c'0')
                p += 1
            return v
        p += 1
    return 0


cdef int coalesce_info(Request *r, Buf *out) noexcept nogil:
    """INFO from every shard: the first shard's text, with `db0:keys=...,expires=...` summed
    over all shards (the keyspace a client sees through the proxy)."""
    cdef long long keys = 0, expires = 0
    cdef const char *p
    cdef const char *end
    cdef const char *line
    cdef const char *eol
    cdef const char *body
    cdef int i
    cdef char text[128]
    cdef Buf merged
    cdef bint have_db0 = False
    for i in range(r.nfrags):
        p = buf_head(&r.frags[i].reply)
        end = p + buf_len(&r.frags[i].reply)
        line = p
        while line < end:
            eol = <const char *>memchr(line, c'\n', end - line)
            if eol == NULL:
                break
            if eol - line > 4 and memcmp(line, b"db0:", 4) == 0:
                keys += info_field(line, eol, b"keys")
                expires += info_field(line, eol, b"expires")
            line = eol + 1
    # Rebuild the first shard's text, its db0 line replaced (or added under # Keyspace).
    memset(&merged, 0, sizeof(Buf))
    p = buf_head(&r.frags[0].reply)
    end = p + buf_len(&r.frags[0].reply)
    if p[0] != c'$' and p[0] != c'=':
        return buf_append(out, p, end - p)
    body = <const char *>memchr(p, c'\n', end - p) + 1
    if p[0] == c'=':
        body += 4                   # verbatim string: skip the `txt:` format
    line = body
    end -= 2                        # the bulk's closing CRLF
    snprintf(text, sizeof(text), b"db0:keys=%lld,expires=%lld,avg_ttl=0\r\n", keys, expires)
    while line < end:
        eol = <const char *>memchr(line, c'\n', end - line)
        eol = end - 1 if eol == NULL else eol
        if eol - line > 4 and memcmp(line, b"db0:", 4) == 0:
            have_db0 = True
            if keys > 0:
                buf_append_str(&merged, text)
        else:
            buf_append(&merged, line, eol + 1 - line)
            if keys > 0 and not have_db0 and eol - line >= 10 and memcmp(line, b"# Keyspace", 10) == 0:
                have_db0 = True
                buf_append_str(&merged, text)
        line = eol + 1
    if p[0] == c'=':
        buf_append_int(out, c'=', <long long>(buf_len(&merged) + 4))
        buf_append_str(out, b"txt:")
        buf_append(out, buf_head(&merged), buf_len(&merged))
        buf_append_str(out, b"\r\n")
    else:
        buf_append_bulk(out, buf_head(&merged), buf_len(&merged))
    buf_free(&merged)
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
        return coalesce_info(r, out)
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
    for i in range(r.nfrags):
        p = buf_head(&r.frags[i].reply)
        eol = <const char *>memchr(p, c'\r', buf_len(&r.frags[i].reply))
        if p[0] != c':' or eol == NULL or parse_ll(p + 1, eol - p - 1, &v) < 0:
            return buf_append_str(out, b"-ERR unexpected reply from shard\r\n")
        if i == 0:
            acc = v
        elif r.merge == MERGE_AGG_SUM:
            acc += v
        elif r.merge == MERGE_AGG_MIN:
            acc = v if v < acc else acc
        elif r.merge == MERGE_AGG_MAX:
            acc = v if v > acc else acc
        elif r.merge == MERGE_AGG_AND:
            acc = 1 if (acc and v) else 0
        elif r.merge == MERGE_AGG_OR:
            acc = 1 if (acc or v) else 0
    return buf_append_int(out, c':', acc)
