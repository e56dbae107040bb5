# Client-side caching: CLIENT TRACKING / CACHING / GETREDIR / TRACKINGINFO, as Redis 7.0 does
# them, for a database whose keys live on several shards.
#
# Design. Each shard tracks the keys read through it and the proxy maps what a shard
# invalidates back to its own clients:
#
# - Tracked connections. A tracking client's requests (default, OPTIN and OPTOUT modes) go to
#   connections of their own, per shard: `tracked[1]` (RESP3) runs `CLIENT TRACKING on` and so
#   receives the shard's invalidations in band, as `>2 invalidate [keys]` pushes; `tracked[0]`
#   (RESP2, for RESP2 clients) runs `CLIENT TRACKING on REDIRECT <tracked[1]'s id>`, so its
#   invalidations arrive on tracked[1] as well. No subscription, no extra connection: the
#   RESP3 connection is the sink. Clients that do not track never use these connections, so
#   the shards remember nothing for them, and their requests pay one flag test (frag_send).
# - The proxy's table (Tracking.keys): key -> the clients that read it since its last
#   invalidation, filled when a read of a tracking client is routed (its keys from the command
#   table's key specs; OPTIN: only after CLIENT CACHING yes; OPTOUT: unless CACHING no), in C.
#   A shard's invalidation of a key removes the entry and tells each client in it. A shard may
#   track more than the proxy asks for (OPTIN reads, say): those invalidations find no entry.
#   Bounded: past `max_keys` keys, random entries are evicted with an invalidation, as Redis's
#   tracking-table-max-keys.
# - Order. A client's read is remembered when it is sent, so an invalidation that overtakes the
#   read's reply (it comes on another connection) still finds it; the push is then written
#   after the replies of the requests the client has in flight (client_push), so a client never
#   caches a value after the invalidation that made it stale.
# - BCAST: one RESP3 connection per shard (`bcast`) with `CLIENT TRACKING on BCAST` and no
#   prefix, open while some client is in BCAST mode: it is told of every key written on its
#   shard, and the proxy matches the clients' prefixes (one push per prefix, as Redis batches).
# - NOLOOP: the proxy knows which client writes a key. Default mode: a NOLOOP client's write
#   takes it out of the key's entry before the shard's invalidation comes; BCAST: the write is
#   remembered (Tracking.written) and left out of that client's broadcast.
# - REDIRECT <id>: a proxy client id. The push goes to that client: RESP3 as `>2 invalidate`,
#   RESP2 (subscribed) as a `message` on `__redis__:invalidate`; a target that went away gives
#   the tracking client a `tracking-redir-broken` push (RESP3), as Redis. A client of another
#   worker (worker threads) is told through that worker's mail (workers.pxi).
# - FLUSHALL / FLUSHDB: every shard sends a null invalidation on each tracked connection; the
#   first one announces `invalidate` null to every tracking client, the others of the same
#   flush (counted per shard, for a second) are dropped: one per flush, as on one Redis.
# - Losing a tracked connection (or a map change, which moves keys between shards) loses what
#   the shard remembered: every tracking client is sent a null invalidation (flush its cache).
#
# Not covered: reads on a client's own connections (under WATCH, blocking commands) are not
# tracked by the shard; an invalidation caused by the read itself (eviction, lazy expiry) comes
# after the read's reply, where Redis writes it before; a blocked client gets its pushes when it
# is unblocked.


cdef const char *INVALIDATE_PUSH = b">2\r\n$10\r\ninvalidate\r\n"
cdef const char *INVALIDATE_MESSAGE = b"*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n"
cdef const char *TRACKING_ON = b"*3\r\n$6\r\nCLIENT\r\n$8\r\nTRACKING\r\n$2\r\non\r\n"
cdef const char *TRACKING_BCAST = b"*4\r\n$6\r\nCLIENT\r\n$8\r\nTRACKING\r\n$2\r\non\r\n$5\r\nBCAST\r\n"
cdef const char *ASK_CLIENT_ID = b"*2\r\n$6\r\nCLIENT\r\n$2\r\nID\r\n"
cdef enum:
    INVALIDATE_PUSH_LEN = 21


# ---- the table -------------------------------------------------------------------------------

cdef inline unsigned long long track_hash(const char *p, size_t n) noexcept nogil:
    cdef unsigned long long h = 14695981039346656037ULL
    cdef size_t i
    for i in range(n):
        h = (h ^ <unsigned char>p[i]) * 1099511628211ULL
    return h


cdef TrackEntry **table_slot(TrackTable *t, const char *key, size_t n, unsigned long long h) noexcept nogil:
    """Where the key's entry is linked (its bucket's head or a `next`), or NULL (empty table)."""
    cdef TrackEntry **at
    if t.nbuckets == 0:
        return NULL
    at = &t.buckets[h & (t.nbuckets - 1)]
    while at[0] != NULL:
        if at[0].hash == h and at[0].keylen == n and memcmp(at[0].key, key, n) == 0:
            return at
        at = &at[0].next
    return at


cdef int table_grow(TrackTable *t) noexcept nogil:
    cdef size_t nb = t.nbuckets * 2 if t.nbuckets else 256, i
    cdef TrackEntry **nbk = <TrackEntry **>calloc(nb, sizeof(TrackEntry *))
    cdef TrackEntry *e
    cdef TrackEntry *nxt
    if nbk == NULL:
        return -1
    for i in range(t.nbuckets):
        e = t.buckets[i]
        while e != NULL:
            nxt = e.next
            e.next = nbk[e.hash & (nb - 1)]
            nbk[e.hash & (nb - 1)] = e
            e = nxt
    free(t.buckets)
    t.buckets = nbk
    t.nbuckets = nb
    return 0


