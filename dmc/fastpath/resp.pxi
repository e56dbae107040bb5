# RESP parsing to positions.
#
# Requests: multibulk (`*N\r\n$L\r\n...`) and inline (`GET k\r\n`) commands, with the limits and
# error texts of redis-server. The parser is restartable: given the bytes buffered so far it
# either returns one complete request, says how many bytes it needs at least before it is worth
# calling again (so a large value is not re-scanned on every read), or returns an error code.
#
# Replies: frame boundaries of RESP2 and RESP3 values (every type, attributes, push, streamed
# strings and aggregates). The proxy forwards reply bytes untouched; it only needs to know where
# each reply ends, and whether it is an out-of-band push.


cdef void argvec_init(ArgVec *av) noexcept nogil:
    memset(av, 0, sizeof(ArgVec))
    av.argv = av.argv_static
    av.argl = av.argl_static
    av.cap = ARGV_STATIC


cdef void argvec_free(ArgVec *av) noexcept nogil:
    if av.argv != av.argv_static:
        free(av.argv)
        free(av.argl)
    buf_free(&av.inline_args)
    buf_free(&av.inline_wire)
    argvec_init(av)


cdef int argvec_grow(ArgVec *av, int need) noexcept nogil:
    cdef int newcap = av.cap
    cdef const char **nv
    cdef size_t *nl
    if need <= av.cap:
        return 0
    while newcap < need:
        newcap *= 2
    nv = <const char **>malloc(newcap * sizeof(char *))
    nl = <size_t *>malloc(newcap * sizeof(size_t))
    if nv == NULL or nl == NULL:
        free(nv)
        free(nl)
        return -1
    if av.argv != av.argv_static:
        free(av.argv)
        free(av.argl)
    av.argv = nv
    av.argl = nl
    av.cap = newcap
    return 0


cdef const char *parse_error_text(int code) noexcept nogil:
    if code == PARSE_ERR_MBULK_LEN:
        return b"-ERR Protocol error: invalid multibulk length\r\n"
    if code == PARSE_ERR_BULK_LEN:
        return b"-ERR Protocol error: invalid bulk length\r\n"
    if code == PARSE_ERR_INLINE_TOO_BIG:
        return b"-ERR Protocol error: too big inline request\r\n"
    if code == PARSE_ERR_UNBALANCED:
        return b"-ERR Protocol error: unbalanced quotes in request\r\n"
    if code == PARSE_ERR_MBULK_TOO_BIG:
        return b"-ERR Protocol error: too big mbulk count string\r\n"
    if code == PARSE_ERR_BULK_TOO_BIG:
        return b"-ERR Protocol error: too big bulk count string\r\n"
    if code == PARSE_ERR_NOMEM:
        return b"-ERR Protocol error: out of memory\r\n"
    return b"-ERR Protocol error\r\n"


cdef inline int parse_ll(const char *s, size_t n, long long *out) noexcept nogil:
    """Strict decimal parse as Redis's string2ll: optional '-', no '+', no leading zeros."""
    cdef size_t i = 0
    cdef bint neg = False
    cdef long long v = 0
    if n == 0 or n > 19:
        return -1
    if s[0] == c'-':
        neg = True
        i = 1
        if n == 1:
            return -1
    if s[i] == c'0':
        if n == i + 1 and not neg:
            out[0] = 0
            return 0
        return -1
    while i < n:
        if s[i] < c'0' or s[i] > c'9':
            return -1
        v = v * 10 + (s[i] - c'0')
        i += 1
    out[0] = -v if neg else v
    return 0


cdef inline int is_space(char c) noexcept nogil:
    return c == c' ' or c == c'\t' or c == c'\n' or c == c'\r' or c == c'\v' or c == c'\f'


cdef inline int hex_val(char c) noexcept nogil:
    if c'0' <= c <= c'9':
        return c - c'0'
    if c'a' <= c <= c'f':
        return c - c'a' + 10
    if c'A' <= c <= c'F':
        return c - c'A' + 10
    return -1


