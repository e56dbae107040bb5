# The endpoint's counters (counters.pxd): counted on the data path with a few plain additions
# per request, read from Python by Proxy.stats() between two turns of the loop (on the loop's own
# thread: Endpoint.call(), or dmcproxy's signal handlers), so never torn and never locked.
#
# Clock: latency is core.now_us of the turn in which the answer is complete and written to the
# client's output (sent at the end of that same turn) minus core.now_us of the turn in which the
# request was parsed. now_us is read once per turn, right after epoll_wait (one vDSO
# clock_gettime per turn, none per request), so both ends are early by at most the time the turn
# had run before reaching them: the error is bounded by one turn's processing time (a few
# microseconds to tens of them). A request parsed late (its client was paused behind a blocking
# command, a GETKEYS or a pause of the proxy) is timed from when it is parsed.
#
# Timed: every answer, except those of blocking commands (BLPOP & co., WAIT: their wait is the
# client's choice) and those a subscriber's own connection passes through (SUBSCRIBE & co., and
# any command of a subscribed RESP2 client); those count in req/res but not in latency_us and
# the histogram. So sum(histogram[class]) <= res[class], and the average latency of a class is
# latency_us[class] / sum(histogram[class]).

cdef extern from *:
    """
    #include <limits.h>
    /* Upper bounds (inclusive, microseconds) of the latency buckets, log-spaced 1-2-5; the
       last bucket, past 1 s, is +Inf. */
    static const long long DMC_LATENCY_BOUNDS_US[15] = {
        50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000, 200000, 500000,
        1000000, LLONG_MAX};
    /* The bucket of the smallest value of each bit length: bounds are at least 2x apart, so
       the values of one bit length span at most two buckets, and one comparison decides. */
    static const unsigned char DMC_LATENCY_BUCKET_OF_BITS[65] = {
        0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 6, 7, 8, 9, 10, 11, 12, 13, 14, 14, 14, 14, 14,
        14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14,
        14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14};
    static inline int dmc_latency_bucket(long long us) {
        int b;
        if (us <= 0) return 0;
        b = DMC_LATENCY_BUCKET_OF_BITS[64 - __builtin_clzll((unsigned long long)us)];
        return b + (us > DMC_LATENCY_BOUNDS_US[b]);
    }
    """
    const long long DMC_LATENCY_BOUNDS_US[15]
    int dmc_latency_bucket(long long us) nogil

cdef extern from "unistd.h":
    int getpid() nogil

cdef extern from "sys/time.h":
    cdef struct timeval:
        long tv_sec
        long tv_usec
    int gettimeofday(timeval *tv, void *tz) nogil

cdef extern from "sys/resource.h":
    cdef struct rusage:
        timeval ru_utime
        timeval ru_stime
    int RUSAGE_SELF
    int RUSAGE_CHILDREN
    int RUSAGE_THREAD
    int getrusage(int who, rusage *usage) nogil


def latency_bucket(long long us):
    """The histogram bucket of a latency in microseconds (for tests and tools)."""
    return dmc_latency_bucket(us)


cdef inline int command_class(CommandInfo *cmd) noexcept nogil:
    return cmd.cls if cmd != NULL else CLASS_OTHER


cdef inline void count_request(Core *core, CommandInfo *cmd) noexcept nogil:
    core.counters.req[command_class(cmd)] += 1
    core.counters.requests += 1


cdef inline void count_answer(Core *core, int k, bint error, const char *reply, long long us,
                              bint timed) noexcept nogil:
    """An answer of class k written; error: reply_is_error(reply)."""
    core.counters.res[k] += 1
    if error:
        core.counters.errors += 1
        if memcmp(reply, b"-WRONGPASS", 10) == 0:
            core.counters.auth_failures += 1     # AUTH or HELLO AUTH refused, whoever refused it
    if timed:
        core.counters.latency_us[k] += <unsigned long long>us
        core.counters.histogram[k * LATENCY_BUCKETS + dmc_latency_bucket(us)] += 1


cdef inline unsigned long long requests_total(Core *core) noexcept nogil:
    return core.counters.requests


cdef inline void count_pipeline(Core *core, unsigned long long before) noexcept nogil:
    """After one client read was parsed: the requests it brought (before: requests_total())."""
    cdef unsigned long long n = requests_total(core) - before
    if n > core.counters.max_pipeline:
        core.counters.max_pipeline = n


cdef inline void count_subscriptions(Core *core, Backend *b, int channels, int patterns,
                                     int shard_channels) noexcept nogil:
    """A subscriber connection now holds these subscriptions (-1: that family unchanged)."""
    if channels >= 0:
        core.counters.pubsub_channels += channels - b.channels
        b.channels = channels
    if patterns >= 0:
        core.counters.pubsub_patterns += patterns - b.patterns
        b.patterns = patterns
    if shard_channels >= 0:
        core.counters.pubsub_shard_channels += shard_channels - b.shard_channels
        b.shard_channels = shard_channels


