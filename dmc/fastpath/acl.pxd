# ACL users through the endpoint: who a client is, and the shard connections that run its
# commands with that user's rights. Declarations; the code is in acl.pxi.

cdef extern from "<sys/random.h>":
    ssize_t getrandom(void *buf, size_t buflen, unsigned int flags) nogil


cdef enum:
    ACL_USER_NAME_MAX = 128     # longer names are checked by the shards, never cached


cdef struct UserShard:
    Backend **conns             # per_proto for RESP2 clients, then as many for RESP3 ones (NULL until used)
    int rr[2]                   # round-robin position among each protocol's connections


cdef struct User:
    # A user other than `default` that clients authenticated as: the shards checked its
    # password (AUTH on a connection of the proxy's), and its connections to each shard were
    # authenticated as it. Its password is kept only to open those connections, and only
    # sealed: XORed with a random pad of its own (never in clear in the proxy's memory, logs
    # or command line).
    User *next                  # the core's users
    char name[ACL_USER_NAME_MAX]
    size_t name_len
    unsigned char *sealed       # the password XOR pad
    unsigned char *pad
    size_t secret_len
    int refs                    # clients authenticated as it
    bint deleted                # ACL DELUSER: no new client finds it; freed once unreferenced
    int nshards                 # entries of `shards`
    UserShard *shards


cdef inline bint is_default_user(const char *name, size_t n) noexcept nogil:
    # User names are case-sensitive, as in Redis: `DEFAULT` is another user.
    return n == 7 and memcmp(name, b"default", 7) == 0


cdef void client_set_user(Core *core, Client *c, User *u) noexcept nogil
cdef Backend *user_backend(Core *core, User *u, int shard, int proto) noexcept nogil
cdef size_t acl_append_auth(Buf *out, User *u, int proto) noexcept nogil
cdef void acl_wait_prefix(Core *core, Backend *b, User *u, bint mark) noexcept nogil
cdef void backend_hold_for_auth(Backend *b, size_t hold, int replies_before) noexcept nogil
cdef int acl_auth_reply(Core *core, Backend *b, const char *p, size_t n) noexcept nogil
cdef void route_auth_check(Core *core, Client *c, Request *r, const char *user, size_t ulen,
                           const char *pw, size_t plen, int hello_proto) noexcept nogil
cdef void route_local_acl(Core *core, Client *c, Request *r, ArgVec *av) noexcept nogil
cdef void acl_answered(Core *core, Request *r, Fragment *f, const char *reply, size_t n) noexcept nogil
cdef void acl_tick(Core *core) noexcept nogil
cdef void acl_close(Core *core, bint answer) noexcept nogil
