# CLIENT ...: about the proxy's own client connections. The shards' clients are the proxy's
# backend connections, so these are answered here, in the shapes redis-server uses.


cdef Client *client_by_id(Core *core, long long id) noexcept nogil:
    cdef Client *c = core.all_clients
    while c != NULL:
        if <long long>c.id == id:
            return c
        c = c.next
    return NULL


cdef bint has_address(Client *c, const char *text, size_t n) noexcept nogil:
    cdef char addr[48]
    format_address(&c.peer, addr)
    return arg_equals_ci(text, n, addr, strlen(addr))


cdef void client_info_line(Core *core, Client *c, Buf *out) noexcept nogil:
    """One line of CLIENT LIST, with the fields redis-server shows (those a proxy knows)."""
    cdef char line[512]
    cdef char flags[8]
    cdef int nf = 0
    cdef const char *cmd = b"NULL"
    cdef char addr[48]
    cdef const char *uname = b"default"
    cdef int uname_len = 7
    format_address(&c.peer, addr)
    if c.user != NULL:
        uname = c.user.name
        uname_len = <int>c.user.name_len
    if c.last_cmd != NULL:
        cmd = c.last_cmd.name
    if c.flags & CF_PUBSUB:
        flags[nf] = c'P'
        nf += 1
    if c.flags & CF_MULTI:
        flags[nf] = c'x'
        nf += 1
    if c.flags & CF_BLOCKED:
        flags[nf] = c'b'
        nf += 1
    if c.flags & CF_MONITOR:
        flags[nf] = c'O'
        nf += 1
    if nf == 0:
        flags[nf] = c'N'
        nf += 1
    flags[nf] = 0
    snprintf(line, sizeof(line),
             b"id=%llu addr=%s laddr=%s fd=%d name=%.*s age=%lld idle=%lld flags=%s db=0 "
             b"multi=%d qbuf=%zu obl=%zu oll=%d omem=%zu events=r cmd=%s user=%.*s resp=%d\n",
             c.id, addr, core.listen_addr, c.fd, <int>buf_len(&c.name), buf_head(&c.name),
             (core.now_us - c.created_us) // 1000000, (core.now_us - c.last_us) // 1000000,
             flags, c.multi_count if c.flags & CF_MULTI else -1, buf_len(&c.rbuf),
             buf_len(&c.wbuf), c.inflight, buf_len(&c.wbuf) + c.held,
             cmd, uname_len, uname, c.proto)
    buf_append_str(out, line)


cdef bint client_listed(Client *c, ArgVec *av) noexcept nogil:
    """CLIENT LIST filters: TYPE normal|pubsub|master|replica, ID id ..."""
    cdef int i
    cdef long long id
    cdef bint any_id = False, id_match = False
    i = 2
    while i < av.argc:
        if arg_is(av, i, b"type") and i + 1 < av.argc:
            if arg_is(av, i + 1, b"pubsub"):
                if not (c.flags & CF_PUBSUB):
                    return False
            elif arg_is(av, i + 1, b"normal"):
                if c.flags & CF_PUBSUB:
                    return False
            else:
                return False        # master, replica: none among a proxy's clients
            i += 2
        elif arg_is(av, i, b"id"):
            i += 1
            while i < av.argc and parse_ll(av.argv[i], av.argl[i], &id) == 0:
                any_id = True
                id_match = id_match or <long long>c.id == id
                i += 1
        else:
            i += 1
    return id_match or not any_id


cdef void answer_bulk_or_null(Core *core, Client *c, Request *r, const char *p, size_t n,
                              bint null) noexcept nogil:
    cdef Buf *out = &core.merged
    buf_clear(out)
    if null:
        buf_append_str(out, b"_\r\n" if c.proto == 3 else b"$-1\r\n")
    else:
        buf_append_bulk(out, p, n)
    req_write(core, r, buf_head(out), buf_len(out))


