# Set algebra across shards: SUNION, SINTER, SDIFF, SINTERCARD over keys that live on different
# shards. Each key's members are fetched with SMEMBERS from its own shard; the proxy combines
# them with a small open-addressing hash set over the reply bytes (no copies of members).


cdef int members_init(MemberSet *s, size_t expected) noexcept nogil:
    s.cap = 16
    while s.cap < 2 * expected + 2:
        s.cap *= 2
    s.used = 0
    s.slots = <Member *>calloc(s.cap, sizeof(Member))
    return 0 if s.slots != NULL else -1


cdef Member *members_find(MemberSet *s, const char *p, size_t n, bint add) noexcept nogil:
    cdef unsigned int h = name_hash(p, n)
    cdef size_t i = h & (s.cap - 1)
    while s.slots[i].p != NULL:
        if s.slots[i].hash == h and s.slots[i].n == n and memcmp(s.slots[i].p, p, n) == 0:
            return &s.slots[i]
        i = (i + 1) & (s.cap - 1)
    if not add:
        return NULL
    s.slots[i].p = p
    s.slots[i].n = n
    s.slots[i].hash = h
    s.used += 1
    return &s.slots[i]


cdef long long array_header(const char *p, size_t n, const char **body) noexcept nogil:
    """Element count of a `*N` / `~N` reply and where its elements start; -1 if not one."""
    cdef const char *eol = <const char *>memchr(p, c'\n', n)
    cdef long long count
    if eol == NULL or (p[0] != c'*' and p[0] != c'~') or parse_ll(p + 1, eol - p - 2, &count) < 0:
        return -1
    body[0] = eol + 1
    return count


cdef const char *next_bulk(const char *p, const char *end, const char **data, size_t *n) noexcept nogil:
    """The bulk string at p: its bytes in data/n; returns where the next element starts."""
    cdef const char *eol = <const char *>memchr(p, c'\n', end - p)
    cdef long long len
    if eol == NULL or p[0] != c'$' or parse_ll(p + 1, eol - p - 2, &len) < 0 or len < 0:
        return NULL
    data[0] = eol + 1
    n[0] = <size_t>len
    return eol + 1 + len + 2


cdef int members_for_replies(Request *r, MemberSet *set) noexcept nogil:
    """An empty set sized for every element of the fragments' array replies; -1 if one of
    them is not an array (or memory is short)."""
    cdef int i
    cdef long long count, total = 0
    cdef const char *body
    for i in range(r.nfrags):
        count = array_header(buf_head(&r.frags[i].reply), buf_len(&r.frags[i].reply), &body)
        if count < 0:
            return -1
        total += count
    return members_init(set, <size_t>total)


cdef int coalesce_set_algebra(Core *core, Request *r, Buf *out) noexcept nogil:
    cdef MemberSet set
    cdef Member *m
    cdef int i, last = r.nfrags - 1
    cdef long long count, k, result = 0, limit = r.nkeys
    cdef const char *body
    cdef const char *end
    cdef const char *data
    cdef size_t n
    cdef size_t j
    if members_for_replies(r, &set) < 0:
        return buf_append_str(out, b"-ERR unexpected reply from shard\r\n")
    for i in range(r.nfrags):
        count = array_header(buf_head(&r.frags[i].reply), buf_len(&r.frags[i].reply), &body)
        end = buf_head(&r.frags[i].reply) + buf_len(&r.frags[i].reply)
        for k in range(count):
            body = next_bulk(body, end, &data, &n)
            if body == NULL:
                free(set.slots)
                return buf_append_str(out, b"-ERR unexpected reply from shard\r\n")
            if r.merge == MERGE_SUNION or (r.merge == MERGE_SDIFF and i == 0):
                m = members_find(&set, data, n, True)
            elif r.merge == MERGE_SDIFF:
                m = members_find(&set, data, n, False)
                if m != NULL:
                    m.count = -1
                continue
            else:   # SINTER, SINTERCARD: count the sets each member of the first is in
                m = members_find(&set, data, n, i == 0)
                if m != NULL and m.count == i:
                    m.count = i + 1
    if r.merge == MERGE_SINTERCARD:
        for j in range(set.cap):
            if set.slots[j].p != NULL and set.slots[j].count == r.nfrags:
                result += 1
                if limit > 0 and result >= limit:
                    break
        free(set.slots)
        return buf_append_int(out, c':', result)
    for j in range(set.cap):
        m = &set.slots[j]
        if m.p != NULL and ((r.merge == MERGE_SINTER and m.count == r.nfrags) or
                            (r.merge == MERGE_SDIFF and m.count >= 0) or r.merge == MERGE_SUNION):
            result += 1
    # A RESP3 client asked for a set: answer with the type its shards used.
    buf_append_int(out, buf_head(&r.frags[0].reply)[0], result)
    for j in range(set.cap):
        m = &set.slots[j]
        if m.p != NULL and ((r.merge == MERGE_SINTER and m.count == r.nfrags) or
                            (r.merge == MERGE_SDIFF and m.count >= 0) or r.merge == MERGE_SUNION):
            buf_append_bulk(out, m.p, m.n)
    free(set.slots)
    return 0


