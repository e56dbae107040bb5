# Client TLS: an endpoint with core.tls_ctx (Proxy.set_tls) speaks TLS to every client it
# accepts, terminated here with OpenSSL on the client's own non-blocking socket (SSL_read and
# SSL_write over a socket BIO; no Python per command).
#
# - Accept: each client gets an SSL of the endpoint's SSL_CTX, in accept state; the handshake
#   runs inside the first SSL_read calls, in the loop, as bytes arrive. A client that is not
#   speaking TLS (a plaintext RESP command) or one whose certificate is refused fails the
#   handshake and is closed (counted in core.tls_handshake_failures), nothing written to it.
# - Read (tls_read, called by client_recv in place of recv): SSL_read while at least one full
#   record fits, so no decrypted byte is ever left inside OpenSSL where epoll could not see it;
#   WANT_READ is EAGAIN; WANT_WRITE (a handshake message the socket could not take) sets
#   CF_TLS_WANT_WRITE and asks for EPOLLOUT, and the read is done again once writable.
# - Write (tls_write, called by client_send in place of send): partial writes on, moving
#   buffer accepted (the reply buffer's head moves between retries).
# - Close: a close_notify if the handshake was done, then the SSL is freed with the client.
# - Handshake timeout: a client flagged CF_TLS_HANDSHAKE from its accept until its handshake is
#   done; one that is still in it after core.tls_handshake_timeout_us (10 s by default, as a
#   TLS terminator bounds a connection that never says hello) is closed by the loop's sweep
#   (close_slow_handshakes, every HANDSHAKE_CHECK_US, TLS endpoints only), counted in
#   tls_handshake_failures and tls_handshake_timeouts.
# - The SSL_CTX (tls_context): the minimum protocol version (1.2 or 1.3), the TLS 1.2 cipher
#   list and the TLS 1.3 ciphersuites (a database cluster's min_data_TLS_version,
#   data_cipher_list, data_cipher_suites_tls_1_3), and the names a client certificate must
#   carry (a database's authorized_names): OpenSSL's own name check run on the client's
#   certificate during its verification (X509_VERIFY_PARAM_add1_host; the subject CN or a DNS
#   SAN, exactly, no wildcards), so a certificate of the right CA but another name fails the
#   handshake like an unknown one -- no code per connection.
#
# Each worker thread's Proxy has its own SSL_CTX and its clients their own SSL objects;
# OpenSSL's error queue is per thread and is cleared after every failure. A new SSL_CTX
# (set_tls again: a renewed certificate) serves the next handshakes; clients already connected
# keep theirs (each SSL holds a reference to its SSL_CTX). Plaintext endpoints pay one branch
# (c.ssl == NULL) per read and per write.


cdef bint tls_accept(Core *core, Client *c) noexcept nogil:
    """Give a just accepted client its SSL; False if OpenSSL cannot (the client is dropped)."""
    c.ssl = SSL_new(core.tls_ctx)
    if c.ssl == NULL or SSL_set_fd(c.ssl, c.fd) != 1:
        ERR_clear_error()
        return False
    SSL_set_accept_state(c.ssl)
    c.flags |= CF_TLS_HANDSHAKE
    return True


cdef inline void tls_failed(Core *core, Client *c) noexcept nogil:
    if not SSL_is_init_finished(c.ssl):
        core.tls_handshake_failures += 1
    ERR_clear_error()


cdef ssize_t tls_read(Core *core, Client *c, char *buf, size_t cap) noexcept nogil:
    """As recv(): bytes read (> 0), 0 when the connection is over (closed, or TLS failed), -1
    with errno EAGAIN when nothing is to be read now."""
    cdef size_t total = 0
    cdef int n, err
    if cap > 0x40000000:
        cap = 0x40000000
    while total == 0 or cap - total >= TLS_RECORD_MAX:
        n = SSL_read(c.ssl, buf + total, <int>(cap - total))
        if n > 0:
            total += <size_t>n
            if total == cap:
                break
            continue
        err = SSL_get_error(c.ssl, n)
        if err == SSL_ERROR_WANT_READ:
            break
        if err == SSL_ERROR_WANT_WRITE:
            c.flags |= CF_TLS_WANT_WRITE
            epoll_want(core, c.fd, c, &c.events, c.events | EPOLLOUT)
            break
        tls_failed(core, c)     # close_notify, a reset, or a TLS error: the connection is over
        if total > 0:
            break               # what came before it is served; the next read ends it
        return 0
    if c.flags & CF_TLS_HANDSHAKE and SSL_is_init_finished(c.ssl):
        c.flags &= ~CF_TLS_HANDSHAKE
    if total == 0:
        errno = EAGAIN
        return -1
    return <ssize_t>total


