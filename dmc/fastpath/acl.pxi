# ACL users through the endpoint, as one redis-server with the same ACL behaves.
#
# The shards hold the ACL (ACL SETUSER/DELUSER/LOAD/SAVE go to every shard) and the shards
# enforce it: the proxy never judges a permission itself, it runs each client's commands on
# connections authenticated as the client's user, so NOPERM, ACL LOG and redis.acl_check_cmd are
# Redis's own.
#
# - AUTH user pass / HELLO p AUTH user pass (a user other than `default`) is checked by the
#   default shard, on that shard's auth checker (a connection of the proxy's that runs nothing
#   but AUTH, each followed by RESET); the client's later requests wait for the answer, which
#   is the shard's (WRONGPASS verbatim). `default` is the database password, checked by the
#   proxy as before (local.pxi).
# - A client of user U sends its commands on U's shared connections to each shard (opened on
#   first use, per protocol, authenticated with HELLO p AUTH U pass), its dedicated ones
#   (blocking, WATCH/MULTI, subscriber, WAIT) are authenticated as U too. Nothing is sent on a
#   connection after its AUTH until the shard accepted it (Backend.authing/auth_hold): a refused AUTH
#   never lets a command run as the `default` user. Clients of `default` keep the shards' shared
#   connections: for them nothing changes (one test of Client.user when a fragment is sent).
# - ACL DELUSER closes the deleted users' clients, as Redis does (the issuing client after its
#   reply; with worker threads, every worker's: workers.pxi); the shards close those users'
#   connections themselves. ACL SETUSER closes nobody, as redis-server 7.0.
# - ACL LOG merges the shards' logs, newest first (a denial is logged by the shard that refused).


cdef User *user_find(Core *core, const char *name, size_t n) noexcept nogil:
    cdef User *u = core.users
    while u != NULL:
        if not u.deleted and u.name_len == n and memcmp(u.name, name, n) == 0:
            return u
        u = u.next
    return NULL


cdef void user_wipe_secret(User *u) noexcept nogil:
    if u.sealed != NULL:
        memset(u.sealed, 0, u.secret_len)
        memset(u.pad, 0, u.secret_len)
    free(u.sealed)
    free(u.pad)
    u.sealed = u.pad = NULL
    u.secret_len = 0


cdef int user_seal(User *u, const char *pw, size_t n) noexcept nogil:
    """Keep pw sealed: XOR a fresh random pad (getrandom), never the password itself."""
    cdef size_t i, got = 0
    cdef ssize_t k
    user_wipe_secret(u)
    u.sealed = <unsigned char *>malloc(n + 1)
    u.pad = <unsigned char *>malloc(n + 1)
    if u.sealed == NULL or u.pad == NULL:
        user_wipe_secret(u)
        return -1
    while got < n:
        k = getrandom(u.pad + got, n - got, 0)
        if k <= 0:
            if k < 0 and errno == EINTR:
                continue
            user_wipe_secret(u)
            return -1
        got += <size_t>k
    for i in range(n):
        u.sealed[i] = (<unsigned char>pw[i]) ^ u.pad[i]
    u.secret_len = n
    return 0


cdef User *user_get(Core *core, const char *name, size_t n, const char *pw, size_t plen) noexcept nogil:
    """The user `name`, its password (just accepted by a shard) sealed anew; NULL when out of
    memory."""
    cdef User *u = user_find(core, name, n)
    if u == NULL:
        if n >= ACL_USER_NAME_MAX:
            return NULL
        u = <User *>calloc(1, sizeof(User))
        if u == NULL:
            return NULL
        memcpy(u.name, name, n)
        u.name_len = n
        u.next = core.users
        core.users = u
    if user_seal(u, pw, plen) < 0:
        return NULL
    return u


cdef void user_free(Core *core, User *u, bint answer) noexcept nogil:
    """Close u's connections (answer: what waits on them is answered with an error, and the
    structs are freed at the end of the loop turn; else freed now) and forget its secret."""
    cdef int i, j
    cdef Backend *b
    for i in range(u.nshards):
        if u.shards[i].conns == NULL:
            continue
        for j in range(2 * core.conns_per_shard):
            b = u.shards[i].conns[j]
            if b == NULL:
                continue
            if answer:
                if b.fd >= 0:
                    backend_drop(core, b, b"proxy closed its connection to")
                buf_free(&b.rbuf)
                buf_free(&b.wbuf)
                b.next_closed = core.closed_backends
                core.closed_backends = b
            else:
                backend_socket_close(b)
                buf_free(&b.rbuf)
                buf_free(&b.wbuf)
                free(b)
        free(u.shards[i].conns)
    free(u.shards)
    user_wipe_secret(u)
    free(u)


