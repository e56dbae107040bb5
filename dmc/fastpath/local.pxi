# What the proxy answers itself: PING, ECHO, AUTH, HELLO, SELECT, QUIT, RESET, and the local
# half of MULTI/EXEC/DISCARD, WATCH, CLIENT and MONITOR (transaction.pxi, local_client.pxi,
# monitor.pxi).


cdef int check_credentials(Core *core, Client *c, const char *user, size_t ulen,
                           const char *pw, size_t plen) noexcept nogil:
    """AUTH [user] password, for the database's `default` user: 0 accepted, -1 refused."""
    if user != NULL and not arg_equals_ci(user, ulen, b"default", 7):
        return -1
    if core.password == NULL:
        c.flags |= CF_AUTHED        # nopass: any password is accepted for `default`
        return 0
    if plen == strlen(core.password) and memcmp(pw, core.password, plen) == 0:
        c.flags |= CF_AUTHED
        return 0
    return -1


cdef void client_reset(Core *core, Client *c) noexcept nogil:
    """RESET: back to a fresh connection's state (the shard-side state goes with `dedicated`)."""
    multi_reset(c)
    c.flags &= ~(CF_WATCH | CF_PUBSUB | CF_PUBSUB_SYNC | CF_REPLY_OFF | CF_REPLY_SKIP)
    if c.dedicated != NULL:
        dedicated_close(core, c.dedicated)
        c.dedicated = NULL
    c.proto = 2
    buf_free(&c.name)
    if core.password != NULL:
        c.flags &= ~CF_AUTHED


cdef void route_local(Core *core, Client *c, Request *r, ArgVec *av) noexcept nogil:
    cdef long long db
    cdef int k
    cdef Buf *out = &core.merged
    cdef int local = r.cmd.local
    buf_clear(out)
    if local == LOCAL_PING:
        if core.nbusy > 0 and av.argc <= 2 and busy_reply(core) != NULL:
            # A shard runs a script: the database is busy, as one Redis would be.
            req_write_str(core, r, busy_reply(core))
            return
        if av.argc == 1:
            req_write_str(core, r, b"+PONG\r\n")
            return
        if av.argc == 2:
            buf_append_bulk(out, av.argv[1], av.argl[1])
            req_write(core, r, buf_head(out), buf_len(out))
            return
    elif local == LOCAL_ECHO:
        if av.argc == 2:
            buf_append_bulk(out, av.argv[1], av.argl[1])
            req_write(core, r, buf_head(out), buf_len(out))
            return
    elif local == LOCAL_AUTH:
        if av.argc == 2 or av.argc == 3:
            if av.argc == 2 and core.password == NULL:
                req_write_str(core, r, b"-ERR AUTH <password> called without any password "
                                   b"configured for the default user. Are you sure your configuration is correct?\r\n")
            elif check_credentials(core, c, av.argv[1] if av.argc == 3 else NULL, av.argl[1],
                                   av.argv[av.argc - 1], av.argl[av.argc - 1]) == 0:
                req_write_str(core, r, b"+OK\r\n")
            else:
                req_write_str(core, r, b"-WRONGPASS invalid username-password pair or user is disabled.\r\n")
            return
    elif local == LOCAL_RESET:
        if av.argc == 1:
            client_reset(core, c)
            r.silent = False        # as Redis: the flags go before RESET answers
            req_write_str(core, r, b"+RESET\r\n")
            return
    elif local == LOCAL_HELLO:
        for k in range(2, av.argc - 2):
            if arg_is(av, k, b"auth"):
                if check_credentials(core, c, av.argv[k + 1], av.argl[k + 1], av.argv[k + 2],
                                     av.argl[k + 2]) < 0:
                    req_write_str(core, r, b"-WRONGPASS invalid username-password pair or user is disabled.\r\n")
                    return
                break
        if not (c.flags & CF_AUTHED):
            req_write_str(core, r, b"-NOAUTH HELLO must be called with the client already "
                               b"authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be "
                               b"used to authenticate the client and select the RESP protocol version at the same time\r\n")
            return
        if av.argc >= 2:
            if parse_ll(av.argv[1], av.argl[1], &db) < 0:
                req_write_str(core, r, b"-ERR Protocol version is not an integer or out of range\r\n")
                return
            if db != 2 and db != 3:
                req_write_str(core, r, b"-NOPROTO sorry, this protocol version is not supported.\r\n")
                return
            # From now on the client's requests go to connections speaking its protocol.
            c.proto = <int>db
        buf_append_str(out, b"%7\r\n" if c.proto == 3 else b"*14\r\n")
        buf_append_str(out, b"$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n")
        buf_append_bulk(out, core.server_version, strlen(core.server_version))
        buf_append_str(out, b"$5\r\nproto\r\n:3\r\n$2\r\nid\r\n" if c.proto == 3
                       else b"$5\r\nproto\r\n:2\r\n$2\r\nid\r\n")
        buf_append_int(out, c':', <long long>c.id)
        buf_append_str(out, b"$4\r\nmode\r\n$10\r\nstandalone\r\n$4\r\nrole\r\n$6\r\nmaster\r\n"
                       b"$7\r\nmodules\r\n*0\r\n")
        req_write(core, r, buf_head(out), buf_len(out))
        return
    elif local == LOCAL_MULTI:
        if av.argc == 1:
            if c.flags & CF_MULTI:
                req_write_str(core, r, b"-ERR MULTI calls can not be nested\r\n")
                return
            multi_reset(c)
            c.flags |= CF_MULTI
            req_write_str(core, r, b"+OK\r\n")
            return
    elif local == LOCAL_EXEC or local == LOCAL_DISCARD:
        if not (c.flags & CF_MULTI):
            req_write_str(core, r, b"-ERR EXEC without MULTI\r\n" if local == LOCAL_EXEC
                               else b"-ERR DISCARD without MULTI\r\n")
            return
        if av.argc == 1:
            if local == LOCAL_EXEC:
                multi_exec(core, c, r)
            else:
                multi_reset(c)
                watch_end(core, c, True)
                req_write_str(core, r, b"+OK\r\n")
            return
        c.flags |= CF_MULTI_DIRTY
    elif local == LOCAL_WATCH:
        route_watch(core, c, r, av)
        return
    elif local == LOCAL_UNWATCH:
        if av.argc == 1:
            watch_end(core, c, True)
            req_write_str(core, r, b"+OK\r\n")
            return
    elif local == LOCAL_CLIENT:
        route_local_client(core, c, r, av)
        return
    elif local == LOCAL_MONITOR:
        if av.argc == 1:
            monitor_start(core, c, r)
            return
    elif local == LOCAL_QUIT:
        req_write_str(core, r, b"+OK\r\n")
        c.flags |= CF_CLOSE_AFTER_WRITE
        return
    elif local == LOCAL_SELECT:
        if av.argc == 2:
            if parse_ll(av.argv[1], av.argl[1], &db) < 0:
                req_write_str(core, r, b"-ERR value is not an integer or out of range\r\n")
            elif db != 0:
                req_write_str(core, r, b"-ERR DB index is out of range\r\n")
            else:
                req_write_str(core, r, b"+OK\r\n")
            return
    req_write_error(core, r, b"-ERR wrong number of arguments for '%s' command\r\n", r.cmd.name)
