# SORT / SORT_RO whose BY or GET patterns form keys of other shards than the sorted key's, with
# multi_slot_commands = sequential (sort.pxi refuses them otherwise, as Redis Cluster does). A
# sequence of kind SEQ_SORT (sequential.pxi's machinery: its slots held, its client's later
# requests waiting, one step at a time). The shard that sorts ("home") is the STORE
# destination's, else the sorted key's. Steps:
#   1. On the sorted key's shard: `SORT key BY nosort`: the elements. An error (WRONGTYPE ...)
#      sends the client's command there as it is, for Redis's own answer (its options are
#      checked before the key).
#   2. The keys the patterns form: for each element and each BY / GET pattern with a `*` (not
#      `#`), the key as Redis's lookupKeyByPattern forms it (the first `*` replaced by the
#      element, cut before a `->field` that follows it); those, and the sorted key, that live
#      on another shard than home are read there, one transaction per shard:
#      MULTI; DUMP k; PTTL k; ...; EXEC (each shard's keys read at one instant).
#   3. On home, one transaction: MULTI; DEL <those keys>; RESTORE each that exists, under its
#      own name; the client's command unchanged; DEL <those keys>; EXEC. The shard sorts with
#      Redis's own semantics (numbers, ALPHA, LIMIT, `->` hash fields, STORE, errors) over exact
#      copies; the copies exist only inside the transaction (the home shard does not own their
#      slots: nobody reads them there, and the first DEL drops a stale copy a slot move may have
#      left, so it is never read instead).
# A concurrent client may change a referenced key between 2 and 3: the sort then uses the value
# read at 2, as if it ran just before that write. Nothing is written but the STORE destination
# (on its own shard, in step 3), so a failure between steps changes nothing.

cdef enum:
    SORT_MAX_REFS = 1000000     # keys the patterns may form in one command


cdef int sort_pattern_key(const char *pat, size_t plen, const char *elem, size_t elen,
                          Buf *out) noexcept nogil:
    """The key a BY / GET pattern forms for an element, appended to out (as Redis's
    lookupKeyByPattern: the first `*` is the element, a `->field` after it is cut off); 0 when
    the pattern forms no key (`#`, or no `*`), -1 when out of memory, else 1."""
    cdef const char *star
    cdef const char *arrow = NULL
    cdef size_t i, end = plen
    if plen == 1 and pat[0] == c'#':
        return 0
    star = <const char *>memchr(pat, c'*', plen)
    if star == NULL:
        return 0
    i = <size_t>(star - pat) + 1
    while i + 1 < plen:
        if pat[i] == c'-' and pat[i + 1] == c'>':
            arrow = pat + i
            break
        i += 1
    if arrow != NULL and arrow + 2 < pat + plen:
        end = <size_t>(arrow - pat)
    if buf_append(out, pat, <size_t>(star - pat)) < 0 or buf_append(out, elem, elen) < 0 \
            or buf_append(out, star + 1, end - <size_t>(star - pat) - 1) < 0:
        return -1
    return 1


cdef bint sort_seq_begin(Core *core, Request *r, ArgVec *av) noexcept nogil:
    """sort.pxi, where a pattern would be refused, with multi_slot_commands = sequential: start
    the sequence (True: r is answered, now or later)."""
    cdef int kpos[2]
    cdef int nkeys = 1, j = 2, left
    cdef Sequence *s
    if core.seq_locks == NULL:
        core.seq_locks = <unsigned char *>calloc(SLOT_COUNT, 1)
        if core.seq_locks == NULL:
            req_write_str(core, r, b"-ERR out of memory\r\n")
            return True
    kpos[0] = 1
    while j < av.argc:
        left = av.argc - j - 1
        if arg_is(av, j, b"limit") and left >= 2:
            j += 2
        elif (arg_is(av, j, b"by") or arg_is(av, j, b"get")) and left >= 1:
            j += 1
        elif arg_is(av, j, b"store") and left >= 1 and nkeys == 1:
            kpos[1] = j + 1
            nkeys = 2
            j += 1
        j += 1
    s = seq_new(core, SEQ_SORT, WB_NONE, HOME_LAST, av.wire, av.wire_len, kpos, nkeys)
    if s != NULL:
        s.ref_shard = NULL
    return seq_take(core, r.client, r, s)


