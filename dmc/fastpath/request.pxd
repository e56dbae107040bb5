# Requests and their fragments, from parsed to written.
# Declarations; the code is in request.pxi.

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
    bint silent             # CLIENT REPLY OFF / SKIP when it was made: its reply is not written
    bint probe              # the proxy's busy probe of a shard (busy.pxi), no client's
    double *weights         # ZUNION/ZINTER across shards: WEIGHTS, one per key (NULL: all 1)
    int aggregate           #   AGGREGATE: 0 sum, 1 min, 2 max
    bint withscores
    Buf command             # while resolving: the request's own bytes, sent once routed
    int nkeys               # MERGE_KEYED_ARRAY: fragment index of each key, in key order
    unsigned short *key_frag


cdef Request *req_alloc(Core *core) noexcept nogil
cdef Request *req_get(Core *core, Client *c, CommandInfo *cmd) noexcept nogil
cdef int req_fragment(Request *r, int n) noexcept nogil
cdef void req_put(Core *core, Request *r) noexcept nogil
cdef void frag_answer_unavailable(Core *core, Fragment *f, const char *label) noexcept nogil
cdef void frag_answered(Core *core, Fragment *f, const char *reply, size_t n) noexcept nogil
cdef void req_account(Request *r, const char *reply, long long now_us) noexcept nogil
cdef void req_write(Core *core, Request *r, const char *reply, size_t n) noexcept nogil
cdef void req_write_error(Core *core, Request *r, const char *fmt, const char *arg) noexcept nogil
