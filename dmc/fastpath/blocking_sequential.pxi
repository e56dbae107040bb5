# The blocking pops and moves over keys of several shards (multi_slot_commands = sequential):
# BLPOP, BRPOP, BLMPOP, BZPOPMIN, BZPOPMAX, BZMPOP with keys on several shards, BLMOVE and
# BRPOPLPUSH with source and destination on different shards; and XREAD over streams of
# several shards (at the end of this file). Entered from route_blocking only
# where it would answer CROSSSLOT, so a blocking command whose keys share a shard never meets
# this file (it keeps its one connection of the client's own, blocking.pxi).
#
# Served once, from the first key in argument order that has an element; an element is never
# popped twice, nor lost when several shards become ready together. Steps (each one command,
# or one MULTI ... EXEC, on one shard):
#
# 1. Try (PH_FETCH), under the sequence's slot locks (sequential.pxi):
#    pops: each key in argument order, on its shard, `MULTI; <the command with that key
#      alone>; EXEC` (a blocking command inside MULTI does not block: it answers at once, in
#      its own shape, as Redis answers the blocking command when a key has an element). The
#      first reply that is not nil (an element, or an error such as WRONGTYPE or a bad
#      timeout) is the answer, as one Redis checks the keys in order.
#    BLMOVE / BRPOPLPUSH: the LMOVE sequence of sequential.pxi (SEQ_STAGE, WB_LMOVE): the
#      source copied to the destination's shard and moved there inside one transaction, then
#      one occurrence removed from the source's end (LREM): copy first, remove after.
# 2. Wait (PH_BLOCK), slot locks released (a sequential command that would fill the keys must
#    not wait behind the waiter): on every key's shard at once, a connection of the client's
#    own per key (ROLE_WAITER: its CLIENT ID first, for CLIENT UNBLOCK), with the client's
#    remaining timeout:
#    lists (BLPOP, BRPOP, BLMPOP; BLMOVE's source): `BLMOVE key key LEFT LEFT <t>`, which
#      blocks until the key has an element and then leaves it as it was (popped and pushed
#      back at the same end in one step): a wait that sees an element takes nothing.
#    zsets (BZPOPMIN, BZPOPMAX, BZMPOP): `<the command with that key alone> <t>`: there is no
#      zset command that waits without popping. The first element popped is the answer; one
#      popped by another shard before its CLIENT UNBLOCK came is pushed back (`ZADD key NX
#      score member ...`: a member written again meanwhile keeps its newer score).
#    When a wait answers with an element, the others are ended with CLIENT UNBLOCK <id>
#    TIMEOUT (on a shared connection of the proxy's). Once every wait has answered: a zset
#    element is the answer; a list wait that saw an element starts the try again (1: the
#    element may be taken by someone else first, then the client waits again with what is
#    left of its timeout); else the client gets the first error (CLIENT UNBLOCK ... ERROR's
#    UNBLOCKED, a shard lost) or the shards' own nil (its timeout).
#
# What a concurrent client may see: a list wait's `BLMOVE key key` (the keyspace events lpop
# and lpush on the key, replicated; the list's content and order unchanged); a zset element
# popped by a second shard missing until its push-back, a round trip later. Between the try of
# two keys an element may arrive in an earlier key (it is served from the later one; one Redis
# would have served from whichever was filled before the command). Clients blocked on one key
# through the proxy and directly: Redis serves the first blocked; a list wait that loses it
# waits again.
#
# What a failure leaves: a list wait never holds an element, so the proxy or a shard dying
# during one loses nothing; a try is one atomic pop on one shard, answered to the client (as
# for a single-shard command, a client gone before the answer arrives loses it, as with one
# Redis). BLMOVE's try is sequential.pxi's LMOVE: dying between its steps leaves the element
# in the destination and still in the source (a duplicate, never a loss). The one window: a
# zset element popped by a second shard and not yet pushed back when the proxy dies (or the
# client disconnects, closing the waits) is lost, as a single-shard BZPOPMIN's element is when
# the proxy dies after the shard popped it and before the client read it. A client that leaves
# while it waits: its zset elements already read from a shard are pushed back too.
#
# Costs and limits: a connection per key while waiting (BLPOP of 100 keys of several shards
# opens 100); a client of an ACL user waits as that user, so its list waits need +blmove and
# its waits +client|id (else CLIENT UNBLOCK cannot reach them and they end by their timeout);
# a key made another type between its try and its wait ends the wait with WRONGTYPE (Redis,
# which checked the keys when the command came, keeps waiting).
#
# Serialization: the try runs under the slot locks, so two such commands of one proxy on the
# same keys try one after the other; their waits run side by side, and each wake-up tries
# again under the locks: one of them gets the element, the other waits again.


