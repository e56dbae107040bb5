# The command table: name -> arity, key specs and routing policy.
# Declarations; the code is in commands.pxi.

cdef enum:
    CMD_NAME_MAX = 48
    CMD_TABLE_SIZE = 2048
    MAX_KEY_SPECS = 6


# begin_search / find_keys types of a key spec
cdef enum:
    BS_INDEX = 1
    BS_KEYWORD = 2
    FK_RANGE = 1
    FK_KEYNUM = 2


# How the proxy routes a command.
cdef enum Route:
    ROUTE_KEYED = 0         # to the shard of its keys (all on one shard, else CROSSSLOT); keyless: default shard
    ROUTE_SPLIT = 1         # keys split per shard into sub-commands, replies merged (MGET, MSET, DEL ...)
    ROUTE_ALL_SHARDS = 2    # sent to every shard, replies merged (DBSIZE, FLUSHALL, KEYS ...)
    ROUTE_LOCAL = 3         # answered by the proxy (PING, QUIT, SELECT ...)
    ROUTE_REFUSED = 4       # not available through this proxy; the entry's error text says why
    ROUTE_GETKEYS = 5       # key specs Redis marks unknown/incomplete: ask a shard COMMAND GETKEYS first
    ROUTE_SCAN = 6          # SCAN: one cursor that walks the shards of the map one after the other
    ROUTE_BLOCKING = 7      # on a connection of the client's own; its later requests wait
    ROUTE_PUBSUB = 8        # PUBLISH, SPUBLISH, PUBSUB ...: to the map's pub/sub shard
    ROUTE_SUBSCRIBE = 9     # (P|S)(UN)SUBSCRIBE: the client's own connection to the pub/sub shard
    ROUTE_WAIT = 10         # WAIT: on every shard the client wrote to, over connections of its own
    ROUTE_CONTROL = 11      # served by Redis while a script runs (allow_busy): every shard, on its control connection
    ROUTE_SORT = 12         # SORT, SORT_RO: BY/GET patterns checked (sort.pxi), then as ROUTE_GETKEYS


# How the replies of several shards are merged into one.
cdef enum Merge:
    MERGE_NONE = 0          # a single reply is passed through
    MERGE_KEYED_ARRAY = 1   # MGET: one array element per key, back in the client's key order
    MERGE_ALL_SUCCEEDED = 2 # the first error, else the first reply
    MERGE_ONE_SUCCEEDED = 3 # the first non-error reply, else the first error (NOTBUSY last: SCRIPT KILL)
    MERGE_AGG_SUM = 4       # integers summed
    MERGE_AGG_MIN = 5
    MERGE_AGG_MAX = 6
    MERGE_AGG_AND = 7
    MERGE_AGG_OR = 8
    MERGE_CONCAT = 9        # arrays concatenated (KEYS)
    MERGE_SCAN = 10         # a shard's SCAN reply, its cursor turned into the proxy's cursor
    MERGE_RANDOM = 11       # RANDOMKEY: a non-nil answer, from a shard picked at random
    MERGE_INFO = 12         # INFO: every shard's merged with the endpoint's counters (info.pxi)
    MERGE_SUNION = 13       # set algebra over keys on several shards: computed by the proxy
    MERGE_SINTER = 14       #   from each key's SMEMBERS
    MERGE_SDIFF = 15
    MERGE_SINTERCARD = 16
    MERGE_ZUNION = 17       # sorted-set algebra across shards, from each key's ZRANGE WITHSCORES
    MERGE_ZINTER = 18
    MERGE_ZDIFF = 19
    MERGE_ZINTERCARD = 20
    MERGE_PFCOUNT = 21      # PFCOUNT across shards: the HyperLogLogs' registers merged by the proxy
    MERGE_FUNCTION_STATS = 22   # FUNCTION STATS: the shard's that runs a script, else the first
    MERGE_FIRST = 23        # fragment 0's reply, whatever the others answered (EVAL spreading its script: scripts.pxi)
    # Answered by acl.pxi's acl_answered (requests marked `resolving`, as COMMAND GETKEYS's):
    MERGE_ACL_FIRST = 40
    MERGE_AUTH = 40         # AUTH user pass checked on a shard: the client is that user from now on
    MERGE_ACL_DELUSER = 41  # ACL DELUSER on every shard: the deleted users' clients are closed
    MERGE_ACL_LOG = 42      # ACL LOG from every shard: the entries merged, newest first
    MERGE_SHARD_CHECK = 50  # the proxy's own INFO on a shard's new connection (hold.pxi)


# Commands answered by the proxy itself.
cdef enum Local:
    LOCAL_PING = 1
    LOCAL_QUIT = 2
    LOCAL_SELECT = 3
    LOCAL_ECHO = 4
    LOCAL_HELLO = 5
    LOCAL_MULTI = 6
    LOCAL_EXEC = 7
    LOCAL_DISCARD = 8
    LOCAL_WATCH = 9
    LOCAL_UNWATCH = 10
    LOCAL_CLIENT = 11
    LOCAL_AUTH = 12
    LOCAL_RESET = 13
    LOCAL_MONITOR = 14
    LOCAL_ACL = 40          # ACL ...: acl.pxi
    LOCAL_CLUSTER = 41      # CLUSTER ...: cluster_api.pxi (the OSS Cluster API; else to a shard)