cdef TrackEntry *table_get(TrackTable *t, const char *key, size_t n) noexcept nogil:
    """The key's entry, made when missing. NULL when out of memory."""
    cdef unsigned long long h = track_hash(key, n)
    cdef TrackEntry **at
    cdef TrackEntry *e
    if t.count >= t.nbuckets and table_grow(t) < 0 and t.nbuckets == 0:
        return NULL
    at = table_slot(t, key, n, h)
    if at[0] != NULL:
        return at[0]
    e = <TrackEntry *>calloc(1, sizeof(TrackEntry) + n)
    if e == NULL:
        return NULL
    e.hash = h
    e.keylen = n
    e.key = <char *>(e + 1)
    memcpy(e.key, key, n)
    at[0] = e
    t.count += 1
    return e


cdef TrackEntry *table_take(TrackTable *t, const char *key, size_t n) noexcept nogil:
    """The key's entry, unlinked (the caller frees it with entry_free), or NULL."""
    cdef TrackEntry **at = table_slot(t, key, n, track_hash(key, n))
    cdef TrackEntry *e
    if at == NULL or at[0] == NULL:
        return NULL
    e = at[0]
    at[0] = e.next
    e.next = NULL
    t.count -= 1
    return e


cdef inline void entry_free(TrackEntry *e) noexcept nogil:
    free(e.refs)
    free(e)


cdef void table_clear(TrackTable *t) noexcept nogil:
    cdef size_t i
    cdef TrackEntry *e
    cdef TrackEntry *nxt
    for i in range(t.nbuckets):
        e = t.buckets[i]
        while e != NULL:
            nxt = e.next
            entry_free(e)
            e = nxt
    free(t.buckets)
    t.buckets = NULL
    t.nbuckets = 0
    t.count = 0


cdef bint entry_has(TrackEntry *e, Client *c) noexcept nogil:
    cdef int i
    for i in range(e.nrefs):
        if e.refs[i].id == c.id:
            return True
    return False


cdef int entry_add(TrackEntry *e, Client *c) noexcept nogil:
    cdef TrackRef *refs
    cdef int cap
    if entry_has(e, c):
        return 0
    if e.nrefs == e.cap:
        cap = e.cap * 2 if e.cap else 2
        refs = <TrackRef *>realloc(e.refs, cap * sizeof(TrackRef))
        if refs == NULL:
            return -1
        e.refs = refs
        e.cap = cap
    e.refs[e.nrefs].id = c.id
    e.refs[e.nrefs].slot = c.track_slot
    e.nrefs += 1
    return 0


cdef void entry_drop(TrackEntry *e, Client *c) noexcept nogil:
    cdef int i
    for i in range(e.nrefs):
        if e.refs[i].id == c.id:
            e.refs[i] = e.refs[e.nrefs - 1]
            e.nrefs -= 1
            return


# ---- clients: the registry, and what they are sent -------------------------------------------

cdef Tracking *tracking_get(Core *core) noexcept nogil:
    cdef Tracking *tr = core.tracking
    if tr == NULL:
        tr = <Tracking *>calloc(1, sizeof(Tracking))
        if tr == NULL:
            return NULL
        argvec_init(&tr.av)
        tr.max_keys = core.tracking_max_keys if core.tracking_max_keys > 0 else TRACKING_MAX_KEYS
        core.tracking = tr
    return tr


cdef void tracking_free(Core *core) noexcept nogil:
    cdef Tracking *tr = core.tracking
    if tr == NULL:
        return
    table_clear(&tr.keys)
    table_clear(&tr.written)
    free(tr.reg)
    free(tr.reg_free)
    argvec_free(&tr.av)
    buf_free(&tr.frame)
    free(tr)
    core.tracking = NULL


cdef int track_register(Core *core, Tracking *tr, Client *c) noexcept nogil:
    """Give c a registry slot (once): how the table and REDIRECTs find it in O(1)."""
    cdef int slot, cap
    cdef Client **reg
    cdef int *fr
    if c.track_slot:
        return 0
    if tr.reg_nfree > 0:
        tr.reg_nfree -= 1
        slot = tr.reg_free[tr.reg_nfree]
    else:
        if tr.reg_top + 1 >= tr.reg_cap:
            cap = tr.reg_cap * 2 if tr.reg_cap else 64
            reg = <Client **>realloc(tr.reg, cap * sizeof(Client *))
            if reg == NULL:
                return -1
            tr.reg = reg
            fr = <int *>realloc(tr.reg_free, cap * sizeof(int))
            if fr == NULL:
                return -1
            tr.reg_free = fr
            tr.reg_cap = cap
        tr.reg_top += 1
        slot = tr.reg_top
    tr.reg[slot] = c
    c.track_slot = slot
    return 0


cdef inline Client *track_client(Tracking *tr, int slot, unsigned long long id) noexcept nogil:
    cdef Client *c
    if slot <= 0 or slot > tr.reg_top:
        return NULL
    c = tr.reg[slot]
    if c == NULL or c.id != id or c.flags & CF_CLOSED:
        return NULL
    return c


cdef void tracking_client_closed(Core *core, Client *c) noexcept nogil:
    cdef Tracking *tr = core.tracking
    tracking_off(core, c)
    if tr != NULL and c.track_slot:
        tr.reg[c.track_slot] = NULL
        tr.reg_free[tr.reg_nfree] = c.track_slot
        tr.reg_nfree += 1
    c.track_slot = 0


cdef void client_push(Core *core, Client *c, const char *p, size_t n) noexcept nogil:
    """Out-of-band bytes for c, written after the replies of the requests it has in flight."""
    cdef Request *r
    if c.flags & CF_CLOSED:
        return
    if c.head == NULL:
        if buf_append(&c.wbuf, p, n) < 0 or over_output_limit(core, c):
            client_close(core, c)
            return
        client_mark_dirty(core, c)
        return
    r = req_get(core, c, NULL)
    if r == NULL or buf_append(&r.reply, p, n) < 0:
        client_close(core, c)
        return
    r.done = True
    c.held += n
    if over_output_limit(core, c):
        client_close(core, c)