cdef int split_inline(ArgVec *av, const char *p, size_t n) noexcept nogil:
    """Split an inline command line as Redis's sdssplitargs does (quotes and escapes), and
    encode the arguments as multibulk into av.inline_wire. Returns argc or a PARSE_ERR code."""
    cdef size_t i = 0
    cdef int argc = 0, k
    cdef bint inq, insq, done
    cdef char c
    cdef size_t start
    cdef Buf *a = &av.inline_args
    cdef Buf *w = &av.inline_wire
    cdef size_t *lens
    cdef const char *nul = <const char *>memchr(p, 0, n)
    buf_clear(a)
    buf_clear(w)
    if nul != NULL:
        n = nul - p     # sdssplitargs works on a C string: a NUL ends it
    # inline_args holds, for each argument, a size_t length followed by its bytes.
    while True:
        while i < n and is_space(p[i]):
            i += 1
        if i >= n:
            break
        inq = insq = done = False
        if buf_reserve(a, sizeof(size_t)) < 0:
            return PARSE_ERR_NOMEM
        start = a.end
        a.end += sizeof(size_t)
        while not done:
            if inq:
                if i >= n:
                    return PARSE_ERR_UNBALANCED
                if p[i] == c'\\' and i + 3 < n and p[i + 1] == c'x' and hex_val(p[i + 2]) >= 0 \
                        and hex_val(p[i + 3]) >= 0:
                    c = <char>(hex_val(p[i + 2]) * 16 + hex_val(p[i + 3]))
                    i += 3
                elif p[i] == c'\\' and i + 1 < n:
                    i += 1
                    c = p[i]
                    if c == c'n':
                        c = c'\n'
                    elif c == c'r':
                        c = c'\r'
                    elif c == c't':
                        c = c'\t'
                    elif c == c'b':
                        c = c'\b'
                    elif c == c'a':
                        c = c'\a'
                elif p[i] == c'"':
                    # The closing quote must be followed by a space or the end.
                    if i + 1 < n and not is_space(p[i + 1]):
                        return PARSE_ERR_UNBALANCED
                    done = True
                    i += 1
                    continue
                else:
                    c = p[i]
                if buf_append(a, &c, 1) < 0:
                    return PARSE_ERR_NOMEM
                i += 1
            elif insq:
                if i >= n:
                    return PARSE_ERR_UNBALANCED
                if p[i] == c'\\' and i + 1 < n and p[i + 1] == c"'":
                    i += 1
                    c = c"'"
                elif p[i] == c"'":
                    if i + 1 < n and not is_space(p[i + 1]):
                        return PARSE_ERR_UNBALANCED
                    done = True
                    i += 1
                    continue
                else:
                    c = p[i]
                if buf_append(a, &c, 1) < 0:
                    return PARSE_ERR_NOMEM
                i += 1
            else:
                if i >= n or p[i] == c' ' or p[i] == c'\n' or p[i] == c'\r' or p[i] == c'\t':
                    done = True
                elif p[i] == c'"':
                    inq = True
                    i += 1
                elif p[i] == c"'":
                    insq = True
                    i += 1
                else:
                    if buf_append(a, p + i, 1) < 0:
                        return PARSE_ERR_NOMEM
                    i += 1
        lens = <size_t *>(a.data + start)
        lens[0] = a.end - start - sizeof(size_t)
        argc += 1
    if argc == 0:
        return 0
    if argvec_grow(av, argc) < 0:
        return PARSE_ERR_NOMEM
    if buf_append_int(w, c'*', argc) < 0:
        return PARSE_ERR_NOMEM
    i = a.pos
    for k in range(argc):
        n = (<size_t *>(a.data + i))[0]
        i += sizeof(size_t)
        if buf_append_int(w, c'$', <long long>n) < 0:
            return PARSE_ERR_NOMEM
        av.argl[k] = n
        # Store offsets first: the wire buffer may move while it grows.
        av.argv[k] = <const char *>(w.end - w.pos)
        if buf_append(w, a.data + i, n) < 0 or buf_append(w, b"\r\n", 2) < 0:
            return PARSE_ERR_NOMEM
        i += n
    for k in range(argc):
        av.argv[k] = w.data + w.pos + <size_t>av.argv[k]
    return argc


