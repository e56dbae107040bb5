# Multi-key commands whose keys live on several shards, carried out as single-shard steps: the
# database's policy multi_slot_commands = sequential (the default, refuse, answers CROSSSLOT as
# Redis Cluster does). Entered only where route.pxi would answer CROSSSLOT, so a command whose
# keys share a shard never meets this file.
#
# Every step is one command (or one MULTI ... EXEC) on one shard, sent on the shard's shared
# connection in one contiguous write; a step's reply decides the next step. While a sequence
# runs, its client's later requests wait (CF_RESOLVING, as for COMMAND GETKEYS), so replies
# stay in order. A step a shard refuses (down, busy, an error) ends the sequence with that
# error; steps are ordered so that an error, or the proxy dying, between two steps never loses
# data: the destination is written before any source changes.
#
# Kinds of sequence:
#
# SEQ_STAGE: RENAME, RENAMENX, COPY, SMOVE, LMOVE, RPOPLPUSH, SUNIONSTORE, SINTERSTORE,
#   SDIFFSTORE, ZUNIONSTORE, ZINTERSTORE, ZDIFFSTORE, ZRANGESTORE, PFMERGE, BITOP,
#   GEOSEARCHSTORE, GEORADIUS(BYMEMBER) ... STORE, SORT ... STORE (without BY/GET patterns).
#   The home shard is the destination's. Steps:
#   1. For each key not on the home shard (a remote source), on its shard:
#      MULTI; DUMP key; PTTL key; EXEC (value and TTL read at one instant).
#   2. On the home shard, one transaction: MULTI; RESTORE <tmp_i> <pttl> <dump> for each
#      remote source that exists; the client's command with each remote source replaced by
#      its tmp name; DEL <tmp_i>...; EXEC. The shard itself computes the answer, with Redis's
#      own semantics and errors (WRONGTYPE, syntax), over exact copies of the sources; the tmp
#      keys exist only inside the transaction: nobody sees them (keyspace notifications and the
#      replication stream do), and a proxy that dies before EXEC leaves nothing behind.
#   3. Write-back on the source's shard, only when step 2 changed the (copied) source:
#      RENAME / RENAMENX (answered OK / 1): the source is deleted if it still holds the value
#        that was moved (a script compares DUMPs); if a client wrote it meanwhile, its write
#        is kept, as if it came after the rename.
#      SMOVE (answered 1): SREM source member.
#      LMOVE / RPOPLPUSH (answered an element): LREM source 1 (or -1, from the right) element:
#        one occurrence of that value, from the end it was taken from.
#   Between steps a concurrent client may see: the destination already written while the
#   source still holds the value (RENAME, SMOVE, LMOVE: an element in both for the time of one
#   step); a *STORE destination computed from sources read at slightly different instants
#   (each source's own read is atomic). If the proxy or the source's shard dies between 2 and
#   3, the command's effect stays half-applied in the safe direction: the value is in the
#   destination AND still in the source (a duplicate, never a loss); the client gets the
#   shard's error (or its connection drops) and may repeat the command. If the home shard
#   dies before its EXEC, nothing changed.
#
# SEQ_MPOP: LMPOP, ZMPOP. Each key in argument order, on its shard: `LMPOP 1 key <rest>`; the
#   first reply that is not empty is the answer (as Redis: the first non-empty key, WRONGTYPE
#   for the first key of another type). A key filled after it was tried and before a later key
#   answered is not seen (Redis would have seen it only if it came before the command).
#
# SEQ_MSETNX: MSETNX over several shards. 1. On each shard of the keys: EXISTS <its keys>; any
#   key present answers 0, nothing set. 2. On each shard in turn: MSETNX <its keys and values>.
#   A concurrent writer that creates one of the keys between 1 and 2 makes that shard answer 0:
#   the groups already set are then undone by a script that deletes each key only if it still
#   holds the value set (a later write by someone else is kept), and the answer is 0. Between
#   steps a reader may see some keys set and others not yet; no partial result remains.
#
# Test hook: with DMC_TEST_STOP_BEFORE_WRITE_BACK=1 in dmcproxy's environment (read once, when a
# Proxy is made; one test of a flag here, off the common path) the process stops itself
# (SIGSTOP) between a SEQ_STAGE's step 2 and its write-back, so tests/test_multislot_crash.py
# can kill -9 the proxy or a shard at that point and check what is left.
#
# Serialization: within one endpoint, sequences touching the same slots run one after the
# other: each holds every slot of its keys in core.seq_locks from its first step to its answer,
# taken all at once or not at all (no deadlock), waiters served in arrival order. With worker
# threads the table is the endpoint's (Workers.seq_locks, under its leaf lock: seq_table_lock),
# and a worker that frees slots wakes the workers whose sequences wait (workers.pxi).
# Other commands are never delayed. Across proxies of other nodes there is no lock: two
# sequences on the same keys may interleave their steps; each step stays atomic on its shard,
# the write-back scripts keep concurrent writes, and the worst outcome is a duplicate (an
# element moved by two proxies at once in both places), never a loss.
#
# Not here (kept CROSSSLOT): transactions over several shards (MULTI/EXEC needs an atomic
# commit across shards, which redis-server shards cannot vote on), MSET-like commands already
# split. The blocking forms (BLPOP ... BLMOVE, XREAD over several shards) are SEQ_BLOCK and a
# blocking SEQ_STAGE: see blocking_sequential.pxi; XREADGROUP stays CROSSSLOT.
#
# SEQ_SORT: SORT / SORT_RO with BY or GET patterns forming keys of other shards: see
#   sort_sequential.pxi.


