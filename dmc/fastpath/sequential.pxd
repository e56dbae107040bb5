# Multi-key commands over keys of several shards, carried out as single-shard steps
# (multi_slot_commands = sequential). Declarations; the code and its design are in sequential.pxi.

cdef enum:
    MAX_SEQ_KEYS = 256          # keys a shard names (COMMAND GETKEYS) for one sequence
    MULTI_SLOT_REFUSE = 0       # CROSSSLOT, as Redis Cluster and Redis Enterprise (the default)
    MULTI_SLOT_SEQUENTIAL = 1   # single-shard steps, answered as one redis-server would


# How a command is carried out.
cdef enum SeqKind:
    SEQ_NONE = 0
    SEQ_STAGE = 1           # remote sources copied (DUMP) to the destination's shard, run there in MULTI
    SEQ_MPOP = 2            # LMPOP / ZMPOP: each key in argument order on its shard, first non-empty
    SEQ_MSETNX = 3          # EXISTS on every shard, then MSETNX per shard (undone on a lost race)
    SEQ_SORT = 4            # SORT with BY/GET patterns over keys of other shards (sort_sequential.pxi)
    SEQ_BLOCK = 5           # BLPOP & co. over several shards (blocking_sequential.pxi)


# What a SEQ_STAGE command then does to its source on the source's own shard.
cdef enum SeqWriteBack:
    WB_NONE = 0             # the *STORE family, COPY, PFMERGE, BITOP: sources are only read
    WB_RENAME = 1           # the source deleted if it still holds the value that was moved
    WB_SMOVE = 2            # SREM source member
    WB_LMOVE = 3            # LREM source +-1 element (the end it was taken from)


# Phases of a sequence.
cdef enum:
    PH_FETCH = 0            # STAGE: DUMP + PTTL of remote sources; MPOP: the next key; MSETNX: EXISTS
    PH_RUN = 1              # STAGE: the command on the home shard; MSETNX: MSETNX per shard
    PH_WRITE_BACK = 2       # STAGE: the source's change; MSETNX: undo after a lost race
    PH_BLOCK = 3            # BLOCK (and BLMOVE's STAGE): waiting on every key's shard at once


cdef struct Sequence:
    int kind
    int writeback
    int phase
    int step                # next key (or shard group) the phase works on
    Buf wire                # the request's own bytes; av points into it
    ArgVec av
    int nkeys
    int *kpos               # argument position of each key
    int *kshard             # shard of each key
    int home                # STAGE: index of the key whose shard runs the command (the destination)
    Buf *fetched            # STAGE: per key, its `*2 DUMP PTTL` reply (empty: on the home shard)
    Buf result              # the answer, kept while the write-back runs
    int nslots
    unsigned short *slots   # the slots it holds in the core's lock table
    bint locked             # its slots are held
    Request *next_waiting   # in core.seq_waiting, while a slot it needs is held
    int ngroups             # MSETNX: the shards of its keys, in order of first appearance
    int *groups
    # SORT (sort_sequential.pxi): the keys its patterns form (and the sorted key) that live on
    # other shards than the one that sorts, and what each of those shards answered for them.
    Buf refs                # one entry per key: its length (size_t), its bytes
    int *ref_shard
    int nrefs
    Buf *shard_fetched      # per shard index: `MULTI DUMP PTTL ... EXEC`'s reply
    int nfetched
    # Blocking forms (blocking_sequential.pxi): SEQ_BLOCK, and SEQ_STAGE for BLMOVE/BRPOPLPUSH.
    bint blocking           # a nil answer means: wait for an element, then try again
    bint zset               # BZPOPMIN/BZPOPMAX/BZMPOP: the waits pop (pushed back if not the answer)
    bint stream             # XREAD: one try and one wait per shard, replies merged; nothing is consumed
    int timeout_arg         # the argument that holds the client's timeout
    long long deadline_us   # when the client's timeout ends (0: never)
    bint woken              # a wait saw an element: try the keys again once every wait is in
    Buf block_reply         # what the waits answered that is not an element: the last nil,
    Buf block_error         #   the first error


cdef bint seq_begin(Core *core, Client *c, Request *r, CommandInfo *cmd, ArgVec *av,
                    KeyList *kl) noexcept nogil
cdef bint seq_begin_resolved(Core *core, Request *r, const char *reply, size_t n) noexcept nogil
cdef void seq_answered(Core *core, Request *r, const char *reply, size_t n) noexcept nogil
cdef void seq_free(Core *core, Request *r) noexcept nogil
cdef void seq_unlock(Core *core, Sequence *s) noexcept nogil
