# MONITOR: every command the proxy receives, as redis-server shows it to its monitors.
#
# A client that sends MONITOR joins the core's list of monitors and from then on receives one
# line per command any client of this endpoint sends, in Redis's format:
#     +1700000000.123456 [0 127.0.0.1:50712] "SET" "key" "value"
# (arguments quoted and escaped as Redis's sdscatrepr does; AUTH and HELLO's AUTH credentials
# shown as "(redacted)"; administrative commands, MONITOR among them, not shown). Lines are made
# when the proxy routes a command, so the commands of every shard come interleaved in the order
# the proxy saw them. With no monitor, this costs one pointer test per command.


cdef void monitor_start(Core *core, Client *c, Request *r) noexcept nogil:
    if c.flags & CF_MONITOR:
        req_write(core, r, b"", 0)       # Redis ignores a second MONITOR, without a reply
        return
    c.flags |= CF_MONITOR
    c.next_monitor = core.monitors
    core.monitors = c
    core.counters.monitors += 1
    if core.workers != NULL:
        dmc_atomic_add_int(&core.workers.monitors, 1)
    req_write_str(core, r, b"+OK\r\n")


cdef void monitor_remove(Core *core, Client *c) noexcept nogil:
    cdef Client **p = &core.monitors
    while p[0] != NULL:
        if p[0] == c:
            p[0] = c.next_monitor
            core.counters.monitors -= 1
            if core.workers != NULL:
                dmc_atomic_add_int(&core.workers.monitors, -1)
            break
        p = &p[0].next_monitor
    c.flags &= ~CF_MONITOR
    c.next_monitor = NULL


cdef void append_repr(Buf *out, const char *p, size_t n) noexcept nogil:
    """An argument as Redis's sdscatrepr writes it: quoted, escapes for quotes, backslashes and
    control characters, \\xHH for other bytes that are not printable."""
    cdef size_t i
    cdef unsigned char ch
    cdef char hexa[5]
    buf_append(out, b"\"", 1)
    for i in range(n):
        ch = <unsigned char>p[i]
        if ch == c'\\' or ch == c'"':
            buf_append(out, b"\\", 1)
            buf_append(out, <char *>&ch, 1)
        elif ch == c'\n':
            buf_append(out, b"\\n", 2)
        elif ch == c'\r':
            buf_append(out, b"\\r", 2)
        elif ch == c'\t':
            buf_append(out, b"\\t", 2)
        elif ch == 7:
            buf_append(out, b"\\a", 2)
        elif ch == 8:
            buf_append(out, b"\\b", 2)
        elif 32 <= ch <= 126:
            buf_append(out, <char *>&ch, 1)
        else:
            snprintf(hexa, sizeof(hexa), b"\\x%02x", ch)
            buf_append(out, hexa, 4)
    buf_append(out, b"\"", 1)


cdef bint monitor_redacted(CommandInfo *cmd, ArgVec *av, int j) noexcept nogil:
    """Is argument j a credential? (AUTH's arguments, HELLO ... AUTH user password)"""
    if cmd.local == LOCAL_AUTH:
        return j >= 1
    if cmd.local == LOCAL_HELLO:
        return (j >= 3 and arg_is(av, j - 1, b"auth")) or (j >= 4 and arg_is(av, j - 2, b"auth"))
    return False


cdef void monitor_feed(Core *core, Client *c, CommandInfo *cmd, ArgVec *av) noexcept nogil:
    cdef Buf *line = &core.monitor_line
    cdef Client *m
    cdef Client *nxt
    cdef timespec ts
    cdef char head[96]
    cdef char addr[48]
    cdef int j
    clock_gettime(CLOCK_REALTIME, &ts)
    format_address(&c.peer, addr)
    snprintf(head, sizeof(head), b"+%ld.%06ld [0 %s] ", <long>ts.tv_sec,
             <long>(ts.tv_nsec // 1000), addr)
    buf_clear(line)
    buf_append_str(line, head)
    for j in range(av.argc):
        if j > 0:
            buf_append(line, b" ", 1)
        if monitor_redacted(cmd, av, j):
            buf_append_str(line, b"\"(redacted)\"")
        else:
            append_repr(line, av.argv[j], av.argl[j])
    buf_append(line, b"\r\n", 2)
    m = core.monitors
    while m != NULL:
        nxt = m.next_monitor
        if not (m.flags & CF_CLOSED):
            buf_append(&m.wbuf, buf_head(line), buf_len(line))
            client_mark_dirty(core, m)
            if m != c and over_output_limit(core, m):
                client_close(core, m)       # a monitor that does not keep up, as in Redis
        m = nxt
    if core.workers != NULL:
        worker_monitor_feed(core, line)     # the other workers' monitors