cdef void route_set_algebra(Core *core, Request *r, ArgVec *av, KeyList *kl) noexcept nogil:
    """One SMEMBERS per key, each to the key's shard; merged when all are in."""
    cdef int k
    cdef long long limit = 0
    if r.cmd.merge == MERGE_SINTERCARD:
        k = kl.pos[kl.n - 1] + 1
        if k + 1 < av.argc and arg_equals_ci(av.argv[k], av.argl[k], b"limit", 5):
            if parse_ll(av.argv[k + 1], av.argl[k + 1], &limit) < 0 or limit < 0:
                req_write_str(core, r, b"-ERR LIMIT can't be negative\r\n")
                return
        elif k < av.argc:
            req_write_str(core, r, b"-ERR syntax error\r\n")
            return
    r.merge = r.cmd.merge
    r.nkeys = <int>limit        # SINTERCARD's LIMIT (0: none)
    route_per_key(core, r, av, kl, b"*2\r\n$8\r\nSMEMBERS\r\n", b"")


# ---- sorted sets ------------------------------------------------------------------------------


cdef const char *next_scored(const char *p, const char *end, const char **data, size_t *n,
                             double *score) noexcept nogil:
    """One (member, score) of a ZRANGE ... WITHSCORES reply: RESP2 flat `$m $s`, or RESP3
    `*2 $m ,s`. Returns where the next one starts, NULL if malformed."""
    cdef const char *eol
    cdef const char *s
    cdef size_t sn
    cdef char tmp[64]
    if p < end and p[0] == c'*':
        eol = <const char *>memchr(p, c'\n', end - p)
        if eol == NULL:
            return NULL
        p = eol + 1
    p = next_bulk(p, end, data, n)
    if p == NULL or p >= end:
        return NULL
    if p[0] == c',':
        eol = <const char *>memchr(p, c'\r', end - p)
        if eol == NULL:
            return NULL
        s = p + 1
        sn = eol - s
        p = eol + 2
    else:
        p = next_bulk(p, end, &s, &sn)
        if p == NULL:
            return NULL
    if sn >= sizeof(tmp):
        return NULL
    memcpy(tmp, s, sn)
    tmp[sn] = 0
    score[0] = strtod(tmp, NULL)
    return p


cdef int compare_scored(const void *a, const void *b) noexcept nogil:
    """Redis's order: by score, then by member bytes."""
    cdef const Member *x = (<const Member **>a)[0]
    cdef const Member *y = (<const Member **>b)[0]
    cdef int c
    if x.score < y.score:
        return -1
    if x.score > y.score:
        return 1
    c = memcmp(x.p, y.p, x.n if x.n < y.n else y.n)
    if c != 0:
        return c
    return -1 if x.n < y.n else (1 if x.n > y.n else 0)


cdef void append_score(Buf *out, double score, bint resp3) noexcept nogil:
    cdef char tmp[64]
    if isinf(score) and score > 0:
        snprintf(tmp, sizeof(tmp), b"inf")
    elif isinf(score):
        snprintf(tmp, sizeof(tmp), b"-inf")
    else:
        snprintf(tmp, sizeof(tmp), b"%.17g", score)
    if resp3:
        buf_append_str(out, b",")
        buf_append_str(out, tmp)
        buf_append_str(out, b"\r\n")
    else:
        buf_append_bulk(out, tmp, strlen(tmp))


cdef inline double aggregate(double acc, double v, int how) noexcept nogil:
    cdef double r
    if how == 1:
        return v if v < acc else acc
    if how == 2:
        return v if v > acc else acc
    r = acc + v
    return 0.0 if isnan(r) else r        # inf + -inf: Redis answers 0