cdef void tracking_send(Core *core, Client *t, const char *payload, size_t n) noexcept nogil:
    """Tell tracking client t of an invalidation: payload is the value part (`*N` keys, or a
    null), sent to t itself or to its REDIRECT client, in the frame Redis uses."""
    cdef Tracking *tr = core.tracking
    cdef Client *target = t
    cdef Buf *out = &tr.frame
    buf_clear(out)
    if t.track_redirect and core.workers != NULL and worker_of(core, t.track_redirect) != core.worker:
        # A client of another worker's: that worker frames it (workers.pxi's mail).
        worker_mail(core, worker_of(core, t.track_redirect), MAIL_INVALIDATE, t.track_redirect,
                    t.id, payload, n)
        return
    if t.track_redirect:
        target = track_client(tr, t.track_redirect_slot, t.track_redirect)
        if target == NULL:
            tracking_redirect_broken(core, t, t.track_redirect)
            return
    tracking_deliver(core, target, target != t, payload, n)


cdef void tracking_deliver(Core *core, Client *target, bint redirected, const char *payload,
                           size_t n) noexcept nogil:
    """An invalidation (payload: its value part) to target, in the frame Redis uses for it."""
    cdef Tracking *tr = tracking_get(core)
    cdef Buf *out
    if tr == NULL:
        return
    out = &tr.frame
    buf_clear(out)
    if target.proto == 3:
        buf_append_str(out, INVALIDATE_PUSH)
    elif redirected and target.flags & CF_PUBSUB:
        buf_append_str(out, INVALIDATE_MESSAGE)
    else:
        return          # RESP2 without a subscribed REDIRECT client: nowhere to say it
    buf_append(out, payload, n)
    client_push(core, target, buf_head(out), buf_len(out))


cdef void tracking_redirect_broken(Core *core, Client *t, unsigned long long redirect) noexcept nogil:
    """t's REDIRECT client went away: as Redis, t is told once (RESP3) and TRACKINGINFO shows it."""
    cdef Tracking *tr = tracking_get(core)
    cdef Buf *out
    if tr == NULL:
        return
    out = &tr.frame
    t.tflags |= TF_BROKEN_REDIR
    if t.proto == 3:
        buf_clear(out)
        buf_append_str(out, b">2\r\n$21\r\ntracking-redir-broken\r\n")
        buf_append_int(out, c':', <long long>redirect)
        client_push(core, t, buf_head(out), buf_len(out))


cdef bint tracking_redirect_remote(Core *core, ArgVec *av) noexcept nogil:
    """CLIENT TRACKING ... REDIRECT <id> with id a client of another worker (workers.pxi)."""
    cdef long long id
    cdef int j
    for j in range(3, av.argc - 1):
        if arg_is(av, j, b"redirect") and parse_ll(av.argv[j + 1], av.argl[j + 1], &id) == 0 \
                and id > 0:
            return worker_of(core, <unsigned long long>id) != core.worker
    return False


cdef void entry_invalidate(Core *core, TrackEntry *e) noexcept nogil:
    """Tell every client of an entry (unlinked) that its key changed, and free it."""
    cdef Tracking *tr = core.tracking
    cdef Buf payload
    cdef Client *t
    cdef int i
    memset(&payload, 0, sizeof(Buf))
    buf_append_str(&payload, b"*1\r\n")
    buf_append_bulk(&payload, e.key, e.keylen)
    for i in range(e.nrefs):
        t = track_client(tr, e.refs[i].slot, e.refs[i].id)
        # Not one that turned tracking off, or switched to BCAST, since it read the key.
        if t != NULL and t.flags & CF_TRACKING and not (t.tflags & TF_BCAST):
            tracking_send(core, t, buf_head(&payload), buf_len(&payload))
    buf_free(&payload)
    entry_free(e)


cdef void track_evict(Core *core, Tracking *tr) noexcept nogil:
    """Over max_keys: evict random keys, each with its invalidation, as Redis does."""
    cdef size_t i
    cdef TrackEntry *e
    while tr.keys.count > tr.max_keys:
        i = <size_t>(core_random(core) & (tr.keys.nbuckets - 1))
        while tr.keys.buckets[i] == NULL:
            i = (i + 1) & (tr.keys.nbuckets - 1)
        e = tr.keys.buckets[i]
        tr.keys.buckets[i] = e.next
        tr.keys.count -= 1
        entry_invalidate(core, e)


cdef void track_announce_null(Core *core) noexcept nogil:
    """Everything is invalid (a flush, or what a shard remembered is lost): a null
    invalidation to every tracking client; the table starts again empty."""
    cdef Tracking *tr = core.tracking
    cdef Client *t
    cdef int slot
    if tr == NULL:
        return
    table_clear(&tr.keys)
    table_clear(&tr.written)
    for slot in range(1, tr.reg_top + 1):
        t = tr.reg[slot]
        if t != NULL and t.flags & CF_TRACKING:
            # Redis writes the tracking client's own null, whatever its REDIRECT client speaks.
            if t.proto == 3:
                tracking_send(core, t, b"_\r\n", 3)
            else:
                tracking_send(core, t, b"$-1\r\n", 5)


# ---- what a tracking client's commands do ----------------------------------------------------