cdef ssize_t tls_write(Client *c, const char *buf, size_t n) noexcept nogil:
    """As send(): bytes written (> 0), or -1 with errno EAGAIN (try again when writable) or
    EPIPE (the connection is over)."""
    cdef int r, err
    if n > 0x40000000:
        n = 0x40000000
    r = SSL_write(c.ssl, buf, <int>n)
    if r > 0:
        return r
    err = SSL_get_error(c.ssl, r)
    if err == SSL_ERROR_WANT_WRITE or err == SSL_ERROR_WANT_READ:
        errno = EAGAIN
    else:
        ERR_clear_error()
        errno = EPIPE
    return -1


cdef void tls_close(Client *c) noexcept nogil:
    """Before the socket is closed: close_notify (one try, never waited for), the SSL freed."""
    if SSL_is_init_finished(c.ssl):
        SSL_shutdown(c.ssl)
    ERR_clear_error()
    SSL_free(c.ssl)
    c.ssl = NULL


cdef void close_slow_handshakes(Core *core) noexcept nogil:
    """Close the clients whose TLS handshake has run longer than the timeout."""
    cdef Client *c = core.all_clients
    cdef Client *nxt
    core.next_handshake_check_us = core.now_us + HANDSHAKE_CHECK_US
    while c != NULL:
        nxt = c.next
        if c.flags & CF_TLS_HANDSHAKE and not (c.flags & CF_CLOSED) \
                and core.now_us - c.created_us > core.tls_handshake_timeout_us:
            core.tls_handshake_failures += 1
            core.tls_handshake_timeouts += 1
            client_close(core, c)
        c = nxt


cdef int tls_version(str version) except -1:
    """RE's "1.2" / "1.3" as OpenSSL's version number."""
    if version == "1.2":
        return TLS1_2_VERSION
    if version == "1.3":
        return TLS1_3_VERSION
    raise ValueError(f"TLS minimum version must be 1.2 or 1.3, not {version!r}")


cdef tls_protocol(SSL_CTX *ctx, str min_version, bytes ciphers, bytes ciphersuites):
    """The minimum version and the ciphers of ctx ("" : OpenSSL's defaults)."""
    SSL_CTX_set_min_proto_version(ctx, tls_version(min_version))
    if ciphers and SSL_CTX_set_cipher_list(ctx, ciphers) != 1:
        raise ValueError(f"TLS cipher list {ciphers.decode()!r}: {tls_error_text()}")
    if ciphersuites and SSL_CTX_set_ciphersuites(ctx, ciphersuites) != 1:
        raise ValueError(f"TLS 1.3 ciphersuites {ciphersuites.decode()!r}: {tls_error_text()}")


cdef str tls_error_text():
    """OpenSSL's last error on this thread, as text (the queue is cleared)."""
    cdef char text[256]
    cdef unsigned long e = ERR_get_error()
    ERR_clear_error()
    if e == 0:
        return "unknown OpenSSL error"
    ERR_error_string_n(e, text, sizeof(text))
    return text.decode(errors="replace")


