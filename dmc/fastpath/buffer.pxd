# Byte buffers owned by connections and requests.
# Declarations; the code is in buffer.pxi.

cdef enum:
    BUF_MIN = 512
    BUF_KEEP = 65536


cdef struct Buf:
    char *data
    size_t pos      # first byte not yet consumed
    size_t end      # one past the last byte written
    size_t cap


cdef void buf_free(Buf *b) noexcept nogil
cdef int buf_reserve(Buf *b, size_t extra) noexcept nogil
cdef int buf_append_int(Buf *b, char prefix, long long v) noexcept nogil
cdef int buf_append_bulk(Buf *b, const char *s, size_t n) noexcept nogil