cdef const char *SEQ_TMP = b"\xffdmc:sequential:%d"     # a staged source on the home shard
cdef const char *SEQ_DEL_IF_SAME = b"if redis.call('DUMP',KEYS[1])==ARGV[1] then return redis.call('DEL',KEYS[1]) end return 0"
cdef const char *SEQ_UNSET_IF_SAME = b"for i,k in ipairs(KEYS) do if redis.pcall('GET',k)==ARGV[i] then redis.call('DEL',k) end end return 0"

cdef enum:
    HOME_FIRST = 0      # the destination is the first key (SUNIONSTORE dst ...)
    HOME_SECOND = 1     # the second (RENAME src dst)
    HOME_LAST = 2       # the last (SORT ... STORE dst, GEORADIUS ... STORE dst)


cdef inline bint cmd_name_is(CommandInfo *cmd, const char *name) noexcept nogil:
    return <size_t>cmd.name_len == strlen(name) and memcmp(cmd.name, name, cmd.name_len) == 0


cdef int seq_kind_of(CommandInfo *cmd, int *writeback, int *home) noexcept nogil:
    """How a command over several shards is carried out (SEQ_NONE: it is not, CROSSSLOT)."""
    writeback[0] = WB_NONE
    home[0] = HOME_FIRST
    if cmd_name_is(cmd, b"rename") or cmd_name_is(cmd, b"renamenx"):
        writeback[0] = WB_RENAME
        home[0] = HOME_SECOND
        return SEQ_STAGE
    if cmd_name_is(cmd, b"smove"):
        writeback[0] = WB_SMOVE
        home[0] = HOME_SECOND
        return SEQ_STAGE
    if cmd_name_is(cmd, b"lmove") or cmd_name_is(cmd, b"rpoplpush"):
        writeback[0] = WB_LMOVE
        home[0] = HOME_SECOND
        return SEQ_STAGE
    if cmd_name_is(cmd, b"copy"):
        home[0] = HOME_SECOND
        return SEQ_STAGE
    if (cmd_name_is(cmd, b"sunionstore") or cmd_name_is(cmd, b"sinterstore") or cmd_name_is(cmd, b"sdiffstore")
            or cmd_name_is(cmd, b"zunionstore") or cmd_name_is(cmd, b"zinterstore")
            or cmd_name_is(cmd, b"zdiffstore") or cmd_name_is(cmd, b"zrangestore")
            or cmd_name_is(cmd, b"pfmerge") or cmd_name_is(cmd, b"bitop") or cmd_name_is(cmd, b"geosearchstore")):
        return SEQ_STAGE
    if cmd_name_is(cmd, b"sort") or cmd_name_is(cmd, b"georadius") or cmd_name_is(cmd, b"georadiusbymember"):
        home[0] = HOME_LAST
        return SEQ_STAGE
    if cmd_name_is(cmd, b"lmpop") or cmd_name_is(cmd, b"zmpop"):
        return SEQ_MPOP
    if cmd_name_is(cmd, b"msetnx"):
        return SEQ_MSETNX
    return SEQ_NONE


# ---- replies -------------------------------------------------------------------------------


cdef int frame_bulk(const char *p, size_t n, const char **data, size_t *len) noexcept nogil:
    """1 and the bytes of a bulk string frame, 0 for a nil, -1 for anything else."""
    cdef const char *eol
    cdef long long v
    if n >= 1 and p[0] == c'_':
        return 0
    eol = <const char *>memchr(p, c'\n', n)
    if n < 4 or (p[0] != c'$' and p[0] != c'*') or eol == NULL or parse_ll(p + 1, eol - p - 2, &v) < 0:
        return -1
    if v < 0:
        return 0
    if p[0] == c'*':
        return -1
    data[0] = eol + 1
    len[0] = <size_t>v
    return 1