cdef SSL_CTX *tls_context(bytes certfile, bytes keyfile, bytes cafile, int client_auth,
                          list authorized_names, str min_version, bytes ciphers,
                          bytes ciphersuites) except NULL:
    """An endpoint's SSL_CTX: its certificate (chain) and key, min_version ("1.2", "1.3") and
    up with the ciphers given; with client_auth, client certificates verified against cafile
    (a certificate listed there itself, not only its issuer, is trusted:
    X509_V_FLAG_PARTIAL_CHAIN), required or not, and if authorized_names (bytes) are given,
    a certificate must name one of them (subject CN or DNS SAN)."""
    cdef SSL_CTX *ctx = SSL_CTX_new(TLS_server_method())
    cdef X509_VERIFY_PARAM *param
    cdef int mode
    cdef bytes name
    if ctx == NULL:
        raise MemoryError(tls_error_text())
    try:
        tls_protocol(ctx, min_version, ciphers, ciphersuites)
        SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE)
        SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER)
        SSL_CTX_set_session_id_context(ctx, <const unsigned char *>b"dmcproxy", 8)
        if SSL_CTX_use_certificate_chain_file(ctx, certfile) != 1:
            raise ValueError(f"TLS certificate {certfile.decode()}: {tls_error_text()}")
        if SSL_CTX_use_PrivateKey_file(ctx, keyfile, SSL_FILETYPE_PEM) != 1:
            raise ValueError(f"TLS key {keyfile.decode()}: {tls_error_text()}")
        if SSL_CTX_check_private_key(ctx) != 1:
            raise ValueError(f"TLS key {keyfile.decode()} is not the certificate's: {tls_error_text()}")
        if client_auth != TLS_CLIENT_AUTH_NONE:
            if not cafile:
                raise ValueError("TLS client authentication needs a CA file")
            if SSL_CTX_load_verify_locations(ctx, cafile, NULL) != 1:
                raise ValueError(f"TLS CA file {cafile.decode()}: {tls_error_text()}")
            SSL_CTX_set_client_CA_list(ctx, SSL_load_client_CA_file(cafile))
            param = SSL_CTX_get0_param(ctx)
            X509_VERIFY_PARAM_set_flags(param, X509_V_FLAG_PARTIAL_CHAIN)
            if authorized_names:
                X509_VERIFY_PARAM_set_hostflags(
                    param, X509_CHECK_FLAG_ALWAYS_CHECK_SUBJECT | X509_CHECK_FLAG_NO_WILDCARDS)
                for name in authorized_names:
                    if not name or X509_VERIFY_PARAM_add1_host(param, name, len(name)) != 1:
                        raise ValueError(f"TLS authorized name {name!r}: {tls_error_text()}")
            mode = SSL_VERIFY_PEER
            if client_auth == TLS_CLIENT_AUTH_REQUIRED:
                mode |= SSL_VERIFY_FAIL_IF_NO_PEER_CERT
            SSL_CTX_set_verify(ctx, mode, NULL)
    except BaseException:
        SSL_CTX_free(ctx)
        ERR_clear_error()
        raise
    return ctx


# Shard TLS (data-path internode encryption, a database's data_internode_encryption): with
# core.shard_tls_ctx (Proxy.set_shard_tls) every connection the proxy opens to a shard speaks
# TLS to the shard's tls-port, the client side of the same OpenSSL calls as above.
#
# - Connect: once the TCP connect is done (backend_writable) the connection gets an SSL in
#   connect state and stays BK_CONNECTING while SSL_do_handshake runs in the loop, on EPOLLIN
#   or EPOLLOUT as OpenSSL asks; the shard's certificate must verify against the CA file (the
#   cluster CA: names are not checked, the CA signs only the cluster's nodes); the proxy
#   presents its own certificate (redis-server's tls-auth-clients yes). Only then is it BK_UP
#   and its first bytes (HELLO, AUTH) go out. A failed handshake is a connection failure
#   (retried with back-off, counted in core.shard_tls_failures).
# - Read (backend_tls_read, in place of recv): SSL_read until OpenSSL wants more from the
#   socket, the read buffer grown as needed, so nothing decrypted waits inside OpenSSL unseen
#   by epoll. WANT_WRITE sets tls_want_write: the read is done again once writable.
# - Write (backend_tls_write, in place of send): as tls_write (partial writes, moving buffer).
# Plaintext shard connections pay one branch (b.ssl == NULL) per read and per write.


cdef SSL_CTX *shard_tls_context(bytes certfile, bytes keyfile, bytes cafile, str min_version,
                                bytes ciphers, bytes ciphersuites) except NULL:
    """The SSL_CTX of connections to TLS shards: min_version and up with the ciphers given,
    the shards' certificates verified against cafile (PARTIAL_CHAIN: a self-signed shard
    certificate listed there is trusted too), certfile/keyfile (if given) presented as the
    client certificate."""
    cdef SSL_CTX *ctx = SSL_CTX_new(TLS_client_method())
    if ctx == NULL:
        raise MemoryError(tls_error_text())
    try:
        tls_protocol(ctx, min_version, ciphers, ciphersuites)
        SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION)
        SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER)
        if certfile:
            if SSL_CTX_use_certificate_chain_file(ctx, certfile) != 1:
                raise ValueError(f"TLS certificate {certfile.decode()}: {tls_error_text()}")
            if SSL_CTX_use_PrivateKey_file(ctx, keyfile, SSL_FILETYPE_PEM) != 1:
                raise ValueError(f"TLS key {keyfile.decode()}: {tls_error_text()}")
            if SSL_CTX_check_private_key(ctx) != 1:
                raise ValueError(f"TLS key {keyfile.decode()} is not the certificate's: {tls_error_text()}")
        if SSL_CTX_load_verify_locations(ctx, cafile, NULL) != 1:
            raise ValueError(f"TLS CA file {cafile.decode()}: {tls_error_text()}")
        X509_VERIFY_PARAM_set_flags(SSL_CTX_get0_param(ctx), X509_V_FLAG_PARTIAL_CHAIN)
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL)
    except BaseException:
        SSL_CTX_free(ctx)
        ERR_clear_error()
        raise
    return ctx