cdef int sort_seq_refs(Core *core, Sequence *s, const char *reply, size_t n) noexcept nogil:
    """Step 2's keys from step 1's elements: those on another shard than home, into s.refs and
    s.ref_shard (the sorted key among them when it is remote). -1 when out of memory or too
    many."""
    cdef int hs = s.kshard[s.home], j, rc, cap = 0, shard
    cdef const char *body
    cdef const char *end = reply + n
    cdef const char *elem
    cdef size_t elen, mark, klen
    cdef long long count = array_header(reply, n, &body), i
    cdef Buf key
    cdef int *grown
    memset(&key, 0, sizeof(Buf))
    if count < 0:
        return -1
    for i in range(count + 1):
        if i < count:
            body = next_bulk(body, end, &elem, &elen)
            if body == NULL:
                break
        for j in range(2, s.av.argc):
            buf_clear(&key)
            if i == count:
                # After the elements: the sorted key itself.
                if j > 2:
                    break
                if buf_append(&key, s.av.argv[1], s.av.argl[1]) < 0:
                    buf_free(&key)
                    return -1
                rc = 1
            elif j + 1 < s.av.argc and (arg_is(&s.av, j, b"by") or arg_is(&s.av, j, b"get")):
                rc = sort_pattern_key(s.av.argv[j + 1], s.av.argl[j + 1], elem, elen, &key)
                if rc < 0:
                    buf_free(&key)
                    return -1
            else:
                continue
            if rc == 0:
                continue
            klen = buf_len(&key)
            shard = core.slot_map[key_slot(buf_head(&key), klen)]
            if shard == hs:
                continue
            if s.nrefs == cap:
                if cap >= SORT_MAX_REFS:
                    buf_free(&key)
                    return -1
                cap = cap * 2 + 64
                grown = <int *>realloc(s.ref_shard, cap * sizeof(int))
                if grown == NULL:
                    buf_free(&key)
                    return -1
                s.ref_shard = grown
            mark = klen
            if buf_append(&s.refs, <const char *>&mark, sizeof(size_t)) < 0 \
                    or buf_append(&s.refs, buf_head(&key), klen) < 0:
                buf_free(&key)
                return -1
            s.ref_shard[s.nrefs] = shard
            s.nrefs += 1
    buf_free(&key)
    return 0


cdef inline const char *sort_ref_next(const char *p, const char **key, size_t *klen) noexcept nogil:
    """One entry of s.refs at p: its key; where the next entry starts."""
    memcpy(klen, p, sizeof(size_t))
    key[0] = p + sizeof(size_t)
    return p + sizeof(size_t) + klen[0]


cdef void sort_seq_next(Core *core, Request *r) noexcept nogil:
    cdef Sequence *s = r.seq
    cdef Buf *sub = &core.subcommand
    buf_clear(sub)
    if s.phase == PH_FETCH and s.shard_fetched == NULL:
        # Step 1: the elements.
        cmd_start(sub, 4)
        cmd_arg_str(sub, b"SORT")
        cmd_arg_av(sub, &s.av, 1)
        cmd_arg_str(sub, b"BY")
        cmd_arg_str(sub, b"nosort")
        seq_send(core, r, s.kshard[0], 0)
        return
    sort_seq_fetch_next(core, r)


cdef void sort_seq_fetch_next(Core *core, Request *r) noexcept nogil:
    """Step 2 on the next shard holding some of the keys, else step 3."""
    cdef Sequence *s = r.seq
    cdef Buf *sub = &core.subcommand
    cdef const char *p
    cdef const char *key
    cdef size_t klen
    cdef int i, n
    while s.step < s.nfetched:
        n = 0
        p = buf_head(&s.refs)
        buf_clear(sub)
        buf_append_str(sub, b"*1\r\n$5\r\nMULTI\r\n")
        for i in range(s.nrefs):
            p = sort_ref_next(p, &key, &klen)
            if s.ref_shard[i] == s.step:
                cmd_start(sub, 2)
                cmd_arg_str(sub, b"DUMP")
                cmd_arg(sub, key, klen)
                cmd_start(sub, 2)
                cmd_arg_str(sub, b"PTTL")
                cmd_arg(sub, key, klen)
                n += 2
        if n > 0:
            buf_append_str(sub, b"*1\r\n$4\r\nEXEC\r\n")
            seq_send(core, r, s.step, n + 1)
            return
        s.step += 1
    sort_seq_run(core, r)