cdef bint frame_is_nil(const char *p, size_t n) noexcept nogil:
    return (n >= 1 and p[0] == c'_') or (n >= 4 and (memcmp(p, b"$-1\r", 4) == 0 or memcmp(p, b"*-1\r", 4) == 0))


cdef int frame_int(const char *p, size_t n, long long *v) noexcept nogil:
    cdef const char *eol = <const char *>memchr(p, c'\n', n)
    if n < 3 or p[0] != c':' or eol == NULL:
        return -1
    return parse_ll(p + 1, eol - p - 2, v)


cdef const char *exec_element(const char *p, size_t n, int index, size_t *len) noexcept nogil:
    """The frame at `index` of an EXEC reply (an array), or NULL."""
    cdef const char *body
    cdef const char *end = p + n
    cdef long long count = array_header(p, n, &body)
    cdef ssize_t flen
    cdef size_t need
    cdef int push, i
    if count <= index:
        return NULL
    for i in range(index + 1):
        flen = reply_frame(body, end - body, &need, &push)
        if flen <= 0:
            return NULL
        if i == index:
            len[0] = <size_t>flen
            return body
        body += flen
    return NULL


# ---- building a step -------------------------------------------------------------------------


cdef inline void cmd_start(Buf *sub, int nargs) noexcept nogil:
    buf_append_int(sub, c'*', nargs)


cdef inline void cmd_arg(Buf *sub, const char *p, size_t n) noexcept nogil:
    buf_append_bulk(sub, p, n)


cdef inline void cmd_arg_str(Buf *sub, const char *s) noexcept nogil:
    buf_append_bulk(sub, s, strlen(s))


cdef inline void cmd_arg_ll(Buf *sub, long long v) noexcept nogil:
    cdef char digits[24]
    snprintf(digits, sizeof(digits), b"%lld", v)
    buf_append_bulk(sub, digits, strlen(digits))


cdef inline void cmd_arg_av(Buf *sub, ArgVec *av, int i) noexcept nogil:
    buf_append_bulk(sub, av.argv[i], av.argl[i])


cdef void seq_send(Core *core, Request *r, int shard, int skip) noexcept nogil:
    """Send core.subcommand as r's next step; skip: replies before the one awaited (MULTI's
    OK and the QUEUED). r may be answered, and freed, before this returns."""
    r.pending = 1
    r.frag0.skip = skip
    frag_send(core, shard, &r.frag0, buf_head(&core.subcommand), buf_len(&core.subcommand))


# ---- start, locks, end -----------------------------------------------------------------------


cdef Sequence *seq_new(Core *core, int kind, int writeback, int home, const char *wire,
                       size_t wire_len, int *kpos, int nkeys) noexcept nogil:
    """A sequence over its own copy of the request, its keys' shards and slots found; NULL
    when out of memory."""
    cdef Sequence *s = <Sequence *>calloc(1, sizeof(Sequence))
    cdef size_t consumed, need
    cdef int i, j, k
    if s == NULL:
        return NULL
    argvec_init(&s.av)
    s.kind = kind
    s.writeback = writeback
    s.nkeys = nkeys
    s.kpos = <int *>calloc(nkeys, sizeof(int))
    s.kshard = <int *>calloc(nkeys, sizeof(int))
    s.groups = <int *>calloc(nkeys, sizeof(int))
    s.slots = <unsigned short *>calloc(nkeys, sizeof(unsigned short))
    s.fetched = <Buf *>calloc(nkeys, sizeof(Buf))
    if (s.kpos == NULL or s.kshard == NULL or s.groups == NULL or s.slots == NULL
            or s.fetched == NULL or buf_append(&s.wire, wire, wire_len) < 0
            or parse_request(buf_head(&s.wire), buf_len(&s.wire), &s.av, &consumed, &need) != PARSE_OK):
        seq_release(s)
        return NULL
    for i in range(nkeys):
        k = kpos[i]
        s.kpos[i] = k
        s.slots[i] = key_slot(s.av.argv[k], s.av.argl[k])
        s.kshard[i] = core.slot_map[s.slots[i]]
        for j in range(s.ngroups):
            if s.groups[j] == s.kshard[i]:
                break
        else:
            s.groups[s.ngroups] = s.kshard[i]
            s.ngroups += 1
    s.nslots = nkeys
    s.home = 0 if home == HOME_FIRST else (1 if home == HOME_SECOND else nkeys - 1)
    return s