cdef void tracking_command(Core *core, Client *c, CommandInfo *cmd, ArgVec *av) noexcept nogil:
    """Before a tracking client's command is routed: remember the keys it reads, take its own
    writes out of NOLOOP's way, and consume CLIENT CACHING's one-command flag."""
    cdef Tracking *tr = core.tracking
    cdef KeyList *kl = &core.keys
    cdef TrackEntry *e
    cdef TrackEntry **at
    cdef int tf = c.tflags, i, k
    cdef bint remember, nolooped
    if cmd.local == LOCAL_CLIENT or tr == NULL:
        return          # CLIENT ... keeps CACHING's flag (CLIENT TRACKINGINFO shows it)
    # A NOLOOP client's script that writes is not remembered: its own write would be announced
    # to it (Redis tracks such a script's keys only if it also reads them).
    nolooped = cmd.writes and tf & TF_NOLOOP
    remember = cmd.tracks_reads and not nolooped and not (tf & TF_BCAST) and \
        not (tf & TF_OPTIN and not (tf & TF_CACHING)) and not (tf & TF_OPTOUT and tf & TF_CACHING)
    if (remember or nolooped) and command_keys(cmd, av, kl) == 0:
        for i in range(kl.n):
            k = kl.pos[i]
            if remember:
                e = table_get(&tr.keys, av.argv[k], av.argl[k])
                if e != NULL:
                    entry_add(e, c)
            elif tf & TF_BCAST:
                e = table_get(&tr.written, av.argv[k], av.argl[k])
                if e != NULL:
                    entry_add(e, c)
            else:
                at = table_slot(&tr.keys, av.argv[k], av.argl[k], track_hash(av.argv[k], av.argl[k]))
                if at != NULL and at[0] != NULL:
                    entry_drop(at[0], c)    # the others still hear of the write, c does not
        if remember and tr.keys.count > tr.max_keys:
            track_evict(core, tr)
    if not (c.flags & CF_MULTI and cmd.local != LOCAL_EXEC and cmd.local != LOCAL_DISCARD) \
            and cmd.local != LOCAL_MULTI:
        c.tflags &= ~TF_CACHING


# ---- the shard side: tracked connections and the BCAST connection ----------------------------

cdef void tracked3_connect(Core *core, Backend *b) noexcept nogil:
    """The RESP3 tracked connection: HELLO 3, tracking on, and its CLIENT ID (for tracked[0]'s
    REDIRECT)."""
    backend_connect(core, b)
    if b.state == BK_DOWN:
        return
    buf_append_str(&b.wbuf, TRACKING_ON)
    buf_append_str(&b.wbuf, ASK_CLIENT_ID)
    b.skip_replies += 1
    b.wants_id = True
    backend_mark_dirty(core, b)


cdef void tracked2_connect(Core *core, Backend *b, long long redirect) noexcept nogil:
    """The RESP2 tracked connection, redirected to tracked[1]; what was held meanwhile goes
    after the TRACKING command."""
    cdef Buf held = b.wbuf
    cdef char digits[24]
    memset(&b.wbuf, 0, sizeof(Buf))
    b.hold = False
    backend_connect(core, b)
    if b.state == BK_DOWN:
        buf_free(&held)     # its fragments were answered by backend_fail
        return
    snprintf(digits, sizeof(digits), b"%lld", redirect)
    buf_append_str(&b.wbuf, b"*5\r\n$6\r\nCLIENT\r\n$8\r\nTRACKING\r\n$2\r\non\r\n$8\r\nREDIRECT\r\n")
    buf_append_bulk(&b.wbuf, digits, strlen(digits))
    b.skip_replies += 1
    buf_append(&b.wbuf, buf_head(&held), buf_len(&held))
    buf_free(&held)
    backend_mark_dirty(core, b)


cdef void bcast_connect(Core *core, Backend *b) noexcept nogil:
    backend_connect(core, b)
    if b.state == BK_DOWN:
        return
    buf_append_str(&b.wbuf, TRACKING_BCAST)
    b.skip_replies += 1
    backend_mark_dirty(core, b)


cdef Backend *tracked_backend(Core *core, int shard, int proto) noexcept nogil:
    """The connection a tracking client of `proto` uses on the shard (made on first use);
    the RESP2 one holds its requests until the RESP3 one's id is known."""
    cdef Shard *s = &core.shards[shard]
    cdef Backend *t3 = s.tracked[1]
    cdef Backend *t2
    if t3 == NULL:
        t3 = s.tracked[1] = backend_new(shard, NULL, 3, ROLE_TRACKED)
        if t3 == NULL:
            return shard_backend(core, shard, proto)
    if t3.state == BK_DOWN and t3.retry_at_us <= core.now_us:
        tracked3_connect(core, t3)
    if proto == 3:
        return t3
    t2 = s.tracked[0]
    if t2 == NULL:
        t2 = s.tracked[0] = backend_new(shard, NULL, 2, ROLE_TRACKED)
        if t2 == NULL:
            return shard_backend(core, shard, proto)
        t2.hold = True
    if t2.state == BK_DOWN and t2.retry_at_us <= core.now_us:
        t2.hold = True
    if t2.hold and t3.shard_client_id > 0 and t3.state == BK_UP:
        tracked2_connect(core, t2, t3.shard_client_id)
    return t2


cdef void tracked3_ready(Core *core, Backend *b) noexcept nogil:
    """tracked[1]'s id is known: tracked[0] is (re)directed to it."""
    cdef Shard *s = &core.shards[b.shard]
    cdef Backend *t2 = s.tracked[0]
    cdef char cmd[128]
    if s.tracking_lost:
        # Re-established: what was invalidated while it was down was not heard.
        s.tracking_lost = False
        track_announce_null(core)
    if t2 == NULL:
        return
    if t2.hold:
        tracked2_connect(core, t2, b.shard_client_id)
    elif t2.state != BK_DOWN:
        snprintf(cmd, sizeof(cmd), b"*5\r\n$6\r\nCLIENT\r\n$8\r\nTRACKING\r\n$2\r\non\r\n$8\r\nREDIRECT\r\n$%d\r\n%lld\r\n",
                 snprintf(NULL, 0, b"%lld", b.shard_client_id), b.shard_client_id)
        req_send_unanswered(core, t2, cmd, strlen(cmd))