cdef void counters_init(Core *core, int port) noexcept nogil:
    cdef timeval tv
    cdef int i
    cdef unsigned long long x = 0
    core.counters.started_us = core.now_us
    gettimeofday(&tv, NULL)
    core.counters.started_unix_us = <long long>tv.tv_sec * 1000000 + tv.tv_usec
    for i in range(40):
        if i % 16 == 0:
            x = core_random(core)
        core.counters.run_id[i] = b"0123456789abcdef"[x & 15]
        x >>= 4
    core.counters.run_id[40] = 0
    core.counters.port = port
    core.counters.next_sample_us = core.now_us + RATE_SAMPLE_US
    core.counters.ops.last_us = core.counters.net_in.last_us = core.counters.net_out.last_us = core.now_us


cdef inline void rate_sample(RateSampler *s, unsigned long long value, long long now_us) noexcept nogil:
    cdef long long dt = now_us - s.last_us
    if dt > 0:
        s.samples[s.idx] = <long long>((value - s.last) * 1000000 // <unsigned long long>dt)
        s.idx = (s.idx + 1) % RATE_SAMPLES
    s.last = value
    s.last_us = now_us


cdef long long rate_mean(RateSampler *s) noexcept nogil:
    cdef long long total = 0
    cdef int i
    for i in range(RATE_SAMPLES):
        total += s.samples[i]
    return total // RATE_SAMPLES


cdef void counters_sample(Core *core) noexcept nogil:
    """Every RATE_SAMPLE_US (checked once per turn; the loop's 100 ms tick bounds the gap when
    idle): the rates INFO's instantaneous_* fields report, as Redis's trackInstantaneousMetric."""
    core.counters.next_sample_us = core.now_us + RATE_SAMPLE_US
    rate_sample(&core.counters.ops, requests_total(core), core.now_us)
    rate_sample(&core.counters.net_in, core.counters.ingress_bytes, core.now_us)
    rate_sample(&core.counters.net_out, core.counters.egress_bytes, core.now_us)


cdef int blocked_clients(Core *core) noexcept nogil:
    """Clients waiting in BLPOP & co. or WAIT now."""
    cdef int n = 0
    cdef Client *c = core.all_clients
    while c != NULL:
        if c.flags & CF_BLOCKED:
            n += 1
        c = c.next
    return n


cdef int pubsub_clients(Core *core) noexcept nogil:
    cdef int n = 0
    cdef Client *c = core.all_clients
    while c != NULL:
        if c.flags & CF_PUBSUB:
            n += 1
        c = c.next
    return n


cdef int tracking_clients(Core *core) noexcept nogil:
    """Clients with CLIENT TRACKING on."""
    cdef int n = 0
    cdef Client *c = core.all_clients
    while c != NULL:
        if c.flags & CF_TRACKING:
            n += 1
        c = c.next
    return n


LATENCY_BUCKETS_US = [DMC_LATENCY_BOUNDS_US[i] for i in range(LATENCY_BUCKETS - 1)]
CLASSES = ("read", "write", "other")


cdef dict counters_dict(Core *core):
    """Proxy.stats()["counters"]: the contract the metrics exporter, stats archiver and alert
    manager read (see README's "Counters"); values are ints (uptime_s a float)."""
    cdef Counters *k = &core.counters
    cdef int i, j
    out = {}
    for i in range(NCLASSES):
        out[CLASSES[i] + "_req"] = k.req[i]
        out[CLASSES[i] + "_res"] = k.res[i]
        out[CLASSES[i] + "_latency_us"] = k.latency_us[i]
    out["latency_buckets_us"] = list(LATENCY_BUCKETS_US)
    out["latency_histogram"] = {
        CLASSES[i]: [k.histogram[i * LATENCY_BUCKETS + j] for j in range(LATENCY_BUCKETS)]
        for i in range(NCLASSES)}
    out.update(conns=core.nclients,
               total_connections_received=core.total_connections - core.rejected_connections,
               rejected_connections=core.rejected_connections,
               ingress_bytes=k.ingress_bytes, egress_bytes=k.egress_bytes,
               max_pipeline=k.max_pipeline, errors=k.errors, auth_failures=k.auth_failures,
               monitors=k.monitors, pubsub_channels=k.pubsub_channels,
               pubsub_patterns=k.pubsub_patterns, pubsub_shard_channels=k.pubsub_shard_channels,
               blocked_clients=blocked_clients(core), pubsub_clients=pubsub_clients(core),
               instantaneous_ops_per_sec=rate_mean(&k.ops),
               uptime_s=(monotonic_us() - k.started_us) / 1e6)
    return out