cdef int parse_request(const char *p, size_t n, ArgVec *av, size_t *consumed,
                       size_t *need) noexcept nogil:
    """Parse one request from p[0:n].

    PARSE_OK: av holds the request (argc may be 0 for an empty line or `*0`, to be skipped) and
    *consumed its size. PARSE_INCOMPLETE: *need is the least total size worth waiting for.
    Negative: a protocol error (parse_error_text) after which the connection must be closed.
    """
    cdef const char *cr
    cdef const char *nl
    cdef long long mb, bl
    cdef size_t pos, linelen
    cdef int i, r
    need[0] = n + 1
    if n == 0:
        return PARSE_INCOMPLETE
    if p[0] != c'*':
        nl = <const char *>memchr(p, c'\n', n)
        if nl == NULL:
            if n > PROTO_INLINE_MAX:
                return PARSE_ERR_INLINE_TOO_BIG
            return PARSE_INCOMPLETE
        linelen = nl - p
        consumed[0] = linelen + 1
        if linelen > 0 and p[linelen - 1] == c'\r':
            linelen -= 1
        r = split_inline(av, p, linelen)
        if r < 0:
            return r
        av.argc = r
        av.wire = buf_head(&av.inline_wire)
        av.wire_len = buf_len(&av.inline_wire)
        return PARSE_OK
    # Multibulk: `*<count>\r\n` then count times `$<len>\r\n<bytes>\r\n`.
    cr = <const char *>memchr(p, c'\r', n if n < PROTO_INLINE_MAX + 64 else PROTO_INLINE_MAX + 64)
    if cr == NULL:
        if n > PROTO_INLINE_MAX:
            return PARSE_ERR_MBULK_TOO_BIG
        return PARSE_INCOMPLETE
    pos = (cr - p) + 2
    if pos > n:
        return PARSE_INCOMPLETE
    if parse_ll(p + 1, cr - p - 1, &mb) < 0 or mb > PROTO_MAX_ARGS:
        return PARSE_ERR_MBULK_LEN
    if mb <= 0:
        av.argc = 0
        consumed[0] = pos
        return PARSE_OK
    if argvec_grow(av, <int>mb) < 0:
        return PARSE_ERR_NOMEM
    for i in range(<int>mb):
        if pos >= n:
            # One more byte tells whether the next header is well-formed: no larger hint, so
            # that a bad header is reported as soon as its bytes are in.
            need[0] = pos + 1
            return PARSE_INCOMPLETE
        if p[pos] != c'$':
            av.bad_byte = p[pos]
            return PARSE_ERR_EXPECTED_DOLLAR
        cr = <const char *>memchr(p + pos, c'\r', (n - pos) if n - pos < PROTO_INLINE_MAX + 64
                                  else PROTO_INLINE_MAX + 64)
        if cr == NULL:
            if n - pos > PROTO_INLINE_MAX:
                return PARSE_ERR_BULK_TOO_BIG
            return PARSE_INCOMPLETE
        if <size_t>(cr - p) + 2 > n:
            return PARSE_INCOMPLETE
        if parse_ll(p + pos + 1, cr - (p + pos) - 1, &bl) < 0 or bl < 0 or bl > PROTO_MAX_BULK:
            return PARSE_ERR_BULK_LEN
        pos = (cr - p) + 2
        # Like redis-server, the two bytes after the payload are skipped, not checked.
        if pos + <size_t>bl + 2 > n:
            need[0] = pos + <size_t>bl + 2
            return PARSE_INCOMPLETE
        av.argv[i] = p + pos
        av.argl[i] = <size_t>bl
        pos += <size_t>bl + 2
    av.argc = <int>mb
    av.wire = p
    av.wire_len = pos
    consumed[0] = pos
    return PARSE_OK


# ---- replies ----------------------------------------------------------------------------------


cdef inline ssize_t find_crlf(const char *p, size_t pos, size_t n) noexcept nogil:
    """Offset of the '\\r' of the CRLF ending the line at pos; -1 incomplete; -2 malformed."""
    cdef const char *cr = <const char *>memchr(p + pos, c'\r', n - pos)
    if cr == NULL:
        return -1
    if <size_t>(cr - p) + 1 >= n:
        return -1
    if cr[1] != c'\n':
        return -2
    return cr - p