cdef void seq_release(Sequence *s) noexcept nogil:
    cdef int i
    if s.fetched != NULL:
        for i in range(s.nkeys):
            buf_free(&s.fetched[i])
    free(s.fetched)
    free(s.kpos)
    free(s.kshard)
    free(s.groups)
    free(s.slots)
    buf_free(&s.wire)
    buf_free(&s.result)
    buf_free(&s.block_reply)
    buf_free(&s.block_error)
    buf_free(&s.refs)
    free(s.ref_shard)
    if s.shard_fetched != NULL:
        for i in range(s.nfetched):
            buf_free(&s.shard_fetched[i])
    free(s.shard_fetched)
    argvec_free(&s.av)
    free(s)


cdef inline void seq_table_lock(Core *core) noexcept nogil:
    """With worker threads the slot locks are the endpoint's (Workers.seq_locks, under a leaf
    lock): a sequence of one worker waits for another worker's on the same slots."""
    if core.workers != NULL:
        pthread_mutex_lock(&core.workers.seq_lock)


cdef inline void seq_table_unlock(Core *core) noexcept nogil:
    if core.workers != NULL:
        core.workers.seq_waiting[core.worker] = core.seq_waiting != NULL
        pthread_mutex_unlock(&core.workers.seq_lock)


cdef void seq_free(Core *core, Request *r) noexcept nogil:
    cdef Sequence *s = r.seq
    if s == NULL:
        return
    seq_unlock(core, s)
    seq_release(s)
    r.seq = NULL


cdef void seq_unlock(Core *core, Sequence *s) noexcept nogil:
    """Its slots are free again (its end, or a blocking form that starts to wait); the
    sequences waiting for them are woken by the caller (seq_finish) or by seq_wake."""
    cdef int i
    if not s.locked:
        return
    s.locked = False
    seq_table_lock(core)
    for i in range(s.nslots):
        core.seq_locks[s.slots[i]] = 0
    seq_table_unlock(core)
    if core.workers != NULL:
        workers_seq_released(core)


cdef bint seq_slots_free(Core *core, Sequence *s) noexcept nogil:
    cdef int i
    for i in range(s.nslots):
        if core.seq_locks[s.slots[i]]:
            return False
    return True


cdef void seq_mark(Core *core, Sequence *s, unsigned char from_v, unsigned char to_v) noexcept nogil:
    cdef int i
    for i in range(s.nslots):
        if core.seq_locks[s.slots[i]] == from_v:
            core.seq_locks[s.slots[i]] = to_v


cdef void seq_start(Core *core, Request *r) noexcept nogil:
    """Hold r's slots and run its first step, or queue it behind the sequences on its slots
    (those running, and those waiting before it)."""
    cdef Sequence *s = r.seq
    cdef Request *w
    cdef bint free_now
    r.resolving = True
    r.pending = 1       # waiting or running: a client that closes orphans it, never frees it
    seq_table_lock(core)
    free_now = seq_slots_free(core, s)
    w = core.seq_waiting
    while free_now and w != NULL:
        seq_mark(core, w.seq, 0, 2)
        free_now = seq_slots_free(core, s)
        w = w.seq.next_waiting
    w = core.seq_waiting
    while w != NULL:
        seq_mark(core, w.seq, 2, 0)
        w = w.seq.next_waiting
    if not free_now:
        s.next_waiting = NULL
        if core.seq_waiting == NULL:
            core.seq_waiting = r
        else:
            w = core.seq_waiting
            while w.seq.next_waiting != NULL:
                w = w.seq.next_waiting
            w.seq.next_waiting = r
        seq_table_unlock(core)
        return
    seq_mark(core, s, 0, 1)
    s.locked = True
    seq_table_unlock(core)
    seq_next(core, r)


