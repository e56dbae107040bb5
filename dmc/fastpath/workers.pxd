# Worker threads of one endpoint (dmcproxy --threads N, a database's proxy_threads): N Cores,
# each with its own loop, clients and shard connections, that share what is per endpoint.
# Declarations; the code is in workers.pxi.

cdef extern from "pthread.h" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    int pthread_mutex_init(pthread_mutex_t *m, void *attr)
    int pthread_mutex_destroy(pthread_mutex_t *m)
    int pthread_mutex_lock(pthread_mutex_t *m)
    int pthread_mutex_unlock(pthread_mutex_t *m)

cdef extern from *:
    """
    #define dmc_atomic_add_int(p, v) __atomic_add_fetch((p), (v), __ATOMIC_RELAXED)
    #define dmc_atomic_load_int(p) __atomic_load_n((p), __ATOMIC_RELAXED)
    """
    int dmc_atomic_add_int(int *p, int v) nogil
    int dmc_atomic_load_int(int *p) nogil

cdef enum:
    MAX_WORKERS = 64

cdef enum WorkerMail:
    MAIL_INVALIDATE = 1     # a tracking client's invalidation, for its REDIRECT client here
    MAIL_REDIR_BROKEN = 2   # that REDIRECT client is gone: for the tracking client here
    MAIL_SHARD_BUSY = 3     # shard to_id runs a script (the bytes: its -BUSY line), busy.pxi
    MAIL_SHARD_NOT_BUSY = 4 #   no more


cdef struct MailHeader:
    int kind
    unsigned long long to_id           # the client of the worker it is for (or a shard index)
    unsigned long long from_id         # the client of the worker that sent it
    size_t n                           # bytes that follow


cdef struct Workers:
    int n
    Core *cores[MAX_WORKERS]
    pthread_mutex_t world              # held by whoever stops every worker (workers_stop)
    pthread_mutex_t turn[MAX_WORKERS]  # held by worker i during a turn of its loop
    pthread_mutex_t inbox_lock[MAX_WORKERS]    # a leaf lock: nothing is taken while it is held
    Buf inbox[MAX_WORKERS]             # MONITOR lines of the other workers' clients, for worker i
    int inbox_full[MAX_WORKERS]        #   non-zero while inbox[i] holds some
    Buf mail[MAX_WORKERS]              # messages for worker i (worker_mail; under inbox_lock[i])
    int seq_wake[MAX_WORKERS]          # worker i has sequences waiting and a slot they wait for is free
    pthread_mutex_t seq_lock           # a leaf lock: the sequential commands' slot locks (seq_locks)
    unsigned char seq_locks[SLOT_COUNT]    #   every worker's, as one proxy's (sequential.pxi)
    int seq_waiting[MAX_WORKERS]       #   worker i has sequences waiting (under seq_lock)
    int monitors                       # MONITOR sessions of every worker
    int nclients                       # clients of every worker (--max-clients is the endpoint's)


cdef void workers_stop(Workers *w) noexcept nogil
cdef void workers_start(Workers *w) noexcept nogil
cdef void workers_wake(Workers *w, Core *except_core) noexcept nogil
cdef void worker_turn_begin(Core *core) noexcept nogil
cdef void worker_turn_end(Core *core) noexcept nogil
cdef bint worker_cross_wait(Core *core, Client *c) noexcept nogil
cdef void worker_monitor_feed(Core *core, Buf *line) noexcept nogil
cdef int endpoint_clients(Core *core) noexcept nogil
cdef void worker_mail(Core *core, int to, int kind, unsigned long long to_id,
                      unsigned long long from_id, const char *p, size_t n) noexcept nogil
cdef void workers_mail_all(Core *core, int kind, unsigned long long to_id, const char *p,
                           size_t n) noexcept nogil
cdef void workers_seq_released(Core *core) noexcept nogil
