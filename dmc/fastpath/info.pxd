# INFO through the endpoint, merged from the shards' INFO and the endpoint's counters.
# Declarations; the code is in info.pxi.

cdef enum InfoPolicy:
    P_FIRST = 0
    P_SUM = 1
    P_MAX = 2
    P_MIN = 3
    P_WORST = 4         # a string: the first value that is not `ok`
    P_SUBFIELDS = 5     # k=v,k=v...
    P_HUMAN = 6


cdef enum InfoSection:
    S_OTHER = 0
    S_SERVER = 1
    S_CLIENTS = 2
    S_MEMORY = 3
    S_PERSISTENCE = 4
    S_STATS = 5
    S_REPLICATION = 6
    S_CPU = 7
    S_COMMANDSTATS = 8
    S_ERRORSTATS = 9
    S_LATENCYSTATS = 10
    S_KEYSPACE = 11


cdef struct InfoLine:
    const char *name        # the whole line for a `# Section` header
    int name_len
    const char *value
    int value_len           # -1: a section header
    int section
    bint used               # merged already (lines of the union sections)


cdef struct InfoText:
    InfoLine *lines
    int n
    int cursor              # where the last match was: fields come in the same order


cdef int section_of(const char *p, int n) noexcept nogil
cdef int field_policy(int s, const char *p, int n) noexcept nogil
cdef void info_reset_stats(Core *core) noexcept nogil
cdef int own_value(Core *core, int s, const char *p, int n, char *out, size_t size) noexcept nogil
cdef int info_parse(const char *body, const char *end, InfoText *t) noexcept nogil
cdef InfoLine *info_find(InfoText *t, int section, const char *name, int n) noexcept nogil
cdef void merge_subfields(Buf *out, int section, InfoLine **match, int n) noexcept nogil
cdef void merge_field(Core *core, Buf *out, InfoText *texts, int ntexts, InfoLine **match,
                      int section, const char *name, int nlen, int start) noexcept nogil
cdef void union_rest(Core *core, Buf *out, InfoText *texts, int ntexts, InfoLine **match,
                     int section) noexcept nogil
cdef int info_merge(Core *core, Request *r, Buf *out) noexcept nogil
