# EVAL's script cache, kept as one Redis keeps it.
#
# One Redis caches every script EVAL runs, so a later EVALSHA of its SHA1 finds it whatever
# keys it names, and SCRIPT EXISTS answers 1. A database of several shards runs an EVAL on one
# shard (its keys', or the default shard), which alone caches it: an EVALSHA whose keys live on
# another shard would get NOSCRIPT, and SCRIPT EXISTS (agg_logical_and over the shards) 0.
# So the first EVAL of a body also sends `SCRIPT LOAD <body>` to every other shard of the map,
# as fragments of the same request: the client is answered (the script's own reply, fragment
# 0's, MERGE_FIRST) once every shard has it, so an EVALSHA sent after the answer finds it
# anywhere. The SHA1s of the bodies spread so are remembered per Core (ScriptsSpread): later
# EVALs of them cost one SHA1 of the body and go to their shard alone. The table is forgotten
# when a shard connection goes up or down or the map changes (a restarted shard or a promoted
# replica has an empty cache: Redis replicates a script's effects, not the script) and on
# SCRIPT FLUSH; a full table is forgotten too (the next EVAL of each body spreads it again).
# A body that does not compile is not cached anywhere (the other shards' SCRIPT LOAD fails as
# the EVAL does): what EVALSHA then finds is what one Redis has.


cdef inline unsigned int script_slot(const unsigned char *digest) noexcept nogil:
    return ((<unsigned int>digest[0] << 8) | digest[1]) % SCRIPTS_SPREAD_SLOTS


cdef inline bint script_slot_empty(ScriptsSpread *t, unsigned int i) noexcept nogil:
    cdef int j
    for j in range(SCRIPT_DIGEST_LEN):
        if t.digests[i][j] != 0:
            return False
    return True


cdef bint script_is_spread(Core *core, const unsigned char *digest, bint add) noexcept nogil:
    """Whether digest is in the table (an all-zero slot is empty); add: put it in when it is
    not."""
    cdef ScriptsSpread *t = core.scripts_spread
    cdef unsigned int i
    if t == NULL:
        if not add:
            return False
        t = core.scripts_spread = <ScriptsSpread *>calloc(1, sizeof(ScriptsSpread))
        if t == NULL:
            return False
    i = script_slot(digest)
    while not script_slot_empty(t, i):
        if memcmp(t.digests[i], digest, SCRIPT_DIGEST_LEN) == 0:
            return True
        i = (i + 1) % SCRIPTS_SPREAD_SLOTS
    if add:
        if t.count >= SCRIPTS_SPREAD_SLOTS // 2:
            memset(t, 0, sizeof(ScriptsSpread))
            i = script_slot(digest)
        memcpy(t.digests[i], digest, SCRIPT_DIGEST_LEN)
        t.count += 1
    return False


cdef void scripts_forget(Core *core) noexcept nogil:
    if core.scripts_spread != NULL:
        memset(core.scripts_spread, 0, sizeof(ScriptsSpread))


cdef bint script_spread(Core *core, Request *r, ArgVec *av, int shard) noexcept nogil:
    """EVAL / EVAL_RO of a body not yet spread, run on `shard`: sent there as fragment 0, and
    SCRIPT LOAD of its body to every other shard of the map. False when the body is known to
    be cached everywhere (or memory is short): the caller sends the EVAL alone."""
    cdef unsigned char digest[SCRIPT_DIGEST_LEN]
    cdef Buf *sub = &core.subcommand
    cdef int i, f = 1, n = core.nactive
    if n < 2 or av.argc < 2:
        return False
    for i in range(n):
        if core.active[i] == shard:
            break
    else:
        return False
    SHA1(<const unsigned char *>av.argv[1], av.argl[1], digest)
    if script_is_spread(core, digest, True):
        return False
    if req_fragment(r, n) < 0:
        return False
    r.merge = MERGE_FIRST
    r.pending = n
    buf_clear(sub)
    buf_append_str(sub, b"*3\r\n$6\r\nSCRIPT\r\n$4\r\nLOAD\r\n")
    buf_append_bulk(sub, av.argv[1], av.argl[1])
    for i in range(n):
        if core.active[i] != shard:
            frag_send(core, core.active[i], &r.frags[f], buf_head(sub), buf_len(sub))
            f += 1
    # Last: r may be freed by the last send (a shard that is down answers at once).
    frag_send(core, shard, &r.frags[0], av.wire, av.wire_len)
    return True