cdef const char *BLOCK_LIST_WAIT = b"BLMOVE"      # BLMOVE key key LEFT LEFT <t>: waits, takes nothing


cdef bint block_begin(Core *core, Client *c, Request *r, ArgVec *av, KeyList *kl) noexcept nogil:
    """route_blocking, keys on several shards, multi_slot_commands = sequential: True when
    carried out here (r is then answered, now or later)."""
    cdef CommandInfo *cmd = r.cmd
    cdef Sequence *s
    cdef int kind = SEQ_BLOCK, writeback = WB_NONE, home = HOME_FIRST
    cdef bint zset = False, mpop = False, stream = False
    cdef double timeout
    cdef char *endp
    cdef char tmp[64]
    if cmd == NULL:
        return False
    if cmd_name_is(cmd, b"blmove") or cmd_name_is(cmd, b"brpoplpush"):
        kind = SEQ_STAGE
        writeback = WB_LMOVE
        home = HOME_SECOND
    elif cmd_name_is(cmd, b"bzpopmin") or cmd_name_is(cmd, b"bzpopmax"):
        zset = True
    elif cmd_name_is(cmd, b"bzmpop"):
        zset = mpop = True
    elif cmd_name_is(cmd, b"blmpop"):
        mpop = True
    elif cmd_name_is(cmd, b"xread"):
        stream = True
    elif not (cmd_name_is(cmd, b"blpop") or cmd_name_is(cmd, b"brpop")):
        return False        # XREADGROUP (it consumes: no wait could give back): CROSSSLOT
    if core.seq_locks == NULL:
        core.seq_locks = <unsigned char *>calloc(SLOT_COUNT, 1)
        if core.seq_locks == NULL:
            req_write_str(core, r, b"-ERR out of memory\r\n")
            return True
    if not arity_ok(cmd, av.argc):
        r.pending = 1       # the shard answers Redis's own arity error
        frag_send(core, core.key_shard[0], &r.frag0, av.wire, av.wire_len)
        return True
    if stream:
        return stream_begin(core, c, r, av, kl)
    s = seq_new(core, kind, writeback, home, av.wire, av.wire_len, kl.pos, kl.n)
    if s != NULL:
        s.blocking = True
        s.zset = zset
        s.timeout_arg = 1 if mpop else s.av.argc - 1
        # A timeout the shards refuse is refused by the try (step 1) with Redis's error; one
        # they accept is the client's deadline.
        if s.av.argl[s.timeout_arg] < sizeof(tmp):
            memcpy(tmp, s.av.argv[s.timeout_arg], s.av.argl[s.timeout_arg])
            tmp[s.av.argl[s.timeout_arg]] = 0
            timeout = strtod(tmp, &endp)
            if timeout > 0 and timeout < 1e12:      # (longer: as good as forever)
                s.deadline_us = core.now_us + <long long>(timeout * 1e6)
    return seq_take(core, c, r, s)


cdef void block_key_command(Buf *sub, Sequence *s, int i, const char *timeout, size_t tlen) noexcept nogil:
    """The client's command with key i alone (`BLPOP key t`, `BLMPOP t 1 key <rest>`); the
    client's timeout when `timeout` is NULL."""
    cdef int j, k = s.kpos[i], after = s.kpos[s.nkeys - 1] + 1
    if timeout == NULL:
        timeout = s.av.argv[s.timeout_arg]
        tlen = s.av.argl[s.timeout_arg]
    if s.timeout_arg == 1:
        cmd_start(sub, 4 + s.av.argc - after)
        cmd_arg_av(sub, &s.av, 0)
        cmd_arg(sub, timeout, tlen)
        cmd_arg_str(sub, b"1")
        cmd_arg_av(sub, &s.av, k)
        for j in range(after, s.av.argc):
            cmd_arg_av(sub, &s.av, j)
    else:
        cmd_start(sub, 3)
        cmd_arg_av(sub, &s.av, 0)
        cmd_arg_av(sub, &s.av, k)
        cmd_arg(sub, timeout, tlen)