cdef void tracking_keys_invalidated(Core *core, int shard, const char *p, size_t n) noexcept nogil:
    """The value of a shard's `invalidate` push: `*N` keys, or a null (a flush)."""
    cdef Tracking *tr = core.tracking
    cdef Shard *s
    cdef TrackEntry *e
    cdef size_t consumed, need
    cdef int i
    if tr == NULL or n == 0:
        return
    if p[0] != c'*':
        s = &core.shards[shard]
        if core.now_us < tr.null_until_us and s.null_pending > 0:
            s.null_pending -= 1     # the same flush, from another of the shard's connections
            return
        track_announce_null(core)
        for i in range(core.nactive):
            s = &core.shards[core.active[i]]
            s.null_pending = (1 if s.tracked[1] != NULL and s.tracked[1].state == BK_UP else 0) + \
                (1 if s.tracked[0] != NULL and s.tracked[0].state == BK_UP else 0)
        core.shards[shard].null_pending -= 1
        tr.null_until_us = core.now_us + 1000000
        return
    if parse_request(p, n, &tr.av, &consumed, &need) != PARSE_OK:
        return
    for i in range(tr.av.argc):
        e = table_take(&tr.keys, tr.av.argv[i], tr.av.argl[i])
        if e != NULL:
            entry_invalidate(core, e)


cdef int rsp_tracked(Core *core, Backend *b, const char *p, size_t n, int push) noexcept nogil:
    """A frame on a tracked connection: pushes are the shard's invalidations; the reply to
    CLIENT ID gives its id; the rest are the fragments' replies."""
    cdef long long id
    if push:
        if n > INVALIDATE_PUSH_LEN and memcmp(p, INVALIDATE_PUSH, INVALIDATE_PUSH_LEN) == 0:
            tracking_keys_invalidated(core, b.shard, p + INVALIDATE_PUSH_LEN, n - INVALIDATE_PUSH_LEN)
        return 0
    if b.wants_id:
        b.wants_id = False
        if n > 3 and p[0] == c':' and parse_ll(p + 1, n - 3, &id) == 0:
            b.shard_client_id = id
            tracked3_ready(core, b)
        return 0
    return rsp_fragment(core, b, p, n, 0)


cdef bint written_by(Tracking *tr, Client *t, const char *key, size_t n) noexcept nogil:
    cdef TrackEntry **at = table_slot(&tr.written, key, n, track_hash(key, n))
    return at != NULL and at[0] != NULL and entry_has(at[0], t)


cdef void bcast_dispatch(Core *core, ArgVec *keys) noexcept nogil:
    """A shard's broadcast (every key written there in one turn of its loop): to each BCAST
    client, one push per prefix of its own that some keys match (NOLOOP: its writes left out)."""
    cdef Tracking *tr = core.tracking
    cdef Buf payload
    cdef Client *t
    cdef int slot, i, count
    cdef size_t pos, plen
    cdef const char *pre
    cdef TrackEntry *e
    memset(&payload, 0, sizeof(Buf))
    for slot in range(1, tr.reg_top + 1):
        t = tr.reg[slot]
        if t == NULL or not (t.flags & CF_TRACKING) or not (t.tflags & TF_BCAST):
            continue
        pos = 0
        while prefix_next(&t.track_prefixes, &pos, &pre, &plen):
            count = 0
            buf_clear(&payload)
            for i in range(keys.argc):
                if keys.argl[i] >= plen and memcmp(keys.argv[i], pre, plen) == 0 and \
                        not (t.tflags & TF_NOLOOP and written_by(tr, t, keys.argv[i], keys.argl[i])):
                    buf_append_bulk(&payload, keys.argv[i], keys.argl[i])
                    count += 1
            if count:
                buf_clear(&tr.frame)
                buf_append_int(&tr.frame, c'*', count)
                buf_append(&tr.frame, buf_head(&payload), buf_len(&payload))
                buf_clear(&payload)
                buf_append(&payload, buf_head(&tr.frame), buf_len(&tr.frame))
                tracking_send(core, t, buf_head(&payload), buf_len(&payload))
    buf_free(&payload)
    for i in range(keys.argc):
        e = table_take(&tr.written, keys.argv[i], keys.argl[i])
        if e != NULL:
            entry_free(e)


cdef int rsp_bcast(Core *core, Backend *b, const char *p, size_t n, int push) noexcept nogil:
    cdef Tracking *tr = core.tracking
    cdef size_t consumed, need
    if not push:
        # The answer to a client's CLIENT TRACKING on BCAST (bcast_confirm); nothing else is asked.
        return rsp_fragment(core, b, p, n, 0) if b.qhead != NULL else 0
    if tr == NULL or n <= INVALIDATE_PUSH_LEN or memcmp(p, INVALIDATE_PUSH, INVALIDATE_PUSH_LEN) != 0:
        return 0
    p += INVALIDATE_PUSH_LEN
    n -= INVALIDATE_PUSH_LEN
    # A null is a flush: the tracked connections announce it.
    if p[0] == c'*' and parse_request(p, n, &tr.av, &consumed, &need) == PARSE_OK:
        bcast_dispatch(core, &tr.av)
    return 0


cdef void bcast_sync(Core *core) noexcept nogil:
    """A BCAST connection on every shard of the map while some client is in BCAST mode; none
    otherwise (each tells the proxy of every write on its shard)."""
    cdef Tracking *tr = core.tracking
    cdef Shard *s
    cdef int i
    for i in range(core.nshards):
        s = &core.shards[i]
        if tr != NULL and tr.nbcast > 0 and s.active:
            if s.bcast == NULL:
                s.bcast = backend_new(i, NULL, 3, ROLE_BCAST)
                if s.bcast != NULL:
                    bcast_connect(core, s.bcast)
        elif s.bcast != NULL:
            conn_drop(core, s.bcast, b"closed broadcast connection to")
            s.bcast = NULL


cdef void conn_drop(Core *core, Backend *b, const char *why) noexcept nogil:
    b.role = ROLE_DEDICATED     # no longer one whose loss invalidates anything
    backend_fail(core, b, why)
    b.next_closed = core.closed_backends
    core.closed_backends = b