cdef void seq_wake(Core *core) noexcept nogil:
    """Start the waiting sequences whose slots are free now, in arrival order (a waiter's
    slots are reserved for it against the ones behind it)."""
    cdef Request *r
    cdef Request *nxt
    cdef Request *ready = NULL
    cdef Request *ready_tail = NULL
    cdef Request *keep = NULL
    cdef Request *keep_tail = NULL
    if core.seq_waking:
        core.seq_wake_again = True
        return
    core.seq_waking = True
    while True:
        core.seq_wake_again = False
        seq_table_lock(core)
        r = core.seq_waiting
        ready = ready_tail = keep = keep_tail = NULL
        while r != NULL:
            nxt = r.seq.next_waiting
            r.seq.next_waiting = NULL
            if r.client == NULL:
                seq_free(core, r)       # its client left before it ran: nothing was done
                r.pending = 0
                r.resolving = False
                req_put(core, r)
            elif seq_slots_free(core, r.seq):
                seq_mark(core, r.seq, 0, 1)
                r.seq.locked = True
                if ready_tail == NULL:
                    ready = r
                else:
                    ready_tail.seq.next_waiting = r
                ready_tail = r
            else:
                seq_mark(core, r.seq, 0, 2)
                if keep_tail == NULL:
                    keep = r
                else:
                    keep_tail.seq.next_waiting = r
                keep_tail = r
            r = nxt
        r = keep
        while r != NULL:
            seq_mark(core, r.seq, 2, 0)
            r = r.seq.next_waiting
        core.seq_waiting = keep
        seq_table_unlock(core)
        r = ready
        while r != NULL:
            nxt = r.seq.next_waiting
            r.seq.next_waiting = NULL
            seq_next(core, r)       # may end at once (a shard down): asks for another pass
            r = nxt
        if not core.seq_wake_again:
            break
    core.seq_waking = False


cdef void seq_finish(Core *core, Request *r, const char *reply, size_t n) noexcept nogil:
    """The sequence's answer: its slots are released, its client's later requests go on."""
    cdef Buf *out = &core.merged
    buf_clear(out)
    buf_append(out, reply, n)      # reply may be inside the sequence, freed next
    seq_free(core, r)
    r.resolving = False
    if r.client != NULL:
        r.client.flags &= ~CF_RESOLVING
        client_mark_dirty(core, r.client)      # its waiting input is parsed again
    req_write(core, r, buf_head(out), buf_len(out))
    if core.seq_waiting != NULL:
        seq_wake(core)


cdef inline void seq_finish_str(Core *core, Request *r, const char *line) noexcept nogil:
    seq_finish(core, r, line, strlen(line))


cdef bint seq_take(Core *core, Client *c, Request *r, Sequence *s) noexcept nogil:
    if s == NULL:
        req_write_str(core, r, b"-ERR out of memory\r\n")
        return True
    r.seq = s
    c.flags |= CF_RESOLVING         # its later requests wait for this one's answer
    seq_start(core, r)
    return True


cdef bint seq_begin(Core *core, Client *c, Request *r, CommandInfo *cmd, ArgVec *av,
                    KeyList *kl) noexcept nogil:
    """route.pxi, where CROSSSLOT is decided, with multi_slot_commands = sequential: True
    when the command is carried out here (r is then answered, now or later)."""
    cdef int writeback, home
    cdef int kind = seq_kind_of(cmd, &writeback, &home)
    if kind == SEQ_NONE:
        return False
    if core.seq_locks == NULL:
        core.seq_locks = <unsigned char *>calloc(SLOT_COUNT, 1)
        if core.seq_locks == NULL:
            req_write_str(core, r, b"-ERR out of memory\r\n")
            return True
    if not arity_ok(cmd, av.argc) or (kind == SEQ_MSETNX and (av.argc - 1) % 2 != 0):
        r.pending = 1       # the shard answers Redis's own arity error
        frag_send(core, core.key_shard[0], &r.frag0, av.wire, av.wire_len)
        return True
    return seq_take(core, c, r, seq_new(core, kind, writeback, home, av.wire, av.wire_len,
                                        kl.pos, kl.n))


