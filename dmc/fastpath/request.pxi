# The lifecycle of a request: parsed -> routed -> (fragmented) -> sent -> answered ->
# (coalesced) -> written, in the order the client sent it.
#
# A Request belongs to its client's queue, in arrival order. It is answered through one or more
# Fragments; each Fragment waits in one backend connection's queue for one reply. A request
# whose replies are all in is `done`; done requests are written to the client strictly from the
# head of its queue, so a pipeline that spans shards still gets its replies in request order.
# A client that goes away leaves its unanswered requests orphaned (client = NULL): they are
# freed when their last reply arrives, so no backend queue ever points at freed memory.

cdef struct Fragment:
    Fragment *next          # next in the backend connection's queue
    Request *req
    long long sent_us       # when it was queued on the backend connection
    Buf reply               # the reply, kept only when several fragments are merged
    size_t cursor           # MERGE_KEYED_ARRAY: read position in `reply`
    int skip                # replies to drop before this fragment's own (MULTI, QUEUED ...)


cdef struct Request:
    Request *next           # next in the client's queue
    Client *client          # NULL once the client is gone
    CommandInfo *cmd        # NULL for a command the table does not know
    int pending             # fragments still waiting for their reply
    int nfrags
    Fragment *frags         # nfrags fragments: &frag0, or an array for split / fan-out
    Fragment frag0
    int merge
    bint done               # answered; `reply` holds the answer until it can be written
    Buf reply
    long long started_us
    bint resolving          # its keys are being asked of a shard (COMMAND GETKEYS)
    int scan_position       # SCAN: index in the map's shard list of the shard asked
    bint blocking           # holds its client's later requests until answered
    double *weights         # ZUNION/ZINTER across shards: WEIGHTS, one per key (NULL: all 1)
    int aggregate           #   AGGREGATE: 0 sum, 1 min, 2 max
    bint withscores
    Buf command             # while resolving: the request's own bytes, sent once routed
    int nkeys               # MERGE_KEYED_ARRAY: fragment index of each key, in key order
    unsigned short *key_frag


cdef Request *request_new(Client *c, CommandInfo *cmd, long long now_us) noexcept nogil:
    cdef Request *r = <Request *>calloc(1, sizeof(Request))
    if r == NULL:
        return NULL
    r.client = c
    r.cmd = cmd
    r.started_us = now_us
    r.frags = &r.frag0
    r.nfrags = 1
    r.frag0.req = r
    if c.tail == NULL:
        c.head = r
    else:
        c.tail.next = r
    c.tail = r
    c.inflight += 1
    return r


cdef int request_fragments(Request *r, int n) noexcept nogil:
    """Give r n fragments (n > 1) for a split or fan-out command."""
    cdef int i
    r.frags = <Fragment *>calloc(n, sizeof(Fragment))
    if r.frags == NULL:
        r.frags = &r.frag0
        return -1
    r.nfrags = n
    for i in range(n):
        r.frags[i].req = r
    return 0


cdef void request_free(Request *r) noexcept nogil:
    cdef int i
    if r.frags != &r.frag0:
        for i in range(r.nfrags):
            buf_free(&r.frags[i].reply)
        free(r.frags)
    buf_free(&r.frag0.reply)
    buf_free(&r.reply)
    buf_free(&r.command)
    free(r.key_frag)
    free(r.weights)
    free(r)