cdef void client_set_user(Core *core, Client *c, User *u) noexcept nogil:
    """c runs as u from its next request on (NULL: `default`)."""
    if c.user == u:
        return
    if c.user != NULL:
        c.user.refs -= 1
    c.user = u
    if u != NULL:
        u.refs += 1


cdef Backend *user_backend(Core *core, User *u, int shard, int proto) noexcept nogil:
    """The next of u's shared connections to the shard for clients of `proto` (round robin),
    made on first use; one that is down is reconnected here once its back-off is over. NULL
    when out of memory."""
    cdef int p = 1 if proto == 3 else 0
    cdef int per = core.conns_per_shard
    cdef int n
    cdef UserShard *grown
    cdef UserShard *us
    cdef Backend *b
    if shard >= u.nshards:
        n = core.nshards if core.nshards > shard else shard + 1
        grown = <UserShard *>realloc(u.shards, n * sizeof(UserShard))
        if grown == NULL:
            return NULL
        memset(grown + u.nshards, 0, (n - u.nshards) * sizeof(UserShard))
        u.shards = grown
        u.nshards = n
    us = &u.shards[shard]
    if us.conns == NULL:
        us.conns = <Backend **>calloc(2 * per, sizeof(Backend *))
        if us.conns == NULL:
            return NULL
    b = us.conns[p * per + us.rr[p]]
    if b == NULL:
        b = backend_new(shard, NULL, 3 if p else 2, ROLE_SHARED)
        if b == NULL:
            return NULL
        b.user = u
        us.conns[p * per + us.rr[p]] = b
    us.rr[p] += 1
    if us.rr[p] >= per:
        us.rr[p] = 0
    b.used = True
    if b.state == BK_DOWN and b.retry_at_us <= core.now_us:
        backend_connect(core, b)
    return b


cdef size_t acl_append_auth(Buf *out, User *u, int proto) noexcept nogil:
    """Append `HELLO proto AUTH name password` (the password unsealed straight into out);
    the bytes appended."""
    cdef size_t before = buf_len(out), i
    cdef char *p
    buf_append_str(out, b"*5\r\n$5\r\nHELLO\r\n$1\r\n3\r\n" if proto == 3
                   else b"*5\r\n$5\r\nHELLO\r\n$1\r\n2\r\n")
    buf_append_str(out, b"$4\r\nAUTH\r\n")
    buf_append_bulk(out, u.name, u.name_len)
    buf_append_int(out, c'$', <long long>u.secret_len)
    if buf_reserve(out, u.secret_len + 2) == 0:
        p = out.data + out.end
        for i in range(u.secret_len):
            p[i] = <char>(u.sealed[i] ^ u.pad[i])
        out.end += u.secret_len
        buf_append_str(out, b"\r\n")
    return buf_len(out) - before


cdef void backend_hold_for_auth(Backend *b, size_t hold, int replies_before) noexcept nogil:
    """Only the first `hold` bytes of b's output (up to its AUTH) go out until the shard
    answers that AUTH, the reply after `replies_before` others."""
    b.authing = True
    b.auth_hold = hold
    b.auth_before = replies_before
    b.skip_replies = 1      # so that backend_recv looks at `authing` (only then)


cdef int acl_auth_reply(Core *core, Backend *b, const char *p, size_t n) noexcept nogil:
    """The shard's answer to b's HELLO ... AUTH. Refused (the user was deleted or its password
    changed on the shards meanwhile): the connection is dropped with what waits on it, so that
    none of it runs as another user; -1 then."""
    if p[0] == c'-':
        backend_drop(core, b, b"cannot authenticate as the client's user to")
        return -1
    b.authing = False
    b.auth_hold = 0
    backend_mark_dirty(core, b)
    return 0