cdef void tracking_conn_lost(Core *core, Backend *b) noexcept nogil:
    """A tracked or BCAST connection is lost (backend_fail, before it is marked down): what the
    shard remembered for it is gone, so every tracking client flushes its cache."""
    cdef Shard *s = &core.shards[b.shard]
    if b.role == ROLE_TRACKED and b.proto == 3:
        b.shard_client_id = 0
        b.wants_id = False
        if b.state == BK_UP:
            s.tracking_lost = True
    if b.state == BK_UP and core.tracking != NULL:
        track_announce_null(core)


cdef void tracking_tick(Core *core) noexcept nogil:
    """Timers of the tracking connections: late replies fail them, lost ones come back."""
    cdef int i, j
    cdef Backend *b
    cdef Shard *s
    if core.tracking == NULL:
        return
    for i in range(core.nshards):
        s = &core.shards[i]
        for j in range(3):
            b = s.tracked[j] if j < 2 else s.bcast
            if b == NULL:
                continue
            if b.qhead != NULL and core.backend_timeout_us > 0 \
                    and core.now_us - b.qhead.sent_us > core.backend_timeout_us:
                backend_fail(core, b, b"timeout waiting for")
            if b.state != BK_DOWN or not s.active or b.retry_at_us > core.now_us:
                continue
            if j == 1:
                tracked3_connect(core, b)
            elif j == 2:
                bcast_connect(core, b)
            elif not b.hold and b.qhead == NULL:
                b.hold = True       # connected again once tracked[1] has its id
            if j == 0 and b.hold and s.tracked[1] != NULL and s.tracked[1].shard_client_id > 0 \
                    and s.tracked[1].state == BK_UP:
                tracked2_connect(core, b, s.tracked[1].shard_client_id)


cdef void tracking_read_first(Core *core, epoll_event *events, int n) noexcept nogil:
    """Before the clients of a loop turn are read: the invalidations that came in, so that a
    client's request answered by the proxy itself (a PING) is answered after them, as on one
    Redis, when the write that caused them was answered before."""
    cdef int i
    cdef Backend *b
    for i in range(n):
        if (<int *>events[i].data.ptr)[0] != KIND_BACKEND or not (events[i].events & EPOLLIN):
            continue
        b = <Backend *>events[i].data.ptr
        if (b.role == ROLE_BCAST or (b.role == ROLE_TRACKED and b.proto == 3)) and b.state == BK_UP \
                and b.fd >= 0:
            backend_recv(core, b)
            events[i].events &= ~EPOLLIN


cdef void tracking_map_changed(Core *core) noexcept nogil:
    """Keys may have moved to shards that never saw them read: every tracking client flushes;
    the shards new to the map get their connections."""
    cdef Tracking *tr = core.tracking
    cdef int i
    if tr == NULL or tr.ntracking == 0:
        bcast_sync(core)
        return
    track_announce_null(core)
    for i in range(core.nactive):
        tracked_backend(core, core.active[i], 3)
    bcast_sync(core)


cdef void tracking_close(Core *core) noexcept nogil:
    """The proxy stops: every tracking connection goes."""
    cdef int i, j
    cdef Shard *s
    for i in range(core.nshards):
        s = &core.shards[i]
        for j in range(2):
            if s.tracked[j] != NULL:
                conn_drop(core, s.tracked[j], b"proxy closed its connection to")
                s.tracked[j] = NULL
        if s.bcast != NULL:
            conn_drop(core, s.bcast, b"proxy closed its connection to")
            s.bcast = NULL


# ---- CLIENT TRACKING / CACHING / GETREDIR / TRACKINGINFO -------------------------------------

cdef bint prefix_next(Buf *prefixes, size_t *pos, const char **p, size_t *n) noexcept nogil:
    """Iterate a client's BCAST prefixes: records of a 4-byte length and the bytes, sorted."""
    cdef unsigned int len4
    if pos[0] >= buf_len(prefixes):
        return False
    memcpy(&len4, buf_head(prefixes) + pos[0], 4)
    p[0] = buf_head(prefixes) + pos[0] + 4
    n[0] = len4
    pos[0] += 4 + len4
    return True


cdef inline bint overlaps(const char *a, size_t an, const char *b, size_t bn) noexcept nogil:
    """One is a prefix of the other (Redis's stringCheckPrefix)."""
    cdef size_t m = an if an < bn else bn
    return memcmp(a, b, m) == 0


cdef void prefix_add(Buf *prefixes, const char *p, size_t n) noexcept nogil:
    """Insert in byte order (TRACKINGINFO lists them as Redis's radix tree does)."""
    cdef size_t pos = 0, at = 0, qn, m
    cdef const char *q
    cdef unsigned int len4 = <unsigned int>n
    cdef Buf out
    while prefix_next(prefixes, &pos, &q, &qn):
        m = n if n < qn else qn
        if memcmp(q, p, m) > 0 or (memcmp(q, p, m) == 0 and qn > n):
            break
        at = pos
    memset(&out, 0, sizeof(Buf))
    buf_append(&out, buf_head(prefixes), at)
    buf_append(&out, <const char *>&len4, 4)
    buf_append(&out, p, n)
    buf_append(&out, buf_head(prefixes) + at, buf_len(prefixes) - at)
    buf_free(prefixes)
    prefixes[0] = out


cdef void tracking_off(Core *core, Client *c) noexcept nogil:
    cdef Tracking *tr = core.tracking
    if not (c.flags & CF_TRACKING):
        return
    c.flags &= ~CF_TRACKING
    if tr != NULL:
        tr.ntracking -= 1
        if c.tflags & TF_BCAST:
            tr.nbcast -= 1
            if tr.nbcast == 0:
                bcast_sync(core)
    c.tflags = 0
    c.track_redirect = 0
    buf_free(&c.track_prefixes)


cdef void tracking_error(Core *core, Request *r, const char *fmt, const char *a, size_t an,
                         const char *b, size_t bn) noexcept nogil:
    cdef Buf *out = &core.merged
    cdef char line[256]
    snprintf(line, sizeof(line), fmt, <int>(an if an < 80 else 80), a, <int>(bn if bn < 80 else 80), b)
    buf_clear(out)
    buf_append_str(out, line)
    req_write(core, r, buf_head(out), buf_len(out))


