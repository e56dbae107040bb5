# Set algebra across shards: SUNION, SINTER, SDIFF, SINTERCARD over keys that live on different
# shards. Each key's members are fetched with SMEMBERS from its own shard; the proxy combines
# them with a small open-addressing hash set over the reply bytes (no copies of members).

cdef struct Member:
    const char *p           # the member's bytes, inside a fragment's reply (NULL: empty slot)
    size_t n
    unsigned int hash
    int count               # SINTER: sets seen in; SDIFF: < 0 once removed


cdef struct MemberSet:
    Member *slots
    size_t cap              # a power of two, at least twice the members
    size_t used


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


cdef int merge_set_algebra(Core *core, Request *r, Buf *out) noexcept nogil:
    cdef MemberSet set
    cdef Member *m
    cdef int i, last = r.nfrags - 1
    cdef long long count, k, total = 0, result = 0, limit = r.nkeys
    cdef const char *body
    cdef const char *end
    cdef const char *data
    cdef size_t n
    cdef size_t j
    for i in range(r.nfrags):
        count = array_header(buf_head(&r.frags[i].reply), buf_len(&r.frags[i].reply), &body)
        if count < 0:
            return buf_append_str(out, b"-ERR unexpected reply from shard\r\n")
        total += count
    if members_init(&set, <size_t>total) < 0:
        return -1
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


cdef void dispatch_set_algebra(Core *core, Request *r, ArgVec *av, KeyList *kl) noexcept nogil:
    """One SMEMBERS per key, each to the key's shard; merged when all are in."""
    cdef Buf *sub = &core.subcommand
    cdef int i, k
    cdef long long limit = 0
    if r.cmd.merge == MERGE_SINTERCARD:
        k = kl.pos[kl.n - 1] + 1
        if k + 1 < av.argc and arg_equals_ci(av.argv[k], av.argl[k], b"limit", 5):
            if parse_ll(av.argv[k + 1], av.argl[k + 1], &limit) < 0 or limit < 0:
                request_answer_str(core, r, b"-ERR LIMIT can't be negative\r\n")
                return
        elif k < av.argc:
            request_answer_str(core, r, b"-ERR syntax error\r\n")
            return
    if request_fragments(r, kl.n) < 0:
        request_answer_str(core, r, b"-ERR out of memory\r\n")
        return
    r.merge = r.cmd.merge
    r.nkeys = <int>limit        # SINTERCARD's LIMIT (0: none)
    r.pending = kl.n
    for i in range(kl.n):
        k = kl.pos[i]
        buf_clear(sub)
        buf_append_str(sub, b"*2\r\n$8\r\nSMEMBERS\r\n")
        buf_append_bulk(sub, av.argv[k], av.argl[k])
        # r may be freed by the last send (a shard that is down answers at once).
        send_fragment(core, core.key_shard[i], &r.frags[i], buf_head(sub), buf_len(sub))
