# The endpoint's counters: what it was asked, what it answered and how fast, its connections
# and bytes; read by Proxy.stats() (between two turns of the loop: no lock, no race) and by INFO.
# Declarations; the code is in counters.pxi.

cdef enum:
    CLASS_READ = 0          # the command's flags in the shards' COMMAND table: `readonly`
    CLASS_WRITE = 1         #   `write`
    CLASS_OTHER = 2         #   anything else, an unknown command, a protocol error
    NCLASSES = 3
    LATENCY_BUCKETS = 15    # counters.pxi's LATENCY_BOUNDS_US, then +Inf
    RATE_SAMPLES = 16       # as Redis's STATS_METRIC_SAMPLES: instantaneous_* is their mean
    RATE_SAMPLE_US = 100000 #   one sample every 100 ms, as Redis's serverCron


cdef struct RateSampler:
    long long last_us           # when the last sample was taken
    unsigned long long last     # the counter then
    long long samples[RATE_SAMPLES]     # per second
    int idx


cdef struct InfoBase:
    # The counters when CONFIG RESETSTAT was last asked: INFO shows what came since, as Redis's
    # do, while the counters themselves (Prometheus') only grow.
    unsigned long long requests
    unsigned long long connections
    unsigned long long rejected
    unsigned long long ingress_bytes
    unsigned long long egress_bytes
    unsigned long long errors
    unsigned long long reads
    unsigned long long auth_failures


cdef struct InfoOwn:
    # INFO's figures that are the endpoint's own (info.pxi's own_value), counted from the last
    # CONFIG RESETSTAT: one worker's, or, with worker threads, every worker's summed while they
    # are all stopped (info_own_fill).
    unsigned long long connections
    unsigned long long rejected
    unsigned long long requests
    unsigned long long ingress_bytes
    unsigned long long egress_bytes
    unsigned long long errors
    unsigned long long reads
    unsigned long long auth_failures
    long long ops_per_sec
    long long net_in_per_sec
    long long net_out_per_sec
    int pubsub_clients
    int tracking_clients
    int blocked_clients


cdef struct Counters:
    unsigned long long req[NCLASSES]        # requests parsed, by class
    unsigned long long requests             #   and in all
    unsigned long long res[NCLASSES]        # answers written, by class
    unsigned long long latency_us[NCLASSES] # sum of the timed answers' latencies
    unsigned long long histogram[NCLASSES * LATENCY_BUCKETS]   # timed answers by latency bucket
    unsigned long long ingress_bytes        # read from client sockets
    unsigned long long egress_bytes         # written to client sockets
    unsigned long long reads                # recv() calls that brought client bytes
    unsigned long long max_pipeline         # most requests parsed from one client read
    unsigned long long errors               # answers that are errors (`-...`, `!...`)
    unsigned long long auth_failures        # AUTH / HELLO AUTH refused
    long long monitors                      # clients in MONITOR now
    long long pubsub_channels               # subscriptions of this endpoint's clients now
    long long pubsub_patterns
    long long pubsub_shard_channels
    long long started_us                    # monotonic time the endpoint was made
    long long started_unix_us               # and its wall-clock time
    char run_id[41]                         # INFO's run_id: 40 hex digits, made once per endpoint
    int port                                # the endpoint's TCP port (INFO's tcp_port)
    long long next_sample_us
    RateSampler ops
    RateSampler net_in
    RateSampler net_out
    InfoBase info_base                      # INFO's counters count from here (CONFIG RESETSTAT)