cdef void route_client_tracking(Core *core, Client *c, Request *r, ArgVec *av) noexcept nogil:
    """CLIENT TRACKING on|off [REDIRECT id] [BCAST] [PREFIX p]... [OPTIN] [OPTOUT] [NOLOOP],
    checked in Redis's order with its error texts."""
    cdef Tracking *tr
    cdef Client *target = NULL
    cdef long long redir = 0
    cdef bint redir_remote = False
    cdef int options = 0, j, i, nprefix = 0
    cdef size_t pos, qn
    cdef const char *q
    j = 3
    while j < av.argc:
        if arg_is(av, j, b"redirect") and j + 1 < av.argc:
            j += 1
            if redir != 0:
                req_write_str(core, r, b"-ERR A client can only redirect to a single other client\r\n")
                return
            if parse_ll(av.argv[j], av.argl[j], &redir) < 0:
                req_write_str(core, r, b"-ERR value is not an integer or out of range\r\n")
                return
            target = client_by_id(core, redir)
            if target == NULL and core.world_held:
                # Another worker's client (worker_needs_all): found there, told through mail.
                if client_by_id(core.workers.cores[worker_of(core, redir)], redir) != NULL:
                    redir_remote = True
            if target == NULL and not redir_remote:
                req_write_str(core, r, b"-ERR The client ID you want redirect to does not exist\r\n")
                return
        elif arg_is(av, j, b"bcast"):
            options |= TF_BCAST
        elif arg_is(av, j, b"optin"):
            options |= TF_OPTIN
        elif arg_is(av, j, b"optout"):
            options |= TF_OPTOUT
        elif arg_is(av, j, b"noloop"):
            options |= TF_NOLOOP
        elif arg_is(av, j, b"prefix") and j + 1 < av.argc:
            j += 1
            nprefix += 1
        else:
            req_write_str(core, r, b"-ERR syntax error\r\n")
            return
        j += 1
    if arg_is(av, 2, b"off"):
        tracking_off(core, c)
        req_write_str(core, r, b"+OK\r\n")
        return
    if not arg_is(av, 2, b"on"):
        req_write_str(core, r, b"-ERR syntax error\r\n")
        return
    if not (options & TF_BCAST) and nprefix:
        req_write_str(core, r, b"-ERR PREFIX option requires BCAST mode to be enabled\r\n")
        return
    if c.flags & CF_TRACKING and (c.tflags & TF_BCAST) != (options & TF_BCAST):
        req_write_str(core, r, b"-ERR You can't switch BCAST mode on/off before disabling tracking "
                               b"for this client, and then re-enabling it with a different mode.\r\n")
        return
    if options & TF_BCAST and options & (TF_OPTIN | TF_OPTOUT):
        req_write_str(core, r, b"-ERR OPTIN and OPTOUT are not compatible with BCAST\r\n")
        return
    if options & TF_OPTIN and options & TF_OPTOUT:
        req_write_str(core, r, b"-ERR You can't specify both OPTIN mode and OPTOUT mode\r\n")
        return
    if c.flags & CF_TRACKING and ((options & TF_OPTIN and c.tflags & TF_OPTOUT) or
                                  (options & TF_OPTOUT and c.tflags & TF_OPTIN)):
        req_write_str(core, r, b"-ERR You can't switch OPTIN/OPTOUT mode before disabling tracking "
                               b"for this client, and then re-enabling it with a different mode.\r\n")
        return
    if options & TF_BCAST:
        # Collisions with the prefixes it has, then among the new ones.
        for j in range(3, av.argc - 1):
            if not (arg_is(av, j, b"prefix") and prefix_arg_is_keyword(av, j)):
                continue
            pos = 0
            while prefix_next(&c.track_prefixes, &pos, &q, &qn):
                if overlaps(q, qn, av.argv[j + 1], av.argl[j + 1]):
                    tracking_error(core, r, b"-ERR Prefix '%.*s' overlaps with an existing prefix '%.*s'. "
                                   b"Prefixes for a single client must not overlap.\r\n",
                                   av.argv[j + 1], av.argl[j + 1], q, qn)
                    return
            for i in range(j + 2, av.argc - 1):
                if arg_is(av, i, b"prefix") and prefix_arg_is_keyword(av, i) and \
                        overlaps(av.argv[j + 1], av.argl[j + 1], av.argv[i + 1], av.argl[i + 1]):
                    tracking_error(core, r, b"-ERR Prefix '%.*s' overlaps with another provided prefix '%.*s'. "
                                   b"Prefixes for a single client must not overlap.\r\n",
                                   av.argv[j + 1], av.argl[j + 1], av.argv[i + 1], av.argl[i + 1])
                    return
    if c.user != NULL and not (options & TF_BCAST):
        # Its reads run on its ACL user's connections (acl.pxi), which the shards do not track
        # for the proxy: no invalidation would reach it.
        req_write_str(core, r, b"-ERR CLIENT TRACKING without BCAST is not supported through this "
                               b"proxy for a user other than 'default' yet\r\n")
        return
    tr = tracking_get(core)
    if tr == NULL or track_register(core, tr, c) < 0 or (target != NULL and track_register(core, tr, target) < 0):
        req_write_str(core, r, b"-ERR out of memory\r\n")
        return
    if not (c.flags & CF_TRACKING):
        c.flags |= CF_TRACKING
        tr.ntracking += 1
        if options & TF_BCAST:
            tr.nbcast += 1
        if tr.ntracking == 1 or (options & TF_BCAST and tr.nbcast == 1):
            # The shards' side: a tracked connection on each, a BCAST one while it is needed.
            for i in range(core.nactive):
                tracked_backend(core, core.active[i], 3)
            bcast_sync(core)
    c.tflags = options | (c.tflags & TF_CACHING)
    c.track_redirect = <unsigned long long>redir
    c.track_redirect_slot = target.track_slot if target != NULL else 0
    if options & TF_BCAST:
        if nprefix == 0:
            prefix_add(&c.track_prefixes, b"", 0)
        for j in range(3, av.argc - 1):
            if arg_is(av, j, b"prefix") and prefix_arg_is_keyword(av, j):
                prefix_add(&c.track_prefixes, av.argv[j + 1], av.argl[j + 1])
        bcast_confirm(core, r)
        return
    req_write_str(core, r, b"+OK\r\n")


