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


cdef struct Workers:
    int n
    Core *cores[MAX_WORKERS]
    pthread_mutex_t world              # held by whoever stops every worker (workers_stop)
    pthread_mutex_t turn[MAX_WORKERS]  # held by worker i during a turn of its loop
    pthread_mutex_t inbox_lock[MAX_WORKERS]    # a leaf lock: nothing is taken while it is held
    Buf inbox[MAX_WORKERS]             # MONITOR lines of the other workers' clients, for worker i
    int inbox_full[MAX_WORKERS]        #   non-zero while inbox[i] holds some
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
