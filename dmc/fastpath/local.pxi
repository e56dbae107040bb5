# What the proxy answers itself: PING, ECHO, AUTH, HELLO, SELECT, QUIT, RESET, and the local
# half of MULTI/EXEC/DISCARD, WATCH, CLIENT, MONITOR and ACL (transaction.pxi, local_client.pxi,
# monitor.pxi, acl.pxi).


cdef int check_credentials(Core *core, Client *c, const char *user, size_t ulen,
                           const char *pw, size_t plen) noexcept nogil:
    """AUTH [default] password, for the database's `default` user: 0 accepted (the client is
    `default` from now on), -1 refused. Other users are the shards' to check (acl.pxi)."""
    if user != NULL and not is_default_user(user, ulen):
        return -1
    if core.password != NULL and not (plen == strlen(core.password) and
                                      memcmp(pw, core.password, plen) == 0):
        return -1
    # No password: nopass, any password is accepted for `default`.
    c.flags |= CF_AUTHED
    client_set_user(core, c, NULL)
    return 0


cdef void hello_answer(Core *core, Client *c, Request *r, int proto) noexcept nogil:
    """HELLO's reply, the client switched to `proto` first (0: the one it speaks)."""
    cdef Buf *out = &core.merged
    if proto:
        # From now on the client's requests go to connections speaking its protocol.
        c.proto = proto
    buf_clear(out)
    buf_append_str(out, b"%7\r\n" if c.proto == 3 else b"*14\r\n")
    buf_append_str(out, b"$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n")
    buf_append_bulk(out, core.server_version, strlen(core.server_version))
    buf_append_str(out, b"$5\r\nproto\r\n:3\r\n$2\r\nid\r\n" if c.proto == 3
                   else b"$5\r\nproto\r\n:2\r\n$2\r\nid\r\n")
    buf_append_int(out, c':', <long long>c.id)
    buf_append_str(out, b"$4\r\nmode\r\n$7\r\ncluster\r\n" if core.cluster != NULL
                   else b"$4\r\nmode\r\n$10\r\nstandalone\r\n")
    buf_append_str(out, b"$4\r\nrole\r\n$6\r\nmaster\r\n$7\r\nmodules\r\n*0\r\n")
    req_write(core, r, buf_head(out), buf_len(out))


cdef void client_reset(Core *core, Client *c) noexcept nogil:
    """RESET: back to a fresh connection's state (the shard-side state goes with `dedicated`)."""
    multi_reset(c)
    tracking_off(core, c)
    c.flags &= ~(CF_WATCH | CF_PUBSUB | CF_PUBSUB_SYNC | CF_REPLY_OFF | CF_REPLY_SKIP)
    if c.dedicated != NULL:
        dedicated_close(core, c.dedicated)
        c.dedicated = NULL
    c.proto = 2
    buf_free(&c.name)
    client_set_user(core, c, NULL)
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
            elif av.argc == 3 and not is_default_user(av.argv[1], av.argl[1]):
                route_auth_check(core, c, r, av.argv[1], av.argl[1], av.argv[2], av.argl[2], 0)
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
        # In Redis's order: the protocol version, then AUTH, then the NOAUTH check.
        db = 0
        if av.argc >= 2:
            if parse_ll(av.argv[1], av.argl[1], &db) < 0:
                req_write_str(core, r, b"-ERR Protocol version is not an integer or out of range\r\n")
                return
            if db != 2 and db != 3:
                req_write_str(core, r, b"-NOPROTO sorry, this protocol version is not supported.\r\n")
                return
        for k in range(2, av.argc - 2):
            if arg_is(av, k, b"auth"):
                if not is_default_user(av.argv[k + 1], av.argl[k + 1]):
                    route_auth_check(core, c, r, av.argv[k + 1], av.argl[k + 1], av.argv[k + 2],
                                     av.argl[k + 2], <int>db)
                    return
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
        hello_answer(core, c, r, <int>db)
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
    elif local == LOCAL_ACL:
        route_local_acl(core, c, r, av)
        return
    elif local == LOCAL_CLUSTER:
        route_local_cluster(core, c, r, av)
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
