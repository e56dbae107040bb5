# Holding requests for a shard that is down, until a new map or the shard itself is back.
# Declarations; the code is in hold.pxi.

cdef enum:
    FENCE_DOWN = -1                     # held_release's shard: what the fence held
    HOLD_MAX_BYTES = 64 * 1024 * 1024   # per proxy; past it a request for a down shard fails at once


cdef struct Held:
    Held *next
    Fragment *f             # its request stays pending (and alive) while the fragment is held
    int shard               # where it was to go
    int slot                # a slot that shard owned then (-1: none)
    long long until_us      # answered "unavailable" (or the fence's refusal) then
    bint fenced             # held because the fence was up (sent once it is down)
    bint late               # sent once more past until_us (its shard was back) and held again
    Buf cmd                 # the fragment's command bytes, never sent


cdef bint shard_up(Core *core, int shard) noexcept nogil
cdef bint hold_fragment(Core *core, int shard, Fragment *f, const char *data, size_t n) noexcept nogil
cdef bint hold_fenced(Core *core, int shard, Fragment *f, const char *data, size_t n) noexcept nogil
cdef void held_release(Core *core, int shard) noexcept nogil
cdef void held_remap(Core *core, const unsigned short *old_map) noexcept nogil
cdef void held_tick(Core *core, bint every) noexcept nogil
cdef void shard_check_send(Core *core, Backend *b) noexcept nogil
cdef void shard_check_answered(Core *core, Request *r, const char *reply, size_t n) noexcept nogil