cdef bint seq_begin_resolved(Core *core, Request *r, const char *reply, size_t n) noexcept nogil:
    """route_getkeys_answered, where CROSSSLOT is decided for the commands whose keys a shard
    names (SORT ... STORE, GEORADIUS ... STORE): the keys of its `*N` reply found back among
    the arguments. True when the command is carried out here."""
    cdef int writeback, home, kind, i, j, nkeys = 0
    cdef long long count
    cdef const char *body
    cdef const char *end = reply + n
    cdef const char *key
    cdef size_t klen
    cdef int kpos[MAX_SEQ_KEYS]
    cdef ArgVec av
    cdef size_t consumed, need
    cdef Sequence *s
    if r.cmd == NULL or r.client == NULL:
        return False
    kind = seq_kind_of(r.cmd, &writeback, &home)
    if kind != SEQ_STAGE:
        return False
    if core.seq_locks == NULL:
        core.seq_locks = <unsigned char *>calloc(SLOT_COUNT, 1)
        if core.seq_locks == NULL:
            return False
    count = array_header(reply, n, &body)
    if count <= 0 or count > MAX_SEQ_KEYS:
        return False
    argvec_init(&av)
    if parse_request(buf_head(&r.command), buf_len(&r.command), &av, &consumed, &need) != PARSE_OK:
        argvec_free(&av)
        return False
    if cmd_name_is(r.cmd, b"sort"):
        # BY / GET patterns name keys of any shard, read by the shard that sorts: their keys
        # are staged with the sorted key's (sort_sequential.pxi).
        for j in range(2, av.argc):
            if arg_is(&av, j, b"by") or arg_is(&av, j, b"get"):
                j = sort_seq_begin(core, r, &av)
                argvec_free(&av)
                return j
    for i in range(count):
        body = next_bulk(body, end, &key, &klen)
        if body == NULL:
            break
        for j in range(1, av.argc):
            if av.argl[j] == klen and memcmp(av.argv[j], key, klen) == 0 \
                    and (nkeys == 0 or j > kpos[nkeys - 1]):
                kpos[nkeys] = j
                nkeys += 1
                break
    argvec_free(&av)
    if nkeys != count:
        return False
    s = seq_new(core, kind, writeback, home, buf_head(&r.command), buf_len(&r.command), kpos, nkeys)
    return seq_take(core, r.client, r, s)


# ---- the steps -------------------------------------------------------------------------------


cdef void seq_next(Core *core, Request *r) noexcept nogil:
    """Send r's next step, or answer it."""
    cdef Sequence *s = r.seq
    if s.kind == SEQ_STAGE:
        stage_next(core, r)
    elif s.kind == SEQ_BLOCK:
        block_next(core, r)
    elif s.kind == SEQ_MPOP:
        mpop_next(core, r)
    elif s.kind == SEQ_SORT:
        sort_seq_next(core, r)
    else:
        msetnx_next(core, r)


cdef void seq_answered(Core *core, Request *r, const char *reply, size_t n) noexcept nogil:
    """A step's reply is in."""
    cdef Sequence *s = r.seq
    if s.phase == PH_BLOCK:
        block_answered(core, r, reply, n)       # blocking_sequential.pxi
    elif s.kind == SEQ_BLOCK:
        block_tried(core, r, reply, n)
    elif s.kind == SEQ_STAGE:
        stage_answered(core, r, reply, n)
    elif s.kind == SEQ_MPOP:
        mpop_answered(core, r, reply, n)
    elif s.kind == SEQ_SORT:
        sort_seq_answered(core, r, reply, n)
    else:
        msetnx_answered(core, r, reply, n)


cdef bint stage_fetched(Sequence *s, int i, const char **dump, size_t *dump_len,
                        long long *pttl) noexcept nogil:
    """The DUMP and PTTL of remote key i; False when the key does not exist."""
    cdef const char *p = buf_head(&s.fetched[i])
    cdef size_t n = buf_len(&s.fetched[i])
    cdef const char *e
    cdef size_t elen
    e = exec_element(p, n, 0, &elen)
    if e == NULL or frame_bulk(e, elen, dump, dump_len) != 1:
        return False
    e = exec_element(p, n, 1, &elen)
    if e == NULL or frame_int(e, elen, pttl) < 0:
        pttl[0] = 0
    return True