cdef void route_local_client(Core *core, Client *c, Request *r, ArgVec *av) noexcept nogil:
    cdef Buf *out = &core.merged
    cdef Client *t
    cdef Client *nxt
    cdef long long id, killed = 0
    cdef size_t i
    cdef bint skipme = True
    cdef int k, w
    cdef Core *o = core
    if av.argc < 2:
        req_write_str(core, r, b"-ERR wrong number of arguments for 'client' command\r\n")
        return
    if arg_is(av, 1, b"id") and av.argc == 2:
        buf_clear(out)
        buf_append_int(out, c':', <long long>c.id)
        req_write(core, r, buf_head(out), buf_len(out))
    elif arg_is(av, 1, b"setname") and av.argc == 3:
        for i in range(av.argl[2]):
            if av.argv[2][i] < c'!' or av.argv[2][i] > c'~':
                req_write_str(core, r, b"-ERR Client names cannot contain spaces, newlines or special characters.\r\n")
                return
        buf_clear(&c.name)
        buf_append(&c.name, av.argv[2], av.argl[2])
        req_write_str(core, r, b"+OK\r\n")
    elif arg_is(av, 1, b"getname") and av.argc == 2:
        answer_bulk_or_null(core, c, r, buf_head(&c.name), buf_len(&c.name), buf_len(&c.name) == 0)
    elif arg_is(av, 1, b"setinfo") and av.argc == 4:
        if arg_is(av, 2, b"lib-name") or arg_is(av, 2, b"lib-ver"):
            req_write_str(core, r, b"+OK\r\n")
        else:
            req_write_str(core, r, b"-ERR Unrecognized option\r\n")
    elif (arg_is(av, 1, b"no-evict") or arg_is(av, 1, b"no-touch")) and av.argc == 3 and \
            (arg_is(av, 2, b"on") or arg_is(av, 2, b"off")):
        req_write_str(core, r, b"+OK\r\n")
    elif arg_is(av, 1, b"info") and av.argc == 2:
        buf_clear(&core.subcommand)
        client_info_line(core, c, &core.subcommand)
        answer_bulk_or_null(core, c, r, buf_head(&core.subcommand), buf_len(&core.subcommand), False)
    elif arg_is(av, 1, b"list"):
        buf_clear(&core.subcommand)
        for w in range(worker_count(core)):         # every worker's clients (workers.pxi)
            o = worker_core(core, w)
            t = o.all_clients
            while t != NULL:
                if client_listed(t, av):
                    client_info_line(o, t, &core.subcommand)
                t = t.next
        answer_bulk_or_null(core, c, r, buf_head(&core.subcommand), buf_len(&core.subcommand), False)
    elif arg_is(av, 1, b"unblock") and (av.argc == 3 or av.argc == 4):
        if parse_ll(av.argv[2], av.argl[2], &id) < 0:
            req_write_str(core, r, b"-ERR value is not an integer or out of range\r\n")
            return
        if av.argc == 4 and not (arg_is(av, 3, b"timeout") or arg_is(av, 3, b"error")):
            req_write_str(core, r, b"-ERR CLIENT UNBLOCK reason should be TIMEOUT or ERROR\r\n")
            return
        t = NULL
        for w in range(worker_count(core)):
            o = worker_core(core, w)
            t = client_by_id(o, id)
            if t != NULL:
                break
        if t == NULL or not (t.flags & CF_BLOCKED):
            req_write_str(core, r, b":0\r\n")
            return
        client_unblock(o, t, av.argc == 4 and arg_is(av, 3, b"error"))
        req_write_str(core, r, b":1\r\n")
    elif arg_is(av, 1, b"kill") and av.argc >= 3:
        if av.argc == 3:
            # Old form: CLIENT KILL addr:port
            t = NULL
            for w in range(worker_count(core)):
                o = worker_core(core, w)
                t = o.all_clients
                while t != NULL:
                    if has_address(t, av.argv[2], av.argl[2]):
                        break
                    t = t.next
                if t != NULL:
                    break
            if t == NULL:
                req_write_str(core, r, b"-ERR No such client\r\n")
                return
            req_write_str(core, r, b"+OK\r\n")
            if t == c:
                c.flags |= CF_CLOSE_AFTER_WRITE
            else:
                client_close(o, t)
            return
        if av.argc % 2 != 0:
            req_write_str(core, r, b"-ERR syntax error\r\n")
            return
        id = -1
        k = 2
        while k + 1 < av.argc:
            if arg_is(av, k, b"id"):
                if parse_ll(av.argv[k + 1], av.argl[k + 1], &id) < 0:
                    req_write_str(core, r, b"-ERR client-id should be greater than 0\r\n")
                    return
            elif arg_is(av, k, b"skipme"):
                skipme = not arg_is(av, k + 1, b"no")
            elif not arg_is(av, k, b"addr"):
                req_write_str(core, r, b"-ERR syntax error\r\n")
                return
            k += 2
        for w in range(worker_count(core)):
            o = worker_core(core, w)
            t = o.all_clients
            while t != NULL:
                nxt = t.next
                if (t != c or not skipme) and (id < 0 or <long long>t.id == id):
                    for k in range(2, av.argc - 1, 2):
                        if arg_is(av, k, b"addr") and not has_address(t, av.argv[k + 1], av.argl[k + 1]):
                            break
                    else:
                        killed += 1
                        if t == c:
                            c.flags |= CF_CLOSE_AFTER_WRITE
                        else:
                            client_close(o, t)
                t = nxt
        buf_clear(out)
        buf_append_int(out, c':', killed)
        req_write(core, r, buf_head(out), buf_len(out))
    elif arg_is(av, 1, b"reply") and av.argc == 3:
        client_reply(core, c, r, av)
    elif arg_is(av, 1, b"tracking") and av.argc >= 3:
        route_client_tracking(core, c, r, av)
    elif arg_is(av, 1, b"caching") and av.argc == 3:
        route_client_caching(core, c, r, av)
    elif arg_is(av, 1, b"getredir") and av.argc == 2:
        route_client_getredir(core, c, r)
    elif arg_is(av, 1, b"trackinginfo") and av.argc == 2:
        route_client_trackinginfo(core, c, r)
    elif arg_is(av, 1, b"tracking") or arg_is(av, 1, b"caching") or arg_is(av, 1, b"getredir") \
            or arg_is(av, 1, b"trackinginfo") or arg_is(av, 1, b"reply"):
        buf_clear(out)
        buf_append_str(out, b"-ERR wrong number of arguments for 'client|")
        buf_append(out, av.argv[1], av.argl[1])
        buf_append_str(out, b"' command\r\n")
        req_write(core, r, buf_head(out), buf_len(out))
    elif arg_is(av, 1, b"pause") or arg_is(av, 1, b"unpause"):
        buf_clear(out)
        buf_append_str(out, b"-ERR CLIENT ")
        buf_append(out, av.argv[1], av.argl[1] if av.argl[1] < 32 else 32)
        buf_append_str(out, b" is not supported by this proxy yet\r\n")
        req_write(core, r, buf_head(out), buf_len(out))
    else:
        buf_clear(out)
        buf_append_str(out, b"-ERR unknown subcommand or wrong number of arguments for '")
        buf_append(out, av.argv[1], av.argl[1] if av.argl[1] < 64 else 64)
        buf_append_str(out, b"'. Try CLIENT HELP.\r\n")
        req_write(core, r, buf_head(out), buf_len(out))


cdef void client_reply(Core *core, Client *c, Request *r, ArgVec *av) noexcept nogil:
    """CLIENT REPLY ON|OFF|SKIP, as Redis: ON answers +OK (even when replies were off), OFF and
    SKIP answer nothing; SKIP drops the next request's reply (req_get), and does nothing while
    replies are off."""
    if arg_is(av, 2, b"on"):
        c.flags &= ~(CF_REPLY_OFF | CF_REPLY_SKIP)
        r.silent = False
    elif arg_is(av, 2, b"off"):
        c.flags |= CF_REPLY_OFF
        r.silent = True
    elif arg_is(av, 2, b"skip"):
        if not (c.flags & CF_REPLY_OFF):
            c.flags |= CF_REPLY_SKIP
        r.silent = True
    else:
        req_write_str(core, r, b"-ERR syntax error\r\n")
        return
    req_write_str(core, r, b"+OK\r\n")