cdef void sort_seq_run(Core *core, Request *r) noexcept nogil:
    """Step 3: the copies restored on home, the command, the copies dropped: one transaction."""
    cdef Sequence *s = r.seq
    cdef Buf *sub = &core.subcommand
    cdef int *seen = NULL
    cdef const char *p
    cdef const char *key
    cdef const char *e
    cdef const char *dump
    cdef size_t klen, elen, dump_len
    cdef long long pttl
    cdef int i, j, nrestore = 0, queued = 1
    seen = <int *>calloc(s.nfetched if s.nfetched > 0 else 1, sizeof(int))
    if seen == NULL:
        seq_finish_str(core, r, b"-ERR out of memory\r\n")
        return
    buf_clear(sub)
    buf_append_str(sub, b"*1\r\n$5\r\nMULTI\r\n")
    if s.nrefs > 0:
        cmd_start(sub, 1 + s.nrefs)
        cmd_arg_str(sub, b"DEL")
        p = buf_head(&s.refs)
        for i in range(s.nrefs):
            p = sort_ref_next(p, &key, &klen)
            cmd_arg(sub, key, klen)
        queued += 1
        p = buf_head(&s.refs)
        for i in range(s.nrefs):
            p = sort_ref_next(p, &key, &klen)
            j = seen[s.ref_shard[i]]
            seen[s.ref_shard[i]] += 2
            e = exec_element(buf_head(&s.shard_fetched[s.ref_shard[i]]),
                             buf_len(&s.shard_fetched[s.ref_shard[i]]), j, &elen)
            if e == NULL or frame_bulk(e, elen, &dump, &dump_len) != 1:
                continue            # no such key there: the DEL above made sure it is none here
            e = exec_element(buf_head(&s.shard_fetched[s.ref_shard[i]]),
                             buf_len(&s.shard_fetched[s.ref_shard[i]]), j + 1, &elen)
            if e == NULL or frame_int(e, elen, &pttl) < 0 or pttl < 0:
                pttl = 0
            cmd_start(sub, 5)
            cmd_arg_str(sub, b"RESTORE")
            cmd_arg(sub, key, klen)
            cmd_arg_ll(sub, pttl)
            cmd_arg(sub, dump, dump_len)
            cmd_arg_str(sub, b"REPLACE")      # the same key formed twice
            nrestore += 1
            queued += 1
    free(seen)
    buf_append(sub, buf_head(&s.wire), buf_len(&s.wire))
    if s.nrefs > 0:
        cmd_start(sub, 1 + s.nrefs)
        cmd_arg_str(sub, b"DEL")
        p = buf_head(&s.refs)
        for i in range(s.nrefs):
            p = sort_ref_next(p, &key, &klen)
            cmd_arg(sub, key, klen)
        queued += 1
    buf_append_str(sub, b"*1\r\n$4\r\nEXEC\r\n")
    s.phase = PH_RUN
    s.step = (1 if s.nrefs > 0 else 0) + nrestore     # the command's reply in EXEC's
    seq_send(core, r, s.kshard[s.home], queued + 1)


cdef void sort_seq_answered(Core *core, Request *r, const char *reply, size_t n) noexcept nogil:
    cdef Sequence *s = r.seq
    cdef const char *e
    cdef size_t elen
    cdef int i
    if s.phase == PH_WRITE_BACK:
        # The command as the client sent it, on the sorted key's shard: Redis's own error.
        seq_finish(core, r, reply, n)
        return
    if s.phase == PH_FETCH and s.shard_fetched == NULL:
        s.nfetched = core.nshards
        s.shard_fetched = <Buf *>calloc(s.nfetched if s.nfetched > 0 else 1, sizeof(Buf))
        if s.shard_fetched == NULL:
            seq_finish_str(core, r, b"-ERR out of memory\r\n")
            return
        if reply_is_error(reply):
            s.phase = PH_WRITE_BACK
            buf_clear(&core.subcommand)
            buf_append(&core.subcommand, buf_head(&s.wire), buf_len(&s.wire))
            seq_send(core, r, s.kshard[0], 0)
            return
        if sort_seq_refs(core, s, reply, n) < 0:
            seq_finish_str(core, r, b"-ERR too many keys formed by the SORT patterns\r\n")
            return
        s.step = 0
        sort_seq_fetch_next(core, r)
        return
    if reply_is_error(reply):
        seq_finish(core, r, reply, n)       # nothing was written
        return
    if s.phase == PH_FETCH:
        buf_append(&s.shard_fetched[s.step], reply, n)
        s.step += 1
        sort_seq_fetch_next(core, r)
        return
    # PH_RUN: EXEC's reply; the command's own is at s.step (a refused RESTORE is the answer).
    for i in range(s.step + 1):
        e = exec_element(reply, n, i, &elen)
        if e == NULL:
            seq_finish_str(core, r, b"-ERR unexpected reply from shard\r\n")
            return
        if i < s.step and reply_is_error(e):
            seq_finish(core, r, e, elen)
            return
    seq_finish(core, r, e, elen)