cdef ssize_t reply_frame(const char *p, size_t n, size_t *need, int *is_push) noexcept nogil:
    """Length of the first complete RESP2/RESP3 value in p[0:n] (attributes included with the
    value they annotate); 0 if incomplete (*need: the least total size worth waiting for);
    -1 if the bytes are not RESP. *is_push is set when the value is a RESP3 push (`>`)."""
    cdef size_t pos = 0
    # Values still owed by the bounded aggregates open at the current streaming level; at the
    # top level the frame itself is owed. Streamed aggregates (`*?`) save it on a small stack.
    cdef long long remaining = 1
    cdef long long saved[STREAM_DEPTH]
    cdef int depth = 0
    cdef ssize_t e
    cdef long long ln
    cdef char t
    cdef bint first = True
    need[0] = n + 1
    is_push[0] = 0
    while depth > 0 or remaining > 0:
        if pos >= n:
            return 0
        t = p[pos]
        e = find_crlf(p, pos + 1, n)
        if e == -1:
            return 0
        if e == -2:
            return -1
        if t == c'|':
            # An attribute map annotates the value that follows: it does not count as one.
            if parse_ll(p + pos + 1, e - pos - 1, &ln) < 0 or ln < 0 or ln > MAX_AGGREGATE:
                return -1
            remaining += 2 * ln
            pos = e + 2
            continue
        if t == c'.':
            # End of a streamed aggregate.
            if e != <ssize_t>pos + 1 or depth == 0 or remaining != 0:
                return -1
            depth -= 1
            remaining = saved[depth]
            pos = e + 2
            continue
        if first and depth == 0 and remaining == 1:
            # Only the top-level value is still owed: this is it (not an attribute's entry).
            is_push[0] = t == c'>'
            first = False
        if remaining > 0:
            remaining -= 1
        if t == c'+' or t == c'-' or t == c':' or t == c',' or t == c'#' or t == c'(' \
                or t == c'_':
            pos = e + 2
        elif t == c'$' or t == c'!' or t == c'=':
            if e == <ssize_t>pos + 2 and p[pos + 1] == c'?':
                # Streamed string: `;<len>\r\n<bytes>\r\n` chunks up to `;0\r\n`.
                pos = e + 2
                while True:
                    if pos >= n:
                        return 0
                    if p[pos] != c';':
                        return -1
                    e = find_crlf(p, pos + 1, n)
                    if e == -1:
                        return 0
                    if e == -2 or parse_ll(p + pos + 1, e - pos - 1, &ln) < 0 or ln < 0:
                        return -1
                    pos = e + 2
                    if ln == 0:
                        break
                    if pos + <size_t>ln + 2 > n:
                        need[0] = pos + <size_t>ln + 2
                        return 0
                    if p[pos + ln] != c'\r' or p[pos + ln + 1] != c'\n':
                        return -1
                    pos += <size_t>ln + 2
                continue
            if parse_ll(p + pos + 1, e - pos - 1, &ln) < 0 or ln < -1:
                return -1
            pos = e + 2
            if ln >= 0:
                if pos + <size_t>ln + 2 > n:
                    need[0] = pos + <size_t>ln + 2
                    return 0
                if p[pos + ln] != c'\r' or p[pos + ln + 1] != c'\n':
                    return -1
                pos += <size_t>ln + 2
        elif t == c'*' or t == c'~' or t == c'>' or t == c'%':
            if e == <ssize_t>pos + 2 and p[pos + 1] == c'?':
                if depth >= STREAM_DEPTH:
                    return -1
                saved[depth] = remaining
                depth += 1
                remaining = 0
                pos = e + 2
                continue
            if parse_ll(p + pos + 1, e - pos - 1, &ln) < 0 or ln < -1 or ln > MAX_AGGREGATE:
                return -1
            if ln > 0:
                remaining += ln * 2 if t == c'%' else ln
            pos = e + 2
        else:
            return -1
    return <ssize_t>pos


cdef inline bint reply_is_error(const char *p) noexcept nogil:
    return p[0] == c'-' or p[0] == c'!'