cdef int coalesce_zset_algebra(Core *core, Request *r, Buf *out) noexcept nogil:
    cdef MemberSet set
    cdef Member *m
    cdef Member **order
    cdef int i, pair_items
    cdef long long count, k, result = 0
    cdef const char *body
    cdef const char *end
    cdef const char *data
    cdef size_t n, j
    cdef double score, w
    cdef bint resp3 = r.client != NULL and r.client.proto == 3
    if members_for_replies(r, &set) < 0:
        return buf_append_str(out, b"-ERR unexpected reply from shard\r\n")
    for i in range(r.nfrags):
        count = array_header(buf_head(&r.frags[i].reply), buf_len(&r.frags[i].reply), &body)
        end = buf_head(&r.frags[i].reply) + buf_len(&r.frags[i].reply)
        # RESP2 counts member and score apart; RESP3 counts pairs.
        pair_items = 1 if (count > 0 and body[0] == c'*') else 2
        w = r.weights[i] if r.weights != NULL else 1.0
        for k in range(count // pair_items):
            body = next_scored(body, end, &data, &n, &score)
            if body == NULL:
                free(set.slots)
                return buf_append_str(out, b"-ERR unexpected reply from shard\r\n")
            score = score * w
            if isnan(score):
                score = 0.0
            if r.merge == MERGE_ZUNION or (r.merge == MERGE_ZDIFF and i == 0):
                m = members_find(&set, data, n, True)
                if m.count == 0:
                    m.score = score
                    m.count = 1
                else:
                    m.score = aggregate(m.score, score, r.aggregate)
            elif r.merge == MERGE_ZDIFF:
                m = members_find(&set, data, n, False)
                if m != NULL:
                    m.count = -1
            else:   # ZINTER, ZINTERCARD
                m = members_find(&set, data, n, i == 0)
                if m != NULL and m.count == i:
                    m.score = score if i == 0 else aggregate(m.score, score, r.aggregate)
                    m.count = i + 1
    order = <Member **>malloc((set.used + 1) * sizeof(Member *))
    if order == NULL:
        free(set.slots)
        return -1
    for j in range(set.cap):
        m = &set.slots[j]
        if m.p != NULL and (((r.merge == MERGE_ZINTER or r.merge == MERGE_ZINTERCARD)
                             and m.count == r.nfrags) or
                            (r.merge == MERGE_ZDIFF and m.count > 0) or r.merge == MERGE_ZUNION):
            order[result] = m
            result += 1
            if r.merge == MERGE_ZINTERCARD and r.nkeys > 0 and result >= r.nkeys:
                break
    if r.merge == MERGE_ZINTERCARD:
        free(order)
        free(set.slots)
        return buf_append_int(out, c':', result)
    qsort(order, result, sizeof(Member *), compare_scored)
    buf_append_int(out, c'*', result * 2 if r.withscores and not resp3 else result)
    for k in range(result):
        if r.withscores and resp3:
            buf_append_str(out, b"*2\r\n")
        buf_append_bulk(out, order[k].p, order[k].n)
        if r.withscores:
            append_score(out, order[k].score, resp3)
    free(order)
    free(set.slots)
    return 0


cdef void route_zset_algebra(Core *core, Request *r, ArgVec *av, KeyList *kl) noexcept nogil:
    """One ZRANGE key 0 -1 WITHSCORES per key, each to the key's shard; merged when all are in."""
    cdef int i, k = kl.pos[kl.n - 1] + 1, merge = r.cmd.merge
    cdef long long limit = 0
    cdef char tmp[64]
    cdef char *endp
    while k < av.argc:
        if merge == MERGE_ZINTERCARD and arg_equals_ci(av.argv[k], av.argl[k], b"limit", 5) \
                and k + 1 < av.argc:
            if parse_ll(av.argv[k + 1], av.argl[k + 1], &limit) < 0 or limit < 0:
                req_write_str(core, r, b"-ERR LIMIT can't be negative\r\n")
                return
            k += 2
        elif merge != MERGE_ZINTERCARD and arg_equals_ci(av.argv[k], av.argl[k], b"withscores", 10):
            r.withscores = True
            k += 1
        elif (merge == MERGE_ZUNION or merge == MERGE_ZINTER) and \
                arg_equals_ci(av.argv[k], av.argl[k], b"aggregate", 9) and k + 1 < av.argc:
            if arg_equals_ci(av.argv[k + 1], av.argl[k + 1], b"sum", 3):
                r.aggregate = 0
            elif arg_equals_ci(av.argv[k + 1], av.argl[k + 1], b"min", 3):
                r.aggregate = 1
            elif arg_equals_ci(av.argv[k + 1], av.argl[k + 1], b"max", 3):
                r.aggregate = 2
            else:
                req_write_str(core, r, b"-ERR syntax error\r\n")
                return
            k += 2
        elif (merge == MERGE_ZUNION or merge == MERGE_ZINTER) and \
                arg_equals_ci(av.argv[k], av.argl[k], b"weights", 7) and k + kl.n < av.argc:
            r.weights = <double *>malloc(kl.n * sizeof(double))
            if r.weights == NULL:
                req_write_str(core, r, b"-ERR out of memory\r\n")
                return
            for i in range(kl.n):
                if av.argl[k + 1 + i] == 0 or av.argl[k + 1 + i] >= sizeof(tmp):
                    req_write_str(core, r, b"-ERR weight value is not a float\r\n")
                    return
                memcpy(tmp, av.argv[k + 1 + i], av.argl[k + 1 + i])
                tmp[av.argl[k + 1 + i]] = 0
                r.weights[i] = strtod(tmp, &endp)
                if endp[0] != 0 or isnan(r.weights[i]):
                    req_write_str(core, r, b"-ERR weight value is not a float\r\n")
                    return
            k += 1 + kl.n
        else:
            req_write_str(core, r, b"-ERR syntax error\r\n")
            return
    r.merge = merge
    r.nkeys = <int>limit        # ZINTERCARD's LIMIT (0: none)
    route_per_key(core, r, av, kl, b"*5\r\n$6\r\nZRANGE\r\n",
                   b"$1\r\n0\r\n$2\r\n-1\r\n$10\r\nWITHSCORES\r\n")
