# RESP parsing to positions.
# Declarations; the code is in resp.pxi.

cdef enum:
    PROTO_INLINE_MAX = 65536
    PROTO_MAX_ARGS = 1048576
    PROTO_MAX_BULK = 536870912
    ARGV_STATIC = 16


cdef enum ParseResult:
    PARSE_INCOMPLETE = 0
    PARSE_OK = 1
    PARSE_ERR_MBULK_LEN = -1
    PARSE_ERR_BULK_LEN = -2
    PARSE_ERR_EXPECTED_DOLLAR = -3
    PARSE_ERR_INLINE_TOO_BIG = -4
    PARSE_ERR_UNBALANCED = -5
    PARSE_ERR_MBULK_TOO_BIG = -6
    PARSE_ERR_BULK_TOO_BIG = -7
    PARSE_ERR_NOMEM = -8


cdef struct ArgVec:
    int argc
    int cap
    const char **argv
    size_t *argl
    const char *argv_static[ARGV_STATIC]
    size_t argl_static[ARGV_STATIC]
    const char *wire        # the request as multibulk bytes (into the input, or `inline_wire`)
    size_t wire_len
    char bad_byte           # for PARSE_ERR_EXPECTED_DOLLAR
    Buf inline_args         # decoded inline arguments
    Buf inline_wire         # their multibulk encoding


cdef enum:
    STREAM_DEPTH = 64
    MAX_AGGREGATE = 2147483647   # elements of one aggregate; more is not a reply from Redis


cdef void argvec_init(ArgVec *av) noexcept nogil
cdef void argvec_free(ArgVec *av) noexcept nogil
cdef int argvec_grow(ArgVec *av, int need) noexcept nogil
cdef int split_inline(ArgVec *av, const char *p, size_t n) noexcept nogil
cdef int parse_request(const char *p, size_t n, ArgVec *av, size_t *consumed,
                       size_t *need) noexcept nogil
cdef ssize_t reply_frame(const char *p, size_t n, size_t *need, int *is_push) noexcept nogil
