# The C library and system calls the data path uses (declarations only).

from libc.stdlib cimport malloc, calloc, realloc, free, qsort, strtod
from libc.math cimport isnan, isinf, sqrt, pow, llroundl
from libc.string cimport memcpy, memmove, memchr, memcmp, memset, strlen
from libc.stdio cimport snprintf
from libc.errno cimport errno, EAGAIN, EINTR, EINPROGRESS, EPIPE
cdef extern from "<string.h>" nogil:
    void *memmem(const void *haystack, size_t haystacklen, const void *needle, size_t needlelen)

cdef extern from "errno.h":
    int EWOULDBLOCK
from posix.unistd cimport close, read, write
from posix.unistd cimport getpid
from posix.signal cimport kill
from libc.signal cimport SIGSTOP
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC, CLOCK_REALTIME
from cpython.exc cimport PyErr_CheckSignals

cdef extern from "sys/types.h":
    ctypedef long ssize_t

cdef extern from "sys/socket.h":
    ctypedef unsigned int socklen_t
    struct sockaddr:
        pass
    int socket(int domain, int type, int protocol) nogil
    int connect(int fd, const sockaddr *addr, socklen_t len) nogil
    int accept4(int fd, sockaddr *addr, socklen_t *len, int flags) nogil
    ssize_t recv(int fd, void *buf, size_t n, int flags) nogil
    ssize_t send(int fd, const void *buf, size_t n, int flags) nogil
    int setsockopt(int fd, int level, int name, const void *val, socklen_t len) nogil
    int getsockopt(int fd, int level, int name, void *val, socklen_t *len) nogil
    int getsockname(int fd, sockaddr *addr, socklen_t *len) nogil
    int getpeername(int fd, sockaddr *addr, socklen_t *len) nogil
    int AF_INET, SOCK_STREAM, SOCK_NONBLOCK, SOCK_CLOEXEC, SOL_SOCKET, SO_ERROR, MSG_NOSIGNAL

cdef extern from "netinet/in.h":
    struct in_addr:
        unsigned int s_addr
    struct sockaddr_in:
        unsigned short sin_family
        unsigned short sin_port
        in_addr sin_addr
    int IPPROTO_TCP
    unsigned short htons(unsigned short) nogil
    unsigned short ntohs(unsigned short) nogil

cdef extern from "netinet/tcp.h":
    int TCP_NODELAY

cdef extern from "arpa/inet.h":
    int inet_pton(int af, const char *src, void *dst) nogil
    const char *inet_ntop(int af, const void *src, char *dst, socklen_t size) nogil

cdef extern from "sys/eventfd.h":
    int eventfd(unsigned int initval, int flags) nogil
    int EFD_NONBLOCK, EFD_CLOEXEC

cdef extern from "sys/epoll.h":
    ctypedef union epoll_data_t:
        void *ptr
        int fd
    struct epoll_event:
        unsigned int events
        epoll_data_t data
    int epoll_create1(int flags) nogil
    int epoll_ctl(int epfd, int op, int fd, epoll_event *ev) nogil
    int epoll_wait(int epfd, epoll_event *events, int maxevents, int timeout) nogil
    int EPOLL_CTL_ADD, EPOLL_CTL_MOD, EPOLL_CTL_DEL, EPOLL_CLOEXEC
    unsigned int EPOLLIN, EPOLLOUT, EPOLLERR, EPOLLHUP, EPOLLRDHUP