cdef void block_next(Core *core, Request *r) noexcept nogil:
    """The try of the next key, in argument order (PH_FETCH)."""
    cdef Sequence *s = r.seq
    cdef Buf *sub = &core.subcommand
    if s.stream:
        buf_clear(sub)
        stream_group_command(sub, s, s.step, NULL, 0)
        seq_send(core, r, s.groups[s.step], 0)
        return
    buf_clear(sub)
    buf_append_str(sub, b"*1\r\n$5\r\nMULTI\r\n")
    block_key_command(sub, s, s.step, NULL, 0)
    buf_append_str(sub, b"*1\r\n$4\r\nEXEC\r\n")
    seq_send(core, r, s.kshard[s.step], 2)


cdef void block_tried(Core *core, Request *r, const char *reply, size_t n) noexcept nogil:
    """A try's EXEC reply: the answer when it is not nil, else the next key, else the wait."""
    cdef Sequence *s = r.seq
    cdef const char *e
    cdef size_t elen
    if reply_is_error(reply):
        seq_finish(core, r, reply, n)
        return
    if s.stream:
        stream_tried(core, r, reply, n)
        return
    e = exec_element(reply, n, 0, &elen)
    if e == NULL:
        seq_finish_str(core, r, b"-ERR unexpected reply from shard\r\n")
        return
    if not frame_is_nil(e, elen):
        seq_finish(core, r, e, elen)
        return
    s.step += 1
    if s.step < s.nkeys:
        block_next(core, r)
        return
    buf_clear(&s.block_reply)      # the timeout's reply: a null array
    block_wait(core, r)