cdef void stage_next(Core *core, Request *r) noexcept nogil:
    cdef Sequence *s = r.seq
    cdef Buf *sub = &core.subcommand
    cdef int hs = s.kshard[s.home], i, j, k, nremote = 0, nrestore = 0
    cdef const char *dump
    cdef size_t dump_len
    cdef long long pttl
    cdef char tmp[40]
    cdef bint staged
    while s.step < s.nkeys and s.kshard[s.step] == hs:
        s.step += 1
    if s.step < s.nkeys:
        k = s.kpos[s.step]
        buf_clear(sub)
        buf_append_str(sub, b"*1\r\n$5\r\nMULTI\r\n")
        cmd_start(sub, 2)
        cmd_arg_str(sub, b"DUMP")
        cmd_arg_av(sub, &s.av, k)
        cmd_start(sub, 2)
        cmd_arg_str(sub, b"PTTL")
        cmd_arg_av(sub, &s.av, k)
        buf_append_str(sub, b"*1\r\n$4\r\nEXEC\r\n")
        seq_send(core, r, s.kshard[s.step], 3)
        return
    # Every remote source is read: the transaction on the home shard.
    s.phase = PH_RUN
    buf_clear(sub)
    buf_append_str(sub, b"*1\r\n$5\r\nMULTI\r\n")
    for i in range(s.nkeys):
        if s.kshard[i] == hs:
            continue
        nremote += 1
        if stage_fetched(s, i, &dump, &dump_len, &pttl):
            nrestore += 1
            snprintf(tmp, sizeof(tmp), SEQ_TMP, i)
            cmd_start(sub, 4)
            cmd_arg_str(sub, b"RESTORE")
            cmd_arg_str(sub, tmp)
            cmd_arg_ll(sub, pttl if pttl > 0 else 0)
            cmd_arg(sub, dump, dump_len)
    cmd_start(sub, s.av.argc)
    for j in range(s.av.argc):
        staged = False
        for i in range(s.nkeys):
            if s.kpos[i] == j and s.kshard[i] != hs:
                snprintf(tmp, sizeof(tmp), SEQ_TMP, i)
                cmd_arg_str(sub, tmp)
                staged = True
                break
        if not staged:
            cmd_arg_av(sub, &s.av, j)
    cmd_start(sub, 1 + nremote)
    cmd_arg_str(sub, b"DEL")
    for i in range(s.nkeys):
        if s.kshard[i] != hs:
            snprintf(tmp, sizeof(tmp), SEQ_TMP, i)
            cmd_arg_str(sub, tmp)
    buf_append_str(sub, b"*1\r\n$4\r\nEXEC\r\n")
    s.step = nrestore           # where the command's own reply is in the EXEC reply
    seq_send(core, r, hs, nrestore + 3)


cdef void stage_answered(Core *core, Request *r, const char *reply, size_t n) noexcept nogil:
    cdef Sequence *s = r.seq
    cdef Buf *sub = &core.subcommand
    cdef const char *e
    cdef size_t elen
    cdef int i, src = 0
    cdef long long v
    cdef const char *dump
    cdef size_t dump_len
    cdef long long pttl
    if reply_is_error(reply):
        seq_finish(core, r, reply, n)       # nothing written yet, or the source left as it was
        return
    if s.phase == PH_FETCH:
        buf_append(&s.fetched[s.step], reply, n)
        s.step += 1
        stage_next(core, r)
        return
    if s.phase == PH_WRITE_BACK:
        seq_finish(core, r, buf_head(&s.result), buf_len(&s.result))
        return
    # PH_RUN: the EXEC reply; a refused RESTORE (a tmp name taken) is the answer.
    for i in range(s.step + 1):
        e = exec_element(reply, n, i, &elen)
        if e == NULL:
            seq_finish_str(core, r, b"-ERR unexpected reply from shard\r\n")
            return
        if i < s.step and reply_is_error(e):
            seq_finish(core, r, e, elen)
            return
    buf_append(&s.result, e, elen)
    buf_clear(sub)
    if s.writeback == WB_RENAME and ((elen >= 3 and memcmp(e, b"+OK", 3) == 0)
                                     or (frame_int(e, elen, &v) == 0 and v == 1)):
        if not stage_fetched(s, src, &dump, &dump_len, &pttl):
            seq_finish(core, r, e, elen)
            return
        cmd_start(sub, 5)
        cmd_arg_str(sub, b"EVAL")
        cmd_arg_str(sub, SEQ_DEL_IF_SAME)
        cmd_arg_str(sub, b"1")
        cmd_arg_av(sub, &s.av, s.kpos[src])
        cmd_arg(sub, dump, dump_len)
    elif s.writeback == WB_SMOVE and frame_int(e, elen, &v) == 0 and v == 1:
        cmd_start(sub, 3)
        cmd_arg_str(sub, b"SREM")
        cmd_arg_av(sub, &s.av, s.kpos[src])
        cmd_arg_av(sub, &s.av, s.av.argc - 1)
    elif s.writeback == WB_LMOVE and frame_bulk(e, elen, &dump, &dump_len) == 1:
        cmd_start(sub, 4)
        cmd_arg_str(sub, b"LREM")
        cmd_arg_av(sub, &s.av, s.kpos[src])
        # RPOPLPUSH takes from the right; LMOVE from its third argument's end.
        if s.av.argc > 3 and arg_is(&s.av, 3, b"left"):
            cmd_arg_str(sub, b"1")
        else:
            cmd_arg_str(sub, b"-1")
        cmd_arg(sub, dump, dump_len)
    elif s.blocking and frame_is_nil(e, elen):
        buf_clear(&s.result)
        buf_clear(&s.block_reply)
        block_wait(core, r)      # BLMOVE / BRPOPLPUSH: the source is empty (blocking_sequential.pxi)
        return
    else:
        seq_finish(core, r, buf_head(&s.result), buf_len(&s.result))
        return
    s.phase = PH_WRITE_BACK
    if core.seq_stop_before_write_back:
        kill(getpid(), SIGSTOP)     # the test hook: the destination is written, the source not yet changed
    seq_send(core, r, s.kshard[src], 0)


