# Client-side caching (CLIENT TRACKING): the proxy's tracking table and its shard connections.
# Declarations; the code (and the design) is in tracking.pxi.

cdef enum:
    CF_TRACKING = 1 << 20           # Client.flags: CLIENT TRACKING is on (tflags says how)


# Client.tflags: the tracking mode, as Redis's CLIENT_TRACKING_* flags
cdef enum:
    TF_BCAST = 1
    TF_OPTIN = 2
    TF_OPTOUT = 4
    TF_NOLOOP = 8
    TF_CACHING = 16                 # CLIENT CACHING yes (OPTIN) / no (OPTOUT) given for the next command
    TF_BROKEN_REDIR = 32            # its REDIRECT client went away


cdef enum:
    TRACKING_MAX_KEYS = 1000000     # the proxy's table, as Redis's tracking-table-max-keys default


cdef struct TrackRef:               # a client, as the table remembers it: registry slot and id
    unsigned long long id
    int slot


cdef struct TrackEntry:
    TrackEntry *next                # in its bucket
    unsigned long long hash
    int nrefs
    int cap
    TrackRef *refs
    size_t keylen
    char *key                       # the key's bytes, allocated with the entry


cdef struct TrackTable:             # key -> clients: chained hash, doubled when count > nbuckets
    TrackEntry **buckets
    size_t nbuckets
    size_t count


cdef struct Tracking:               # one per Core, allocated when the first client turns tracking on
    TrackTable keys                 # default mode: key -> clients that read it since its last invalidation
    TrackTable written              # BCAST NOLOOP: key -> clients that wrote it (left out of its broadcast)
    Client **reg                    # registered clients (tracking ones and REDIRECT targets), by slot
    int reg_cap
    int *reg_free                   # free slots (1-based), a stack
    int reg_nfree
    int reg_top                     # slots handed out so far
    int ntracking                   # clients with tracking on
    int nbcast                      # of which in BCAST mode
    size_t max_keys
    long long null_until_us         # flush de-duplication: the other shards' nulls for one flush
    ArgVec av                       # an invalidation's keys, parsed
    Buf frame                       # scratch: the frame sent to a client


cdef void tracking_free(Core *core) noexcept nogil
cdef void tracking_client_closed(Core *core, Client *c) noexcept nogil
cdef void tracking_off(Core *core, Client *c) noexcept nogil
cdef void tracking_command(Core *core, Client *c, CommandInfo *cmd, ArgVec *av) noexcept nogil
cdef Backend *tracked_backend(Core *core, int shard, int proto) noexcept nogil
cdef int rsp_tracked(Core *core, Backend *b, const char *p, size_t n, int push) noexcept nogil
cdef int rsp_bcast(Core *core, Backend *b, const char *p, size_t n, int push) noexcept nogil
cdef void tracking_conn_lost(Core *core, Backend *b) noexcept nogil
cdef void tracking_tick(Core *core) noexcept nogil
cdef void tracking_read_first(Core *core, epoll_event *events, int n) noexcept nogil
cdef void tracking_close(Core *core) noexcept nogil
cdef void conn_drop(Core *core, Backend *b, const char *why) noexcept nogil
cdef bint prefix_next(Buf *prefixes, size_t *pos, const char **p, size_t *n) noexcept nogil
cdef bint prefix_arg_is_keyword(ArgVec *av, int j) noexcept nogil
cdef void bcast_sync(Core *core) noexcept nogil
cdef void bcast_confirm(Core *core, Request *r) noexcept nogil
cdef void tracking_map_changed(Core *core) noexcept nogil
cdef void route_client_tracking(Core *core, Client *c, Request *r, ArgVec *av) noexcept nogil
cdef void route_client_caching(Core *core, Client *c, Request *r, ArgVec *av) noexcept nogil
cdef void route_client_getredir(Core *core, Client *c, Request *r) noexcept nogil
cdef void route_client_trackinginfo(Core *core, Client *c, Request *r) noexcept nogil