cdef void acl_wait_prefix(Core *core, Backend *b, User *u, bint mark) noexcept nogil:
    """A WAIT connection of a client of u: its CLIENT ID (already in its output) and WAIT's mark
    run as the proxy's, the WAIT itself after `HELLO 2 AUTH` as u (wait.pxi)."""
    cdef size_t hold
    if mark:
        buf_append_str(&b.wbuf, WAIT_MARK)
    hold = buf_len(&b.wbuf)
    hold += acl_append_auth(&b.wbuf, u, 2)
    backend_hold_for_auth(b, hold, 2 if mark else 1)
    backend_mark_dirty(core, b)


cdef Backend *auth_checker(Core *core, int shard) noexcept nogil:
    cdef Shard *s = &core.shards[shard]
    if s.auth_checker == NULL:
        s.auth_checker = backend_new(shard, NULL, 2, ROLE_SHARED)
        if s.auth_checker == NULL:
            return NULL
    if s.auth_checker.state == BK_DOWN and s.auth_checker.retry_at_us <= core.now_us:
        backend_connect(core, s.auth_checker)
    return s.auth_checker


cdef void buf_wipe(Buf *b) noexcept nogil:
    if b.data != NULL:
        memset(b.data, 0, b.cap)
    buf_free(b)


cdef void route_auth_check(Core *core, Client *c, Request *r, const char *user, size_t ulen,
                           const char *pw, size_t plen, int hello_proto) noexcept nogil:
    """AUTH user pass (hello_proto 0) or HELLO hello_proto AUTH user pass, for a user other than
    `default`: asked of the default shard; the client's next requests wait for its answer."""
    cdef Buf *sub = &core.subcommand
    cdef Backend *b = auth_checker(core, default_shard(core))
    if b == NULL or buf_append(&r.command, user, ulen) < 0 or buf_append(&r.command, pw, plen) < 0:
        buf_wipe(&r.command)
        req_write_str(core, r, b"-ERR out of memory\r\n")
        return
    r.acl_name_len = <int>ulen
    r.acl_arg = hello_proto
    r.merge = MERGE_AUTH
    r.resolving = True
    r.pending = 1
    c.flags |= CF_RESOLVING
    buf_clear(sub)
    buf_append_str(sub, b"*3\r\n$4\r\nAUTH\r\n")
    buf_append_bulk(sub, user, ulen)
    buf_append_bulk(sub, pw, plen)
    frag_send_on(core, b, &r.frag0, buf_head(sub), buf_len(sub))
    buf_wipe(sub)
    # Back to `default` at once: the checker never keeps another user's rights.
    req_send_unanswered(core, b, b"*1\r\n$5\r\nRESET\r\n", 15)


cdef void auth_answered(Core *core, Request *r, const char *reply, size_t n) noexcept nogil:
    cdef Client *c = r.client
    cdef User *u
    cdef const char *name = buf_head(&r.command)
    cdef size_t nlen = <size_t>r.acl_name_len
    r.resolving = False
    if c == NULL:
        buf_wipe(&r.command)
        req_put(core, r)
        return
    c.flags &= ~CF_RESOLVING
    client_mark_dirty(core, c)      # its waiting input is parsed again when it is flushed
    if reply_is_error(reply):
        buf_wipe(&r.command)
        req_write(core, r, reply, n)
        return
    u = user_get(core, name, nlen, name + nlen, buf_len(&r.command) - nlen)
    buf_wipe(&r.command)
    if u == NULL:
        req_write_str(core, r, b"-ERR out of memory\r\n")
        return
    client_set_user(core, c, u)
    c.flags |= CF_AUTHED
    if r.acl_arg == 0:
        req_write_str(core, r, b"+OK\r\n")
    else:
        hello_answer(core, c, r, <int>r.acl_arg)


cdef void users_delete(Core *core, const char *p, const char *end, Client *asker) noexcept nogil:
    """The users named (each as its length then its bytes, p to end) are gone: this Core's
    clients of theirs are closed, asker (the client of the ACL DELUSER) once it has its reply."""
    cdef size_t n
    cdef User *u
    cdef Client *t
    cdef Client *nxt
    while p + sizeof(size_t) <= end:
        memcpy(&n, p, sizeof(size_t))
        p += sizeof(size_t)
        u = user_find(core, p, n)
        p += n
        if u == NULL:
            continue
        u.deleted = True
        t = core.all_clients
        while t != NULL:
            nxt = t.next
            if t.user == u:
                if t == asker:
                    t.flags |= CF_CLOSE_AFTER_WRITE
                else:
                    client_close(core, t)
            t = nxt