cdef bint backend_tls_start(Core *core, Backend *b) noexcept nogil:
    """The connected socket of b gets its SSL, in connect state; False if OpenSSL cannot."""
    b.ssl = SSL_new(core.shard_tls_ctx)
    b.tls_want_write = False
    if b.ssl == NULL or SSL_set_fd(b.ssl, b.fd) != 1:
        ERR_clear_error()
        return False
    SSL_set_connect_state(b.ssl)
    return True


cdef int backend_tls_handshake(Core *core, Backend *b) noexcept nogil:
    """One step of the handshake: 1 done, 0 waiting for the socket (epoll set), -1 failed."""
    cdef int r = SSL_do_handshake(b.ssl)
    cdef int err
    if r == 1:
        return 1
    err = SSL_get_error(b.ssl, r)
    if err == SSL_ERROR_WANT_READ:
        epoll_want(core, b.fd, b, &b.events, EPOLLIN)
        return 0
    if err == SSL_ERROR_WANT_WRITE:
        epoll_want(core, b.fd, b, &b.events, EPOLLIN | EPOLLOUT)
        return 0
    core.shard_tls_failures += 1
    ERR_clear_error()
    return -1


cdef ssize_t backend_tls_read(Core *core, Backend *b) noexcept nogil:
    """As recv() into b.rbuf (its end moved here): bytes read (> 0), 0 when the connection is
    over, -1 with errno EAGAIN when nothing is to be read now."""
    cdef size_t total = 0
    cdef size_t room
    cdef int n, err
    while True:
        if buf_reserve(&b.rbuf, READ_CHUNK) < 0:
            break               # what was read is handled; the next read tries again
        room = b.rbuf.cap - b.rbuf.end
        if room > 0x40000000:
            room = 0x40000000
        n = SSL_read(b.ssl, b.rbuf.data + b.rbuf.end, <int>room)
        if n > 0:
            b.rbuf.end += <size_t>n
            total += <size_t>n
            continue
        err = SSL_get_error(b.ssl, n)
        if err == SSL_ERROR_WANT_READ:
            break
        if err == SSL_ERROR_WANT_WRITE:
            b.tls_want_write = True
            epoll_want(core, b.fd, b, &b.events, b.events | EPOLLOUT)
            break
        ERR_clear_error()       # close_notify, a reset, or a TLS error: the connection is over
        if total > 0:
            break
        return 0
    if total == 0:
        errno = EAGAIN
        return -1
    return <ssize_t>total


cdef ssize_t backend_tls_write(Backend *b, const char *buf, size_t n) noexcept nogil:
    """As send(): bytes written (> 0), or -1 with errno EAGAIN or EPIPE."""
    cdef int r, err
    if n > 0x40000000:
        n = 0x40000000
    r = SSL_write(b.ssl, buf, <int>n)
    if r > 0:
        return r
    err = SSL_get_error(b.ssl, r)
    if err == SSL_ERROR_WANT_WRITE or err == SSL_ERROR_WANT_READ:
        errno = EAGAIN
    else:
        ERR_clear_error()
        errno = EPIPE
    return -1


cdef void backend_socket_close(Backend *b) noexcept nogil:
    """Close b's socket (fd -1 after): its SSL, if any, freed first (a close_notify, one try)."""
    if b.ssl != NULL:
        if SSL_is_init_finished(b.ssl):
            SSL_shutdown(b.ssl)
        ERR_clear_error()
        SSL_free(b.ssl)
        b.ssl = NULL
    b.tls_want_write = False
    if b.fd >= 0:
        close(b.fd)
        b.fd = -1
