# Input buffering limits: Redis's client-query-buffer-limit per client, and one budget for the
# input of every client of the process (Redis's maxmemory-clients, for input).
# Declarations; the code is in input_limit.pxi.

cdef enum:
    EVICT_FLOOR = 65536     # a client holding less input than this is never evicted for the budget

cdef extern from *:
    """
    /* The process's input budget: bytes of unparsed client input held by every Proxy of the
       process (all endpoints of a node share one dmcproxy process), and the budget itself.
       The one mutable state at module level, updated with atomic operations by every loop. */
    static size_t dmc_input_bytes = 0;
    static size_t dmc_input_budget = 0;
    static inline size_t dmc_input_add(size_t delta) {
        return __atomic_add_fetch(&dmc_input_bytes, delta, __ATOMIC_RELAXED); }
    static inline size_t dmc_input_sub(size_t delta) {
        return __atomic_sub_fetch(&dmc_input_bytes, delta, __ATOMIC_RELAXED); }
    static inline size_t dmc_input_total(void) {
        return __atomic_load_n(&dmc_input_bytes, __ATOMIC_RELAXED); }
    static inline size_t dmc_input_get_budget(void) {
        return __atomic_load_n(&dmc_input_budget, __ATOMIC_RELAXED); }
    static inline void dmc_input_set_budget(size_t b) {
        __atomic_store_n(&dmc_input_budget, b, __ATOMIC_RELAXED); }
    """
    size_t dmc_input_add(size_t delta) nogil
    size_t dmc_input_sub(size_t delta) nogil
    size_t dmc_input_total() nogil
    size_t dmc_input_get_budget() nogil
    void dmc_input_set_budget(size_t b) nogil


cdef bint input_account(Core *core, Client *c) noexcept nogil
cdef void input_release(Client *c) noexcept nogil