cdef void acl_deleted(Core *core, Request *r) noexcept nogil:
    """ACL DELUSER succeeded: the users named in r.command are gone, and so are their clients;
    with worker threads, the other workers' at the end of this turn (worker_turn_end)."""
    cdef const char *p = buf_head(&r.command)
    users_delete(core, p, p + buf_len(&r.command), r.client)
    if core.workers != NULL:
        buf_append(&core.users_deleted, p, buf_len(&r.command))


cdef enum:
    LOG_KEYS = 4                # the fields that make two ACL LOG entries similar (Redis's ACLLogMatchEntry)
    LOG_GROUPING_S = 60         # ... when they are this close in time (ACL_LOG_GROUPING_MAX_TIME_DELTA)


cdef struct LogEntry:
    const char *p
    size_t n
    double age
    long long count
    const char *key[LOG_KEYS]   # reason, context, object, username: their value frames
    size_t key_len[LOG_KEYS]
    bint folded                 # counted in a newer similar entry of another shard


cdef int log_entry_newer(const void *a, const void *b) noexcept nogil:
    cdef double x = (<const LogEntry *>a).age
    cdef double y = (<const LogEntry *>b).age
    return -1 if x < y else (1 if x > y else 0)


cdef void log_entry_read(LogEntry *e) noexcept nogil:
    """age-seconds, count and the similarity fields of one ACL LOG entry (a RESP2 array or RESP3
    map of name, value)."""
    cdef const char *end = e.p + e.n
    cdef const char *q = <const char *>memchr(e.p, c'\n', e.n)
    cdef const char *v
    cdef ssize_t klen, vlen
    cdef size_t need
    cdef int push, i
    cdef const char *fields[LOG_KEYS]
    fields[0] = b"$6\r\nreason\r\n"
    fields[1] = b"$7\r\ncontext\r\n"
    fields[2] = b"$6\r\nobject\r\n"
    fields[3] = b"$8\r\nusername\r\n"
    e.age = 0
    e.count = 1
    if q == NULL:
        return
    q += 1
    while q < end:
        klen = reply_frame(q, end - q, &need, &push)
        if klen <= 0:
            return
        v = q + klen
        vlen = reply_frame(v, end - v, &need, &push)
        if vlen <= 0:
            return
        if klen == 18 and memcmp(q, b"$11\r\nage-seconds\r\n", 18) == 0:
            e.age = strtod((<const char *>memchr(v, c'\n', vlen) + 1) if v[0] == c'$' else v + 1, NULL)
        elif klen == 11 and memcmp(q, b"$5\r\ncount\r\n", 11) == 0 and v[0] == c':':
            parse_ll(v + 1, <size_t>vlen - 3, &e.count)
        else:
            for i in range(LOG_KEYS):
                if <size_t>klen == strlen(fields[i]) and memcmp(q, fields[i], klen) == 0:
                    e.key[i] = v
                    e.key_len[i] = <size_t>vlen
        q = v + vlen


cdef bint log_entries_similar(LogEntry *a, LogEntry *b) noexcept nogil:
    cdef int i
    if b.age - a.age >= LOG_GROUPING_S or a.age - b.age >= LOG_GROUPING_S:
        return False
    for i in range(LOG_KEYS):
        if a.key[i] == NULL or b.key[i] == NULL or a.key_len[i] != b.key_len[i] or \
                memcmp(a.key[i], b.key[i], a.key_len[i]) != 0:
            return False
    return True


cdef void log_entry_write(Buf *out, LogEntry *e) noexcept nogil:
    """The entry, its count replaced by e.count (the similar entries of every shard)."""
    cdef const char *end = e.p + e.n
    cdef const char *q = <const char *>memchr(e.p, c'\n', e.n) + 1
    cdef ssize_t klen, vlen
    cdef size_t need
    cdef int push
    buf_append(out, e.p, q - e.p)
    while q < end:
        klen = reply_frame(q, end - q, &need, &push)
        vlen = reply_frame(q + klen, end - q - klen, &need, &push)
        buf_append(out, q, klen)
        if klen == 11 and memcmp(q, b"$5\r\ncount\r\n", 11) == 0:
            buf_append_int(out, c':', e.count)
        else:
            buf_append(out, q + klen, vlen)
        q += klen + vlen


