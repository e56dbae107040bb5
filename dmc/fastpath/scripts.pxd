# Scripts given by body (EVAL, EVAL_RO) cached on every shard, as on one Redis.
# Declarations; the code is in scripts.pxi.

cdef extern from "openssl/sha.h" nogil:
    unsigned char *SHA1(const unsigned char *d, size_t n, unsigned char *md)


cdef enum:
    SCRIPT_DIGEST_LEN = 20
    SCRIPTS_SPREAD_SLOTS = 1024     # the table of spread scripts; cleared when half full


cdef struct ScriptsSpread:
    unsigned char digests[SCRIPTS_SPREAD_SLOTS][SCRIPT_DIGEST_LEN]  # open addressing; all zero: empty
    int count


cdef bint script_spread(Core *core, Request *r, ArgVec *av, int shard) noexcept nogil
cdef void scripts_forget(Core *core) noexcept nogil
