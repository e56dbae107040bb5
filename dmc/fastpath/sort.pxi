# SORT / SORT_RO with BY or GET patterns: the keys the patterns form are read by the shard that
# sorts, the sorted key's. The proxy lets a pattern through only when its keys provably hash to
# the sorted key's slot (Redis Cluster 7.2's rule: a hash tag before any wildcard, `GET #`, or a
# BY without `*`, which does not sort), and refuses the others with Redis Cluster's own errors,
# rather than answer as if the other shards' keys did not exist. With multi_slot_commands =
# sequential, those are carried out over the shards instead (sort_sequential.pxi).


cdef int pattern_slot(const char *p, size_t n) noexcept nogil:
    """The slot of every key a pattern can form, or -1 when they may be in different slots
    (Redis's patternHashSlot: a wildcard or an escape before a non-empty hash tag)."""
    cdef ssize_t s = -1, i
    for i in range(<ssize_t>n):
        if p[i] == c'*' or p[i] == c'?' or p[i] == c'[' or p[i] == c'\\':
            return -1
        elif s == -1 and p[i] == c'{':
            s = i
        elif s >= 0 and p[i] == c'}' and i == s + 1:
            s = -2                  # `{}`: the whole key is hashed
        elif s >= 0 and p[i] == c'}':
            return crc16(p + s + 1, <size_t>(i - s - 1)) & (SLOT_COUNT - 1)
    return crc16(p, n) & (SLOT_COUNT - 1)


cdef int sort_options(ArgVec *av, int *store) noexcept nogil:
    """SORT's options read as SORT reads them: SORT_BY_LEAVES (SORT_GET_LEAVES) at the first BY
    (GET) pattern that may form keys outside the sorted key's slot, else 0; *store: the
    argument index of STORE's destination (0: none). At the first option SORT would not
    accept, reading stops (the shard answers the syntax error)."""
    cdef int j = 2, left
    cdef int slot
    store[0] = 0
    if av.argc < 2:
        return 0
    slot = <int>key_slot(av.argv[1], av.argl[1])
    while j < av.argc:
        left = av.argc - j - 1
        if arg_is(av, j, b"asc") or arg_is(av, j, b"desc") or arg_is(av, j, b"alpha"):
            pass
        elif arg_is(av, j, b"limit") and left >= 2:
            j += 2
        elif arg_is(av, j, b"store") and left >= 1:
            j += 1
            store[0] = j
        elif arg_is(av, j, b"by") and left >= 1:
            j += 1
            if memchr(av.argv[j], c'*', av.argl[j]) != NULL and pattern_slot(av.argv[j], av.argl[j]) != slot:
                return SORT_BY_LEAVES
        elif arg_is(av, j, b"get") and left >= 1:
            j += 1
            if not (av.argl[j] == 1 and av.argv[j][0] == c'#') and pattern_slot(av.argv[j], av.argl[j]) != slot:
                return SORT_GET_LEAVES
        else:
            return 0
        j += 1
    return 0


cdef const char *sort_pattern_refusal(int leaves) noexcept nogil:
    """Redis Cluster's error for a pattern that may leave the sorted key's slot."""
    if leaves == SORT_BY_LEAVES:
        return b"-ERR BY option of SORT denied in Cluster mode when keys formed by the pattern may be in different slots.\r\n"
    return b"-ERR GET option of SORT denied in Cluster mode when keys formed by the pattern may be in different slots.\r\n"


cdef bint sort_patterns_refused(Core *core, Request *r, ArgVec *av) noexcept nogil:
    """True when a BY or GET pattern may form keys outside the sorted key's slot; r is then
    answered with Redis Cluster's error (or, with multi_slot_commands = sequential, carried out
    over the shards: sort_sequential.pxi)."""
    cdef int store
    cdef int leaves = sort_options(av, &store)
    if leaves == 0:
        return False
    if core.multi_slot == MULTI_SLOT_SEQUENTIAL:
        return sort_seq_begin(core, r, av)
    req_write_str(core, r, sort_pattern_refusal(leaves))
    return True


cdef int sort_keys(ArgVec *av, KeyList *kl) noexcept nogil:
    """The keys of a SORT whose patterns stay in the sorted key's slot: the sorted key and
    STORE's destination (Redis gives the latter no key spec: COMMAND GETKEYS finds it). -1
    when out of memory."""
    cdef int store
    kl.n = 0
    if av.argc < 2:
        return 0
    sort_options(av, &store)
    if keylist_add(kl, 1) < 0 or (store > 0 and keylist_add(kl, store) < 0):
        return -1
    return 0