cdef void acl_log_answer(Core *core, Request *r) noexcept nogil:
    """ACL LOG [count] from every shard: their entries, newest first, count of them (10 by
    default, as Redis). An error of any shard is the answer."""
    cdef int i, j, total = 0, k, kept
    cdef long long count
    cdef const char *p
    cdef const char *end
    cdef const char *eol
    cdef long long m
    cdef ssize_t flen
    cdef size_t need
    cdef int push
    cdef LogEntry *entries
    cdef Buf *out = &core.merged
    for i in range(r.nfrags):
        p = buf_head(&r.frags[i].reply)
        if p[0] != c'*':
            req_write(core, r, p, buf_len(&r.frags[i].reply))
            return
        if parse_ll(p + 1, <size_t>(<const char *>memchr(p, c'\n', buf_len(&r.frags[i].reply)) - p - 2), &m) == 0:
            total += <int>m
    entries = <LogEntry *>malloc((total if total > 0 else 1) * sizeof(LogEntry))
    if entries == NULL:
        req_write_str(core, r, b"-ERR out of memory\r\n")
        return
    k = 0
    for i in range(r.nfrags):
        p = buf_head(&r.frags[i].reply)
        end = p + buf_len(&r.frags[i].reply)
        eol = <const char *>memchr(p, c'\n', end - p)
        p = eol + 1
        while p < end and k < total:
            flen = reply_frame(p, end - p, &need, &push)
            if flen <= 0:
                break
            memset(&entries[k], 0, sizeof(LogEntry))
            entries[k].p = p
            entries[k].n = <size_t>flen
            log_entry_read(&entries[k])
            k += 1
            p += flen
    qsort(entries, k, sizeof(LogEntry), log_entry_newer)
    # Similar entries of different shards are one entry of Redis's, counted together.
    kept = 0
    for i in range(k):
        for j in range(i):
            if not entries[j].folded and log_entries_similar(&entries[j], &entries[i]):
                entries[j].count += entries[i].count
                entries[i].folded = True
                break
        if not entries[i].folded:
            kept += 1
    count = r.acl_arg if r.acl_arg < kept else kept
    buf_clear(out)
    buf_append_int(out, c'*', count)
    j = 0
    for i in range(k):
        if j < count and not entries[i].folded:
            log_entry_write(out, &entries[i])
            j += 1
    free(entries)
    req_write(core, r, buf_head(out), buf_len(out))


cdef void acl_answered(Core *core, Request *r, Fragment *f, const char *reply, size_t n) noexcept nogil:
    """A reply to a request of MERGE_AUTH, MERGE_ACL_DELUSER or MERGE_ACL_LOG (frag_answered
    hands them here); the request is answered once all its fragments are in."""
    cdef int i
    cdef const char *first = reply
    cdef size_t first_n = n
    if r.merge == MERGE_AUTH:
        auth_answered(core, r, reply, n)
        return
    if r.nfrags > 1:
        buf_append(&f.reply, reply, n)
        if r.pending > 0:
            return
        first = buf_head(&r.frags[0].reply)
        first_n = buf_len(&r.frags[0].reply)
        for i in range(r.nfrags):
            if reply_is_error(buf_head(&r.frags[i].reply)):
                first = buf_head(&r.frags[i].reply)
                first_n = buf_len(&r.frags[i].reply)
                break
    elif r.pending > 0:
        return
    r.resolving = False
    if r.merge == MERGE_ACL_LOG:
        if r.nfrags == 1:
            buf_append(&f.reply, reply, n)
        acl_log_answer(core, r)
        return
    if not reply_is_error(first):
        acl_deleted(core, r)
    req_write(core, r, first, first_n)


