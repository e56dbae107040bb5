# Client TLS, terminated in the data path with OpenSSL (libssl, libcrypto): the declarations
# the endpoint's TLS uses. The code is in tls.pxi.

cdef enum:
    TLS_RECORD_MAX = 16384      # the most plaintext one TLS record carries (RFC 8446, 5.1)
    TLS_CLIENT_AUTH_NONE = 0
    TLS_CLIENT_AUTH_OPTIONAL = 1
    TLS_CLIENT_AUTH_REQUIRED = 2
    HANDSHAKE_CHECK_US = 100000     # how often clients still in their handshake are looked at
    TLS_HANDSHAKE_TIMEOUT_S = 10    # a client's TLS handshake, at most (Proxy.tls_handshake_timeout)

cdef extern from "openssl/ssl.h" nogil:
    ctypedef struct SSL_CTX:
        pass
    ctypedef struct SSL:
        pass
    ctypedef struct SSL_METHOD:
        pass
    ctypedef struct X509_VERIFY_PARAM:
        pass
    ctypedef struct X509_NAME:
        pass
    ctypedef struct stack_st_X509_NAME:
        pass
    const SSL_METHOD *TLS_server_method()
    const SSL_METHOD *TLS_client_method()
    SSL_CTX *SSL_CTX_new(const SSL_METHOD *method)
    void SSL_CTX_free(SSL_CTX *ctx)
    int SSL_CTX_use_certificate_chain_file(SSL_CTX *ctx, const char *path)
    int SSL_CTX_use_PrivateKey_file(SSL_CTX *ctx, const char *path, int kind)
    int SSL_CTX_check_private_key(const SSL_CTX *ctx)
    int SSL_CTX_load_verify_locations(SSL_CTX *ctx, const char *cafile, const char *capath)
    void SSL_CTX_set_verify(SSL_CTX *ctx, int mode, void *callback)
    long SSL_CTX_set_mode(SSL_CTX *ctx, long mode)
    unsigned long long SSL_CTX_set_options(SSL_CTX *ctx, unsigned long long options)
    int SSL_CTX_set_min_proto_version(SSL_CTX *ctx, int version)
    int SSL_CTX_set_cipher_list(SSL_CTX *ctx, const char *ciphers)
    int SSL_CTX_set_ciphersuites(SSL_CTX *ctx, const char *suites)
    int SSL_CTX_set_session_id_context(SSL_CTX *ctx, const unsigned char *sid, unsigned int n)
    X509_VERIFY_PARAM *SSL_CTX_get0_param(SSL_CTX *ctx)
    stack_st_X509_NAME *SSL_load_client_CA_file(const char *path)
    void SSL_CTX_set_client_CA_list(SSL_CTX *ctx, stack_st_X509_NAME *names)
    SSL *SSL_new(SSL_CTX *ctx)
    void SSL_free(SSL *ssl)
    int SSL_set_fd(SSL *ssl, int fd)
    void SSL_set_accept_state(SSL *ssl)
    void SSL_set_connect_state(SSL *ssl)
    int SSL_do_handshake(SSL *ssl)
    int SSL_read(SSL *ssl, void *buf, int n)
    int SSL_write(SSL *ssl, const void *buf, int n)
    int SSL_get_error(const SSL *ssl, int ret)
    int SSL_shutdown(SSL *ssl)
    int SSL_is_init_finished(const SSL *ssl)
    int SSL_FILETYPE_PEM
    int SSL_VERIFY_NONE, SSL_VERIFY_PEER, SSL_VERIFY_FAIL_IF_NO_PEER_CERT
    int SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE
    long SSL_MODE_ENABLE_PARTIAL_WRITE, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER
    unsigned long long SSL_OP_NO_RENEGOTIATION, SSL_OP_CIPHER_SERVER_PREFERENCE
    int TLS1_2_VERSION, TLS1_3_VERSION

cdef extern from "openssl/x509_vfy.h" nogil:
    int X509_VERIFY_PARAM_set_flags(X509_VERIFY_PARAM *param, unsigned long flags)
    unsigned long X509_V_FLAG_PARTIAL_CHAIN
    int X509_VERIFY_PARAM_add1_host(X509_VERIFY_PARAM *param, const char *name, size_t n)
    void X509_VERIFY_PARAM_set_hostflags(X509_VERIFY_PARAM *param, unsigned int flags)

cdef extern from "openssl/x509v3.h" nogil:
    unsigned int X509_CHECK_FLAG_ALWAYS_CHECK_SUBJECT, X509_CHECK_FLAG_NO_WILDCARDS

cdef extern from "openssl/err.h" nogil:
    unsigned long ERR_get_error()
    void ERR_clear_error()
    void ERR_error_string_n(unsigned long e, char *buf, size_t n)


cdef bint tls_accept(Core *core, Client *c) noexcept nogil
cdef ssize_t tls_read(Core *core, Client *c, char *buf, size_t cap) noexcept nogil
cdef ssize_t tls_write(Client *c, const char *buf, size_t n) noexcept nogil
cdef void tls_close(Client *c) noexcept nogil
cdef void close_slow_handshakes(Core *core) noexcept nogil