cdef struct KeySpec:
    int bs_type
    int bs_index            # BS_INDEX: position; BS_KEYWORD: startfrom
    char bs_keyword[16]
    int bs_keyword_len
    int fk_type
    int fk_a                # RANGE: lastkey;  KEYNUM: keynumidx
    int fk_b                # RANGE: keystep;  KEYNUM: firstkey
    int fk_c                # RANGE: limit;    KEYNUM: keystep


# Parameters a command may name (CONFIG SET): what the proxy lets through to the shards.
cdef enum:
    PARAM_NAME_MAX = 64
    PARAM_VALUE_MAX = 128
    PARAM_TABLE_SIZE = 1024


cdef enum:
    PARAM_ALLOWED = 1       # passed on to the shards
    PARAM_MANAGED = 2       # refused: the cluster sets it
    PARAM_APPLIED = 3       # managed: a no-op (answered +OK, not sent) when its value is `applied`, else refused
    PARAM_SPLIT = 4         # the database's size (maxmemory): each shard gets its share; `applied` is a shard's limit
    PARAM_SPLIT_MAX = 4     # such parameters in one request


# How a PARAM_APPLIED value is compared (both sides normalised alike, dmc/commands.py too).
cdef enum:
    PARAM_WORDS = 0         # lower case, blanks collapsed to one space, trimmed (save, yes/no, enums)
    PARAM_MEMORY = 1        # a size with Redis's units (1gb, 100mb, 10k ...), as bytes


cdef struct ParamEntry:
    char name[PARAM_NAME_MAX]   # lower case; name_len 0: an empty slot
    int name_len
    int verdict
    int kind                    # PARAM_APPLIED: PARAM_WORDS or PARAM_MEMORY
    char applied[PARAM_VALUE_MAX]   # PARAM_APPLIED: the value the shards apply, normalised
    int applied_len


cdef struct ParamPolicy:
    int first               # argument position of the first parameter name
    int step                # then one every `step` arguments (CONFIG SET: name value pairs)
    bint strict             # a name not listed is refused too (when the shards' names are unknown)
    char *refusal           # the error line, a printf format taking the name as `%.*s`
    ParamEntry *entries     # PARAM_TABLE_SIZE slots, open addressing on the lower-cased name


cdef struct CommandInfo:
    char name[CMD_NAME_MAX]     # lower case, `container|sub` for subcommands
    int name_len
    int arity
    int route
    int merge
    int local
    bint has_subcommands
    bint writes                 # may change the data set (or replicate): WAIT waits for its shard
    bint unmonitored            # not shown to MONITOR (admin commands, as Redis does)
    bint no_multi               # refused inside MULTI, as Redis does (SAVE, SHUTDOWN, WATCH ...: `no_multi`)
    bint tracks_reads           # its keys are remembered for a tracking client (read-only commands, scripts)
    bint caches_script          # EVAL, EVAL_RO: its body is cached on every shard (scripts.pxi)
    int nspecs
    KeySpec specs[MAX_KEY_SPECS]
    char *refusal               # ROUTE_REFUSED: the error line sent back (malloc'ed)
    ParamPolicy *params         # parameters checked before routing (CONFIG SET), or NULL
    # Counters kept on the fast path and read by the metrics exporter.
    unsigned long long calls
    unsigned long long errors
    unsigned long long usec
    int cls                     # CLASS_READ, CLASS_WRITE or CLASS_OTHER (counters.pxd)
    bint timed                  # its latency is counted (not for BLPOP & co., WAIT: counters.pxi)


cdef enum:
    KEYLIST_STATIC = 32


cdef struct KeyList:
    int n
    int cap
    int *pos
    int pos_static[KEYLIST_STATIC]


cdef CommandInfo *command_find(CommandInfo **entries, const char *name, size_t n) noexcept nogil
cdef CommandInfo *command_lookup(CommandInfo **entries, ArgVec *av) noexcept nogil
cdef ParamEntry *param_entry(ParamPolicy *p, const char *name, size_t n) noexcept nogil
cdef int param_verdict(ParamPolicy *p, const char *name, size_t n) noexcept nogil
cdef int param_normalise(int kind, const char *v, size_t n, char *out) noexcept nogil
cdef bint param_is_applied(ParamEntry *e, const char *v, size_t n) noexcept nogil
cdef int param_refused(ParamPolicy *p, ArgVec *av, int *noops) noexcept nogil
cdef ParamPolicy *param_policy_new(int first, int step, bint strict, str refusal, dict names) except NULL
cdef bint arg_is(ArgVec *av, int i, const char *word) noexcept nogil
cdef int command_keys(CommandInfo *c, ArgVec *av, KeyList *kl) noexcept nogil