cdef void block_wait(Core *core, Request *r) noexcept nogil:
    """Every key empty (the last try's nil in s.block_reply): wait on each key's shard at once
    with what is left of the client's timeout (PH_BLOCK), the slot locks released."""
    cdef Sequence *s = r.seq
    cdef Client *c = r.client
    cdef Buf *sub = &core.subcommand
    cdef char timeout[32]
    cdef size_t tlen
    cdef long long left
    cdef int i, nwaits = 1 if s.kind == SEQ_STAGE else (s.ngroups if s.stream else s.nkeys)
    cdef Backend *b
    if buf_len(&s.block_reply) == 0:
        buf_append_str(&s.block_reply, b"_\r\n" if c != NULL and c.proto == 3 else b"*-1\r\n")
    if c == NULL or c.flags & CF_CLOSED:
        seq_finish(core, r, buf_head(&s.block_reply), buf_len(&s.block_reply))
        return
    if s.deadline_us > 0:
        left = s.deadline_us - core.now_us
        if left <= 0:
            seq_finish(core, r, buf_head(&s.block_reply), buf_len(&s.block_reply))
            return
        if s.stream:        # XREAD's BLOCK is in milliseconds
            tlen = <size_t>snprintf(timeout, sizeof(timeout), b"%lld", max(1, left // 1000))
        else:
            tlen = <size_t>snprintf(timeout, sizeof(timeout), b"%lld.%06lld", left // 1000000, left % 1000000)
    else:
        tlen = 1
        timeout[0] = c'0'
    seq_unlock(core, s)
    if nwaits > 1 and r.frags == &r.frag0 and req_fragment(r, nwaits) < 0:
        seq_finish_str(core, r, b"-ERR out of memory\r\n")
        return
    s.phase = PH_BLOCK
    s.woken = False
    buf_clear(&s.block_error)
    r.pending = nwaits
    r.blocking = True
    c.flags |= CF_BLOCKED
    for i in range(nwaits):
        r.frags[i].skip = 0
        buf_clear(sub)
        if s.stream:
            stream_group_command(sub, s, i, timeout, tlen)
        elif s.zset:
            block_key_command(sub, s, i, timeout, tlen)
        else:
            cmd_start(sub, 6)
            cmd_arg_str(sub, BLOCK_LIST_WAIT)
            cmd_arg_av(sub, &s.av, s.kpos[i])
            cmd_arg_av(sub, &s.av, s.kpos[i])
            cmd_arg_str(sub, b"LEFT")
            cmd_arg_str(sub, b"LEFT")
            cmd_arg(sub, timeout, tlen)
        b = backend_new(s.groups[i] if s.stream else s.kshard[i], c, c.proto, ROLE_WAITER)
        if b == NULL:
            frag_answered(core, &r.frags[i], b"-ERR out of memory\r\n", 20)
            continue
        b.user = c.user         # waits as the client's ACL user
        b.next_waiter = c.waiters
        c.waiters = b
        backend_connect(core, b)
        buf_append_str(&b.wbuf, b"*2\r\n$6\r\nCLIENT\r\n$2\r\nID\r\n")
        b.wants_id = True
        frag_send_on(core, b, &r.frags[i], buf_head(sub), buf_len(sub))
    if core.seq_waiting != NULL:
        seq_wake(core)          # the sequences that waited for its slots


cdef const char *next_scalar(const char *p, const char *end, const char **data, size_t *n) noexcept nogil:
    """A bulk string, or a RESP3 double / integer / simple string, at p: its text in data/n;
    returns where the next element starts (NULL: none of those)."""
    cdef const char *eol
    if p >= end:
        return NULL
    if p[0] == c'$':
        return next_bulk(p, end, data, n)
    eol = <const char *>memchr(p, c'\n', end - p)
    if eol == NULL or (p[0] != c',' and p[0] != c':' and p[0] != c'+'):
        return NULL
    data[0] = p + 1
    n[0] = <size_t>(eol - 1 - (p + 1))
    return eol + 1


cdef void block_push_back(Core *core, const char *reply, size_t n) noexcept nogil:
    """A zset element a wait popped that is not the answer, back where it came from:
    `ZADD key NX score member ...` from BZPOPMIN's `key member score` or BZMPOP's `key
    [[member score] ...]`, on the key's shard."""
    cdef Buf *sub = &core.subcommand
    cdef const char *end = reply + n
    cdef const char *body
    cdef const char *pair
    cdef const char *key
    cdef const char *member
    cdef const char *score
    cdef size_t klen, mlen, slen
    cdef long long count, npairs, i
    cdef Buf args
    count = array_header(reply, n, &body)
    if count < 2:
        return
    body = next_bulk(body, end, &key, &klen)
    if body == NULL:
        return
    memset(&args, 0, sizeof(Buf))
    npairs = 0
    if count == 3:          # BZPOPMIN / BZPOPMAX: key member score
        body = next_bulk(body, end, &member, &mlen)
        if body != NULL and next_scalar(body, end, &score, &slen) != NULL:
            cmd_arg(&args, score, slen)
            cmd_arg(&args, member, mlen)
            npairs = 1
    else:                   # BZMPOP: key, then its [member score] pairs
        count = array_header(body, end - body, &body)
        for i in range(count):
            if array_header(body, end - body, &pair) != 2:
                break
            pair = next_bulk(pair, end, &member, &mlen)
            if pair == NULL:
                break
            body = next_scalar(pair, end, &score, &slen)
            if body == NULL:
                break
            cmd_arg(&args, score, slen)
            cmd_arg(&args, member, mlen)
            npairs += 1
    if npairs > 0:
        buf_clear(sub)
        cmd_start(sub, 3 + 2 * npairs)
        cmd_arg_str(sub, b"ZADD")
        cmd_arg(sub, key, klen)
        cmd_arg_str(sub, b"NX")
        buf_append(sub, buf_head(&args), buf_len(&args))
        req_send_unanswered(core, shard_backend(core, core.slot_map[key_slot(key, klen)], 2),
                            buf_head(sub), buf_len(sub))
    buf_free(&args)


cdef void block_answered(Core *core, Request *r, const char *reply, size_t n) noexcept nogil:
    """One wait's reply (PH_BLOCK); once every wait is in: the answer, or the try again."""
    cdef Sequence *s = r.seq
    cdef Client *c = r.client
    cdef Backend *b
    cdef bint element = not reply_is_error(reply) and not frame_is_nil(reply, n)
    if element and s.stream:
        if buf_len(&s.result) == 0:
            buf_append(&s.result, reply, n)     # (XREAD consumes nothing: the others' are dropped)
    elif element and s.zset and (buf_len(&s.result) > 0 or c == NULL):
        block_push_back(core, reply, n)         # another shard's element came first, or nobody waits
    elif element and s.zset:
        buf_append(&s.result, reply, n)
    elif element:
        s.woken = True
    elif reply_is_error(reply):
        if buf_len(&s.block_error) == 0:
            buf_append(&s.block_error, reply, n)
    else:
        buf_clear(&s.block_reply)
        buf_append(&s.block_reply, reply, n)
    if (element or reply_is_error(reply)) and c != NULL and r.pending > 0:
        # The other waits end (their shards answer nil, or an element popped meanwhile).
        b = c.waiters
        while b != NULL:
            if b.qhead != NULL:
                waiter_unblock(core, b, False)
            b = b.next_waiter
    if r.pending > 0:
        return
    if c != NULL:
        waiters_close(core, c)      # (`reply` is not used below: it may be in one's buffer)
    elif buf_len(&s.result) > 0 and s.zset:
        block_push_back(core, buf_head(&s.result), buf_len(&s.result))     # its client left
    if buf_len(&s.result) > 0:
        seq_finish(core, r, buf_head(&s.result), buf_len(&s.result))
    elif buf_len(&s.block_error) > 0:
        seq_finish(core, r, buf_head(&s.block_error), buf_len(&s.block_error))
    elif s.woken and c != NULL:
        block_restart(core, r)
    else:
        seq_finish(core, r, buf_head(&s.block_reply), buf_len(&s.block_reply))


cdef void block_restart(Core *core, Request *r) noexcept nogil:
    """A list wait saw an element: the try again, from the first key, under the slot locks."""
    cdef Sequence *s = r.seq
    cdef int i
    s.phase = PH_FETCH
    s.step = 0
    buf_clear(&s.result)
    for i in range(s.nkeys):
        buf_clear(&s.fetched[i])
    seq_start(core, r)


# ---- XREAD over streams of several shards ---------------------------------------------------
# Nothing is consumed, so nothing is given back: the try is one XREAD (without BLOCK) per shard
# of the streams, the replies merged in argument order (RESP2: [[key, entries] ...], RESP3: a
# map), nil when no stream has entries; with BLOCK, then one `XREAD ... BLOCK <ms left>` per
# shard at once, the first that answers entries is the answer (one stream, as Redis answers a
# woken XREAD), the others ended with CLIENT UNBLOCK and what they answered dropped. An ID `$`
# is resolved by each shard when its wait arrives, a round trip after the command: an entry
# added within that round trip is not returned (it stays in the stream; Redis would return it).


cdef bint stream_begin(Core *core, Client *c, Request *r, ArgVec *av, KeyList *kl) noexcept nogil:
    """XREAD [COUNT n] [BLOCK ms] STREAMS key... id... with streams on several shards."""
    cdef Sequence *s
    cdef int j
    cdef long long ms = -1
    if kl.n == 0 or kl.pos[kl.n - 1] + kl.n >= av.argc or kl.pos[0] < 2:
        return False
    for j in range(1, kl.pos[0] - 1):
        if arg_is(av, j, b"block") and j + 1 < kl.pos[0] - 1:
            if parse_ll(av.argv[j + 1], av.argl[j + 1], &ms) < 0 or ms < 0:
                ms = -2         # the shard answers Redis's error (and for unbalanced streams)
    if ms == -2 or (av.argc - kl.pos[0]) % 2 != 0:
        r.pending = 1
        frag_send(core, core.key_shard[0], &r.frag0, av.wire, av.wire_len)
        return True
    s = seq_new(core, SEQ_BLOCK, WB_NONE, HOME_FIRST, av.wire, av.wire_len, kl.pos, kl.n)
    if s != NULL:
        s.stream = True
        s.blocking = ms >= 0
        if ms > 0:
            s.deadline_us = core.now_us + ms * 1000
    return seq_take(core, c, r, s)


cdef void stream_group_command(Buf *sub, Sequence *s, int g, const char *block, size_t blen) noexcept nogil:
    """XREAD with the options before STREAMS (BLOCK dropped; `BLOCK block` when given), and
    the streams of shard group g with their IDs."""
    cdef int i, j, nk = 0, nopts = 0, streams = s.kpos[0] - 1
    for i in range(s.nkeys):
        if s.kshard[i] == s.groups[g]:
            nk += 1
    j = 1
    while j < streams:
        if arg_is(&s.av, j, b"block"):
            j += 2
            continue
        nopts += 1
        j += 1
    cmd_start(sub, 2 + nopts + (2 if block != NULL else 0) + 2 * nk)
    cmd_arg_av(sub, &s.av, 0)
    j = 1
    while j < streams:
        if arg_is(&s.av, j, b"block"):
            j += 2
            continue
        cmd_arg_av(sub, &s.av, j)
        j += 1
    if block != NULL:
        cmd_arg_str(sub, b"BLOCK")
        cmd_arg(sub, block, blen)
    cmd_arg_av(sub, &s.av, streams)
    for i in range(s.nkeys):
        if s.kshard[i] == s.groups[g]:
            cmd_arg_av(sub, &s.av, s.kpos[i])
    for i in range(s.nkeys):
        if s.kshard[i] == s.groups[g]:
            cmd_arg_av(sub, &s.av, s.kpos[i] + s.nkeys)


cdef const char *stream_entries(Buf *reply, const char *key, size_t klen, size_t *len) noexcept nogil:
    """In one shard's XREAD reply, the entries frame of stream `key` (NULL: not there)."""
    cdef const char *p = buf_head(reply)
    cdef const char *end = p + buf_len(reply)
    cdef const char *body
    cdef const char *name
    cdef size_t nlen, need
    cdef int push
    cdef ssize_t flen
    cdef long long count, i
    cdef bint as_map = buf_len(reply) > 0 and p[0] == c'%'
    if as_map:
        if parse_ll(p + 1, <const char *>memchr(p, c'\n', end - p) - p - 2, &count) < 0:
            return NULL
        body = <const char *>memchr(p, c'\n', end - p) + 1
    else:
        count = array_header(p, end - p, &body)
    for i in range(count):
        if not as_map:
            if array_header(body, end - body, &body) != 2:
                return NULL
        body = next_bulk(body, end, &name, &nlen)
        if body == NULL:
            return NULL
        flen = reply_frame(body, end - body, &need, &push)
        if flen <= 0:
            return NULL
        if nlen == klen and memcmp(name, key, klen) == 0:
            len[0] = <size_t>flen
            return body
        body += flen
    return NULL


cdef void stream_tried(Core *core, Request *r, const char *reply, size_t n) noexcept nogil:
    """One shard's XREAD (without BLOCK) is in; once every shard's is: the merged answer, or
    the wait (BLOCK), or nil."""
    cdef Sequence *s = r.seq
    cdef Buf *out = &s.result
    cdef const char *e
    cdef size_t elen
    cdef int i, g, found = 0
    cdef bint resp3 = r.client != NULL and r.client.proto == 3
    buf_append(&s.fetched[s.step], reply, n)
    s.step += 1
    if s.step < s.ngroups:
        block_next(core, r)
        return
    buf_clear(out)
    for i in range(s.nkeys):
        for g in range(s.ngroups):
            if s.groups[g] == s.kshard[i]:
                break
        if stream_entries(&s.fetched[g], s.av.argv[s.kpos[i]], s.av.argl[s.kpos[i]], &elen) != NULL:
            found += 1
    if found == 0:
        buf_clear(&s.block_reply)
        if s.blocking:
            block_wait(core, r)
        else:
            seq_finish_str(core, r, b"_\r\n" if resp3 else b"*-1\r\n")
        return
    buf_append_int(out, c'%' if resp3 else c'*', found)
    for i in range(s.nkeys):
        for g in range(s.ngroups):
            if s.groups[g] == s.kshard[i]:
                break
        e = stream_entries(&s.fetched[g], s.av.argv[s.kpos[i]], s.av.argl[s.kpos[i]], &elen)
        if e != NULL:
            if not resp3:
                buf_append_str(out, b"*2\r\n")
            cmd_arg_av(out, &s.av, s.kpos[i])
            buf_append(out, e, elen)
    seq_finish(core, r, buf_head(out), buf_len(out))