cdef void bcast_confirm(Core *core, Request *r) noexcept nogil:
    """Answer a CLIENT TRACKING on BCAST once every shard's BCAST connection tracks (it may be
    opening): its OK is the shards' own answer to one more `CLIENT TRACKING on BCAST` on each,
    so no write that follows the OK goes unannounced."""
    cdef int i, n = 0
    cdef Shard *s
    for i in range(core.nactive):
        if core.shards[core.active[i]].bcast != NULL:
            n += 1
    if n == 0:
        req_write_str(core, r, b"-ERR out of memory\r\n")
        return
    if n > 1 and req_fragment(r, n) < 0:
        req_write_str(core, r, b"-ERR out of memory\r\n")
        return
    r.merge = MERGE_ALL_SUCCEEDED
    r.pending = n
    n = 0
    for i in range(core.nactive):
        s = &core.shards[core.active[i]]
        if s.bcast != NULL:
            # r may be answered by the last send (a shard that is down answers at once).
            frag_send_on(core, s.bcast, &r.frags[n], TRACKING_BCAST, strlen(TRACKING_BCAST))
            n += 1


cdef bint prefix_arg_is_keyword(ArgVec *av, int j) noexcept nogil:
    """Is argument j (which reads `prefix`) the PREFIX keyword, not another option's argument?
    Walk the options from the start as the parser does."""
    cdef int k = 3
    while k < av.argc:
        if k == j:
            return True
        if (arg_is(av, k, b"redirect") or arg_is(av, k, b"prefix")) and k + 1 < av.argc:
            k += 2
        else:
            k += 1
    return False


cdef void route_client_caching(Core *core, Client *c, Request *r, ArgVec *av) noexcept nogil:
    if not (c.flags & CF_TRACKING):
        req_write_str(core, r, b"-ERR CLIENT CACHING can be called only when the client is in tracking "
                               b"mode with OPTIN or OPTOUT mode enabled\r\n")
    elif arg_is(av, 2, b"yes"):
        if c.tflags & TF_OPTIN:
            c.tflags |= TF_CACHING
            req_write_str(core, r, b"+OK\r\n")
        else:
            req_write_str(core, r, b"-ERR CLIENT CACHING YES is only valid when tracking is enabled in OPTIN mode.\r\n")
    elif arg_is(av, 2, b"no"):
        if c.tflags & TF_OPTOUT:
            c.tflags |= TF_CACHING
            req_write_str(core, r, b"+OK\r\n")
        else:
            req_write_str(core, r, b"-ERR CLIENT CACHING NO is only valid when tracking is enabled in OPTOUT mode.\r\n")
    else:
        req_write_str(core, r, b"-ERR syntax error\r\n")


cdef void route_client_getredir(Core *core, Client *c, Request *r) noexcept nogil:
    cdef Buf *out = &core.merged
    buf_clear(out)
    buf_append_int(out, c':', <long long>c.track_redirect if c.flags & CF_TRACKING else -1)
    req_write(core, r, buf_head(out), buf_len(out))


cdef void route_client_trackinginfo(Core *core, Client *c, Request *r) noexcept nogil:
    """`flags` (a set in RESP3), `redirect`, `prefixes`, as Redis lists them."""
    cdef Buf *out = &core.merged
    cdef int tf = c.tflags, nflags = 1, nprefix = 0
    cdef bint on = c.flags & CF_TRACKING
    cdef size_t pos = 0, qn
    cdef const char *q
    if on:
        nflags += (1 if tf & TF_BCAST else 0) + (1 if tf & TF_OPTIN else 0) + \
            (1 if tf & TF_OPTOUT else 0) + (1 if tf & TF_CACHING else 0) + \
            (1 if tf & TF_NOLOOP else 0) + (1 if tf & TF_BROKEN_REDIR else 0)
    buf_clear(out)
    buf_append_str(out, b"%3\r\n" if c.proto == 3 else b"*6\r\n")
    buf_append_str(out, b"$5\r\nflags\r\n")
    buf_append_int(out, c'~' if c.proto == 3 else c'*', nflags)
    buf_append_str(out, b"$2\r\non\r\n" if on else b"$3\r\noff\r\n")
    if on:
        if tf & TF_BCAST:
            buf_append_str(out, b"$5\r\nbcast\r\n")
        if tf & TF_OPTIN:
            buf_append_str(out, b"$5\r\noptin\r\n")
            if tf & TF_CACHING:
                buf_append_str(out, b"$11\r\ncaching-yes\r\n")
        if tf & TF_OPTOUT:
            buf_append_str(out, b"$6\r\noptout\r\n")
            if tf & TF_CACHING:
                buf_append_str(out, b"$10\r\ncaching-no\r\n")
        if tf & TF_NOLOOP:
            buf_append_str(out, b"$6\r\nnoloop\r\n")
        if tf & TF_BROKEN_REDIR:
            buf_append_str(out, b"$15\r\nbroken_redirect\r\n")
    buf_append_str(out, b"$8\r\nredirect\r\n")
    buf_append_int(out, c':', <long long>c.track_redirect if on else -1)
    buf_append_str(out, b"$8\r\nprefixes\r\n")
    while prefix_next(&c.track_prefixes, &pos, &q, &qn):
        nprefix += 1
    buf_append_int(out, c'*', nprefix)
    pos = 0
    while prefix_next(&c.track_prefixes, &pos, &q, &qn):
        buf_append_bulk(out, q, qn)
    req_write(core, r, buf_head(out), buf_len(out))