cdef void mpop_next(Core *core, Request *r) noexcept nogil:
    """LMPOP / ZMPOP on the next key: `LMPOP 1 <key> <the arguments after the keys>`."""
    cdef Sequence *s = r.seq
    cdef Buf *sub = &core.subcommand
    cdef int j, after = s.kpos[s.nkeys - 1] + 1
    buf_clear(sub)
    cmd_start(sub, 3 + s.av.argc - after)
    cmd_arg_av(sub, &s.av, 0)
    cmd_arg_str(sub, b"1")
    cmd_arg_av(sub, &s.av, s.kpos[s.step])
    for j in range(after, s.av.argc):
        cmd_arg_av(sub, &s.av, j)
    seq_send(core, r, s.kshard[s.step], 0)


cdef void mpop_answered(Core *core, Request *r, const char *reply, size_t n) noexcept nogil:
    cdef Sequence *s = r.seq
    s.step += 1
    if reply_is_error(reply) or not frame_is_nil(reply, n) or s.step == s.nkeys:
        seq_finish(core, r, reply, n)
        return
    mpop_next(core, r)


cdef void msetnx_group(Core *core, Request *r, int g, int mode) noexcept nogil:
    """One shard's keys: mode 0 EXISTS <keys>, 1 MSETNX <keys values>, 2 the undo script."""
    cdef Sequence *s = r.seq
    cdef Buf *sub = &core.subcommand
    cdef int i, nk = 0
    for i in range(s.nkeys):
        if s.kshard[i] == s.groups[g]:
            nk += 1
    buf_clear(sub)
    if mode == 0:
        cmd_start(sub, 1 + nk)
        cmd_arg_str(sub, b"EXISTS")
    elif mode == 1:
        cmd_start(sub, 1 + 2 * nk)
        cmd_arg_str(sub, b"MSETNX")
    else:
        cmd_start(sub, 3 + 2 * nk)
        cmd_arg_str(sub, b"EVAL")
        cmd_arg_str(sub, SEQ_UNSET_IF_SAME)
        cmd_arg_ll(sub, nk)
    for i in range(s.nkeys):
        if s.kshard[i] == s.groups[g]:
            cmd_arg_av(sub, &s.av, s.kpos[i])
            if mode == 1:
                cmd_arg_av(sub, &s.av, s.kpos[i] + 1)
    if mode == 2:
        for i in range(s.nkeys):
            if s.kshard[i] == s.groups[g]:
                cmd_arg_av(sub, &s.av, s.kpos[i] + 1)
    seq_send(core, r, s.groups[g], 0)


cdef void msetnx_next(Core *core, Request *r) noexcept nogil:
    msetnx_group(core, r, 0, 0)


cdef void msetnx_answered(Core *core, Request *r, const char *reply, size_t n) noexcept nogil:
    cdef Sequence *s = r.seq
    cdef long long v = 0
    if s.phase == PH_WRITE_BACK:
        # Undoing the groups set before a lost race (or a failed shard), last to first.
        s.step -= 1
        if s.step < 0:
            seq_finish(core, r, buf_head(&s.result), buf_len(&s.result))
        else:
            msetnx_group(core, r, s.step, 2)
        return
    if s.phase == PH_FETCH:
        if reply_is_error(reply) or frame_int(reply, n, &v) < 0:
            seq_finish(core, r, reply, n)
            return
        if v > 0:
            seq_finish_str(core, r, b":0\r\n")     # a key exists: none is set
            return
        s.step += 1
        if s.step < s.ngroups:
            msetnx_group(core, r, s.step, 0)
            return
        s.phase = PH_RUN
        s.step = 0
        msetnx_group(core, r, 0, 1)
        return
    # PH_RUN
    if not reply_is_error(reply) and frame_int(reply, n, &v) == 0 and v == 1:
        s.step += 1
        if s.step < s.ngroups:
            msetnx_group(core, r, s.step, 1)
        else:
            seq_finish_str(core, r, b":1\r\n")
        return
    if reply_is_error(reply):
        buf_append(&s.result, reply, n)
    else:
        buf_append_str(&s.result, b":0\r\n")      # lost a race with a writer of one key
    s.phase = PH_WRITE_BACK
    msetnx_answered(core, r, NULL, 0)
