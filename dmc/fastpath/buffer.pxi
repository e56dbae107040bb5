# Byte buffers owned by connections and requests.
#
# A Buf is a growable byte array with a read position: producers append at `end`, consumers
# advance `pos`. Memory is malloc'ed, never a Python object, so that the event loop runs
# without the GIL. An empty buffer whose capacity grew past BUF_KEEP gives its memory
# back, so that 10,000 idle clients cost only their structs.


cdef inline size_t buf_len(const Buf *b) noexcept nogil:
    return b.end - b.pos


cdef inline char *buf_head(const Buf *b) noexcept nogil:
    return b.data + b.pos


cdef void buf_free(Buf *b) noexcept nogil:
    if b.data != NULL:
        free(b.data)
    b.data = NULL
    b.pos = b.end = b.cap = 0


cdef int buf_reserve(Buf *b, size_t extra) noexcept nogil:
    """Make room for `extra` more bytes at the end. Returns -1 when out of memory."""
    cdef size_t used, newcap
    cdef char *p
    if b.cap - b.end >= extra:
        return 0
    used = b.end - b.pos
    if b.pos > 0:
        # Slide the unconsumed bytes to the front first; often that alone makes room.
        if used:
            memmove(b.data, b.data + b.pos, used)
        b.pos = 0
        b.end = used
        if b.cap - used >= extra:
            return 0
    newcap = b.cap if b.cap >= BUF_MIN else BUF_MIN
    while newcap - used < extra:
        newcap *= 2
    p = <char *>realloc(b.data, newcap)
    if p == NULL:
        return -1
    b.data = p
    b.cap = newcap
    return 0


cdef inline int buf_append(Buf *b, const char *src, size_t n) noexcept nogil:
    if b.cap - b.end < n:
        if buf_reserve(b, n) < 0:
            return -1
    memcpy(b.data + b.end, src, n)
    b.end += n
    return 0


cdef inline int buf_append_str(Buf *b, const char *s) noexcept nogil:
    return buf_append(b, s, strlen(s))


cdef inline void buf_consume(Buf *b, size_t n) noexcept nogil:
    b.pos += n
    if b.pos >= b.end:
        b.pos = 0
        b.end = 0
        if b.cap > BUF_KEEP:
            buf_free(b)


cdef inline void buf_clear(Buf *b) noexcept nogil:
    buf_consume(b, b.end - b.pos)


cdef int buf_append_int(Buf *b, char prefix, long long v) noexcept nogil:
    """Append `<prefix><v>\\r\\n`, the header of an integer, array or bulk string."""
    cdef char tmp[32]
    cdef int i = 31
    cdef unsigned long long u
    cdef bint neg = v < 0
    tmp[i] = c'\n'
    i -= 1
    tmp[i] = c'\r'
    u = <unsigned long long>(-v) if neg else <unsigned long long>v
    while True:
        i -= 1
        tmp[i] = <char>(c'0' + <int>(u % 10))
        u //= 10
        if u == 0:
            break
    if neg:
        i -= 1
        tmp[i] = c'-'
    i -= 1
    tmp[i] = prefix
    return buf_append(b, tmp + i, 32 - i)


cdef int buf_append_bulk(Buf *b, const char *s, size_t n) noexcept nogil:
    if buf_append_int(b, c'$', <long long>n) < 0:
        return -1
    if buf_append(b, s, n) < 0:
        return -1
    return buf_append(b, b"\r\n", 2)
