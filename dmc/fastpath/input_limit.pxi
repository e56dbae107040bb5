# Input buffering limits (Redis's behaviour, for the input a client has sent and the proxy has
# not yet parsed: a partial request in its rbuf, a large bulk string arriving say):
#
# - client-query-buffer-limit (core.client_query_limit, per database): a client whose unparsed
#   input passes it is disconnected, without a reply, as Redis does ("Closing client that
#   reached max query buffer length" in Redis's log; counted in qbuf_limit_disconnections).
# - the process's input budget (dmc_input_budget, Redis's maxmemory-clients for input; shared
#   by every endpoint of the process: one atomic counter): past it, the loop whose client's read
#   crossed it disconnects its own clients with the largest input, largest first, until the
#   total is within the budget or none of them holds EVICT_FLOOR bytes (Redis's client eviction
#   also answers nothing; counted in evicted_clients). Each loop evicts only its own clients (no
#   loop touches another's), so a client that keeps sending is evicted by its own loop at its
#   next read; clients with little input keep being served.
#
# The cost when nothing is buffered is one comparison per read (input_account): a client's
# counted bytes (c.input_counted) follow buf_len(&c.rbuf) only when that changes.


cdef bint input_account(Core *core, Client *c) noexcept nogil:
    """Count the client's unparsed input in the process's total; False (and the client closed)
    if it passed its limit, or was evicted for the budget."""
    cdef size_t now = buf_len(&c.rbuf) if not (c.flags & CF_CLOSED) else 0
    cdef size_t total, budget
    if now == c.input_counted:
        return not (c.flags & CF_CLOSED)
    if now < c.input_counted:
        dmc_input_sub(c.input_counted - now)
        c.input_counted = now
        return True
    total = dmc_input_add(now - c.input_counted)
    c.input_counted = now
    if core.client_query_limit > 0 and now > core.client_query_limit:
        core.qbuf_limit_disconnections += 1
        client_close(core, c)
        return False
    budget = dmc_input_get_budget()
    if budget > 0 and total > budget:
        evict_largest(core, total, budget)
    return not (c.flags & CF_CLOSED)


cdef void evict_largest(Core *core, size_t total, size_t budget) noexcept nogil:
    cdef Client *c
    cdef Client *largest
    while total > budget:
        largest = NULL
        c = core.all_clients
        while c != NULL:
            if c.input_counted >= EVICT_FLOOR and (largest == NULL or
                                                   c.input_counted > largest.input_counted):
                largest = c
            c = c.next
        if largest == NULL:
            return
        core.evicted_clients += 1
        client_close(core, largest)          # input_release: the total falls by its input
        total = dmc_input_total()


cdef void input_release(Client *c) noexcept nogil:
    """The client is closed: its input leaves the total."""
    if c.input_counted:
        dmc_input_sub(c.input_counted)
        c.input_counted = 0