cdef void route_local_acl(Core *core, Client *c, Request *r, ArgVec *av) noexcept nogil:
    """ACL ...: the changes to every shard (all of them must agree, as one Redis), the rest to
    one shard, which answers for all; every one on the client's own user's connections, so that
    the shards check the client may."""
    cdef int i
    cdef long long count = 10
    if av.argc >= 3 and arg_is(av, 1, b"setuser") and is_default_user(av.argv[2], av.argl[2]):
        req_write_str(core, r, b"-ERR the 'default' user is the database's own (its password is "
                               b"the database password): change it with the database, not ACL SETUSER\r\n")
        return
    if (av.argc >= 3 and arg_is(av, 1, b"setuser")) or \
            (av.argc == 2 and (arg_is(av, 1, b"load") or arg_is(av, 1, b"save"))) or \
            (av.argc == 3 and arg_is(av, 1, b"log") and arg_is(av, 2, b"reset")):
        r.merge = MERGE_ALL_SUCCEEDED
        route_all_shards(core, r, av)
        return
    if av.argc >= 3 and arg_is(av, 1, b"deluser"):
        for i in range(2, av.argc):
            if buf_append(&r.command, <const char *>&av.argl[i], sizeof(size_t)) < 0 or \
                    buf_append(&r.command, av.argv[i], av.argl[i]) < 0:
                req_write_str(core, r, b"-ERR out of memory\r\n")
                return
        r.merge = MERGE_ACL_DELUSER
        r.resolving = True
        route_all_shards(core, r, av)
        return
    if arg_is(av, 1, b"log") and (av.argc == 2 or (av.argc == 3 and
            parse_ll(av.argv[2], av.argl[2], &count) == 0 and count >= 0)):
        r.acl_arg = count
        r.merge = MERGE_ACL_LOG
        r.resolving = True
        route_all_shards(core, r, av)
        return
    # GETUSER, LIST, USERS, CAT, WHOAMI, GENPASS, DRYRUN, HELP and the errors: one shard says.
    r.pending = 1
    frag_send(core, default_shard(core), &r.frag0, av.wire, av.wire_len)


cdef inline void backend_expire(Core *core, Backend *b) noexcept nogil:
    """As backends_tick does for the shards' shared connections: a late one has its shard
    probed (busy.pxi), and fails past the backend timeout unless the shard runs a script."""
    if b != NULL and b.qhead != NULL and core.backend_timeout_us > 0 \
            and core.now_us - b.qhead.sent_us > PROBE_AFTER_US:
        busy_tick(core, b.shard, True)
        if core.now_us - b.qhead.sent_us > core.backend_timeout_us \
                and not shard_keeps_waiting(core, b.shard):
            backend_fail(core, b, b"timeout waiting for")


cdef void acl_tick(Core *core) noexcept nogil:
    """Timers: the auth checkers' and users' connections late to answer fail; a user no client
    is authenticated as any more, with nothing in flight, is freed (connections closed, secret
    wiped)."""
    cdef int i, j
    cdef User *u
    cdef User **link = &core.users
    cdef bint busy
    cdef Backend *b
    for i in range(core.nshards):
        backend_expire(core, core.shards[i].auth_checker)
    while link[0] != NULL:
        u = link[0]
        busy = False
        for i in range(u.nshards):
            if u.shards[i].conns == NULL:
                continue
            for j in range(2 * core.conns_per_shard):
                b = u.shards[i].conns[j]
                if b != NULL and b.qhead != NULL:
                    busy = True
                    backend_expire(core, b)
        if u.refs <= 0 and not busy:
            link[0] = u.next
            user_free(core, u, True)
        else:
            link = &u.next


cdef void acl_close(Core *core, bint answer) noexcept nogil:
    """Every user and auth checker goes (see user_free for `answer`)."""
    cdef int i
    cdef User *u
    cdef Backend *b
    while core.users != NULL:
        u = core.users
        core.users = u.next
        user_free(core, u, answer)
    for i in range(core.nshards):
        b = core.shards[i].auth_checker
        if b == NULL:
            continue
        core.shards[i].auth_checker = NULL
        if answer:
            if b.fd >= 0:
                backend_drop(core, b, b"proxy closed its connection to")
            b.next_closed = core.closed_backends
            core.closed_backends = b
        else:
            backend_socket_close(b)
            buf_free(&b.rbuf)
            buf_free(&b.wbuf)
            free(b)
