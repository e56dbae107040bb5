# INFO through the endpoint: the database as a client sees it, merged from every shard's INFO
# (the request goes to every shard of the map, as sent, so `INFO <section>`, `INFO a b c`,
# `INFO all|everything|default` select the sections the way each redis-server does) and the
# endpoint's own counters. The text keeps the first shard's order of sections and fields; each
# field is then
#
#   the endpoint's own   (own_value: connected_clients, total_commands_processed, tcp_port,
#                         uptime, run_id, the proxy's CPU ...);
#   summed               (used_memory, maxmemory, keyspace_hits, rdb_changes_since_last_save,
#                         blocked_clients ...: the default of # Memory and # Stats);
#   worst-of             (loading, *_in_progress, *_ratio, *_status: the largest, or a value
#                         other than `ok`; rdb_last_save_time: the oldest);
#   the first shard's    (redis_version, role, replication offsets: per shard by nature);
#   recomputed           (*_human from the merged byte count);
#   merged by subfield   (# Keyspace db0 keys/expires summed, avg_ttl weighted by expires;
#                         # Commandstats and # Errorstats summed per command / error,
#                         usec_per_call recomputed; # Latencystats the largest percentile),
#                         lines only some shards have included.
# README's "What differs" lists which is which. INFO is rare: this runs once per INFO, in the
# loop, in C; the per-command path does not see it.


cdef inline bint name_is(const char *p, int n, const char *word) noexcept nogil:
    cdef size_t w = strlen(word)
    return <size_t>n == w and memcmp(p, word, w) == 0


cdef inline bint name_starts(const char *p, int n, const char *word) noexcept nogil:
    cdef size_t w = strlen(word)
    return <size_t>n >= w and memcmp(p, word, w) == 0


cdef inline bint name_ends(const char *p, int n, const char *word) noexcept nogil:
    cdef size_t w = strlen(word)
    return <size_t>n >= w and memcmp(p + n - w, word, w) == 0


cdef int section_of(const char *p, int n) noexcept nogil:
    """A `# Name` header's section (Redis writes them capitalised)."""
    if n < 3:
        return S_OTHER
    p += 2
    n -= 2
    if name_is(p, n, b"Server"): return S_SERVER
    if name_is(p, n, b"Clients"): return S_CLIENTS
    if name_is(p, n, b"Memory"): return S_MEMORY
    if name_is(p, n, b"Persistence"): return S_PERSISTENCE
    if name_is(p, n, b"Stats"): return S_STATS
    if name_is(p, n, b"Replication"): return S_REPLICATION
    if name_is(p, n, b"CPU"): return S_CPU
    if name_is(p, n, b"Commandstats"): return S_COMMANDSTATS
    if name_is(p, n, b"Errorstats"): return S_ERRORSTATS
    if name_is(p, n, b"Latencystats"): return S_LATENCYSTATS
    if name_is(p, n, b"Keyspace"): return S_KEYSPACE
    return S_OTHER


cdef inline bint union_section(int s) noexcept nogil:
    return s == S_COMMANDSTATS or s == S_ERRORSTATS or s == S_LATENCYSTATS or s == S_KEYSPACE


cdef int field_policy(int s, const char *p, int n) noexcept nogil:
    if union_section(s):
        return P_SUBFIELDS
    if name_ends(p, n, b"_human"):
        return P_HUMAN
    if name_ends(p, n, b"_status"):
        return P_WORST
    if s == S_MEMORY:
        if name_ends(p, n, b"_ratio") or name_is(p, n, b"active_defrag_running") \
                or name_is(p, n, b"number_of_cached_scripts") \
                or name_is(p, n, b"number_of_functions") or name_is(p, n, b"number_of_libraries"):
            return P_MAX        # scripts and functions are loaded on every shard
        if name_is(p, n, b"total_system_memory") or name_is(p, n, b"mem_allocator") \
                or name_is(p, n, b"maxmemory_policy"):
            return P_FIRST
        return P_SUM
    if s == S_PERSISTENCE:
        if name_is(p, n, b"rdb_changes_since_last_save") or name_is(p, n, b"rdb_saves") \
                or name_is(p, n, b"aof_rewrites") or name_ends(p, n, b"_bytes") \
                or name_ends(p, n, b"_size"):
            return P_SUM
        if name_is(p, n, b"rdb_last_save_time"):
            return P_MIN        # the oldest save
        return P_MAX            # loading, *_in_progress, *_time_sec ...: the worst
    if s == S_STATS:
        if name_is(p, n, b"pubsub_channels") or name_is(p, n, b"pubsub_patterns") \
                or name_is(p, n, b"pubsubshard_channels"):
            return P_FIRST      # the pub/sub shard (the map's first): the database's channels
        if name_ends(p, n, b"_perc") or name_starts(p, n, b"current_") \
                or name_is(p, n, b"latest_fork_usec"):
            return P_MAX
        return P_SUM
    if s == S_CLIENTS:
        if name_is(p, n, b"blocked_clients") or name_is(p, n, b"clients_in_timeout_table"):
            # Counted where the wait is: a client is blocked once its shard holds it, so a
            # test that waits on blocked_clients and then pushes is never early
            # (blocked_clients: at most the endpoint's own, see merge_field).
            return P_SUM
        return P_MAX
    if s == S_REPLICATION:
        if name_is(p, n, b"connected_slaves"):
            return P_MIN        # the shard with the fewest replicas: what the database has
        return P_FIRST
    return P_FIRST


cdef void info_reset_stats(Core *core) noexcept nogil:
    """CONFIG RESETSTAT: the endpoint's INFO counters start again from 0 (the shards reset
    theirs); total_connections_received counts rejected ones apart, as above. With worker
    threads it is routed while every worker is stopped (workers.pxi): every worker's."""
    cdef Counters *k
    cdef Core *o
    cdef int w
    for w in range(worker_count(core)):
        o = worker_core(core, w)
        k = &o.counters
        k.info_base.requests = requests_total(o)
        k.info_base.connections = o.total_connections - o.rejected_connections
        k.info_base.rejected = o.rejected_connections
        k.info_base.ingress_bytes = k.ingress_bytes
        k.info_base.egress_bytes = k.egress_bytes
        k.info_base.errors = k.errors
        k.info_base.reads = k.reads
        k.info_base.auth_failures = k.auth_failures


cdef void info_own_fill(Core *core, InfoOwn *own) noexcept nogil:
    """The endpoint's own INFO figures: this Core's, or every worker's summed while they are all
    stopped for this request (worker_count)."""
    cdef Counters *k
    cdef Core *o
    cdef int w
    memset(own, 0, sizeof(InfoOwn))
    for w in range(worker_count(core)):
        o = worker_core(core, w)
        k = &o.counters
        own.connections += o.total_connections - o.rejected_connections - k.info_base.connections
        own.rejected += o.rejected_connections - k.info_base.rejected
        own.requests += requests_total(o) - k.info_base.requests
        own.ingress_bytes += k.ingress_bytes - k.info_base.ingress_bytes
        own.egress_bytes += k.egress_bytes - k.info_base.egress_bytes
        own.errors += k.errors - k.info_base.errors
        own.reads += k.reads - k.info_base.reads
        own.auth_failures += k.auth_failures - k.info_base.auth_failures
        own.ops_per_sec += rate_mean(&k.ops)
        own.net_in_per_sec += rate_mean(&k.net_in)
        own.net_out_per_sec += rate_mean(&k.net_out)
        own.pubsub_clients += pubsub_clients(o)
        own.tracking_clients += tracking_clients(o)
        own.blocked_clients += blocked_clients(o)


cdef void info_snapshot(Core *core, Request *r) noexcept nogil:
    """An INFO routed while every worker is stopped: the endpoint's figures now, kept with the
    request (in r.command, which INFO does not use otherwise) until the shards' replies are
    merged."""
    cdef InfoOwn own
    info_own_fill(core, &own)
    buf_clear(&r.command)
    buf_append(&r.command, <const char *>&own, sizeof(InfoOwn))


cdef int own_value(Core *core, int s, const char *p, int n, char *out, size_t size) noexcept nogil:
    """The endpoint's own value of a field into out; -1 when the field is not the endpoint's.
    Its counters are core.info_own's (info_merge)."""
    cdef Counters *k = &core.counters
    cdef InfoOwn *own = &core.info_own
    cdef long long up = (core.now_us - k.started_us) // 1000000
    cdef rusage ru
    if s == S_SERVER:
        if name_is(p, n, b"process_id"):
            return snprintf(out, size, b"%d", getpid())
        if name_is(p, n, b"run_id"):
            return snprintf(out, size, b"%s", k.run_id)
        if name_is(p, n, b"tcp_port"):
            return snprintf(out, size, b"%d", k.port)
        if name_is(p, n, b"uptime_in_seconds"):
            return snprintf(out, size, b"%lld", up)
        if name_is(p, n, b"uptime_in_days"):
            return snprintf(out, size, b"%lld", up // 86400)
    elif s == S_CLIENTS:
        if name_is(p, n, b"connected_clients"):
            return snprintf(out, size, b"%d", endpoint_clients(core))
        if name_is(p, n, b"maxclients"):
            return snprintf(out, size, b"%d", core.max_clients)
        if name_is(p, n, b"pubsub_clients"):
            return snprintf(out, size, b"%d", own.pubsub_clients)
        if name_is(p, n, b"tracking_clients"):
            return snprintf(out, size, b"%d", own.tracking_clients)
        if name_is(p, n, b"cluster_connections"):
            return snprintf(out, size, b"0")
    elif s == S_STATS:
        if name_is(p, n, b"total_connections_received"):
            return snprintf(out, size, b"%llu", own.connections)
        if name_is(p, n, b"rejected_connections"):
            return snprintf(out, size, b"%llu", own.rejected)
        if name_is(p, n, b"total_commands_processed"):
            return snprintf(out, size, b"%llu", own.requests)
        if name_is(p, n, b"instantaneous_ops_per_sec"):
            return snprintf(out, size, b"%lld", own.ops_per_sec)
        if name_is(p, n, b"total_net_input_bytes"):
            return snprintf(out, size, b"%llu", own.ingress_bytes)
        if name_is(p, n, b"total_net_output_bytes"):
            return snprintf(out, size, b"%llu", own.egress_bytes)
        if name_is(p, n, b"instantaneous_input_kbps"):
            return snprintf(out, size, b"%.2f", <double>own.net_in_per_sec / 1024)
        if name_is(p, n, b"instantaneous_output_kbps"):
            return snprintf(out, size, b"%.2f", <double>own.net_out_per_sec / 1024)
        if name_is(p, n, b"total_error_replies"):
            return snprintf(out, size, b"%llu", own.errors)
        if name_is(p, n, b"total_reads_processed"):
            return snprintf(out, size, b"%llu", own.reads)
        if name_is(p, n, b"acl_access_denied_auth"):
            return snprintf(out, size, b"%llu", own.auth_failures)
    elif s == S_CPU:
        # The proxy process's (every endpoint it serves); _main_thread: this endpoint's loop.
        if name_starts(p, n, b"used_cpu_") and name_ends(p, n, b"_children"):
            getrusage(RUSAGE_CHILDREN, &ru)
        elif name_starts(p, n, b"used_cpu_") and name_ends(p, n, b"_main_thread"):
            getrusage(RUSAGE_THREAD, &ru)
        elif name_starts(p, n, b"used_cpu_"):
            getrusage(RUSAGE_SELF, &ru)
        else:
            return -1
        if name_starts(p, n, b"used_cpu_sys"):
            return snprintf(out, size, b"%ld.%06ld", ru.ru_stime.tv_sec, ru.ru_stime.tv_usec)
        return snprintf(out, size, b"%ld.%06ld", ru.ru_utime.tv_sec, ru.ru_utime.tv_usec)
    return -1


cdef int info_parse(const char *body, const char *end, InfoText *t) noexcept nogil:
    """Index the lines of one shard's INFO text. -1 when out of memory."""
    cdef const char *line = body
    cdef const char *eol
    cdef const char *colon
    cdef int cap = 64, section = S_OTHER, n
    cdef InfoLine *grown
    cdef InfoLine *l
    t.n = 0
    t.cursor = 0
    t.lines = <InfoLine *>malloc(cap * sizeof(InfoLine))
    if t.lines == NULL:
        return -1
    while line < end:
        eol = <const char *>memchr(line, c'\n', end - line)
        if eol == NULL:
            eol = end
        n = <int>(eol - line)
        if n > 0 and line[n - 1] == c'\r':
            n -= 1
        if n > 0:
            if t.n == cap:
                cap *= 2
                grown = <InfoLine *>realloc(t.lines, cap * sizeof(InfoLine))
                if grown == NULL:
                    return -1
                t.lines = grown
            l = &t.lines[t.n]
            l.used = False
            l.name = line
            if line[0] == c'#':
                section = section_of(line, n)
                l.name_len = n
                l.value = NULL
                l.value_len = -1
                l.section = section
                t.n += 1
            else:
                colon = <const char *>memchr(line, c':', n)
                if colon != NULL:
                    l.name_len = <int>(colon - line)
                    l.value = colon + 1
                    l.value_len = n - l.name_len - 1
                    l.section = section
                    t.n += 1
        line = eol + 1
    return 0


cdef InfoLine *info_find(InfoText *t, int section, const char *name, int n) noexcept nogil:
    """The line of that field in t, searched from where the last one was found."""
    cdef int i, j
    cdef InfoLine *l
    for i in range(t.n):
        j = (t.cursor + i) % t.n
        l = &t.lines[j]
        if l.value_len >= 0 and l.section == section and l.name_len == n \
                and memcmp(l.name, name, n) == 0:
            t.cursor = j + 1
            return l
    return NULL


cdef inline bint value_number(const char *p, int n, double *out, bint *integral) noexcept nogil:
    cdef long long v
    cdef char tmp[64]
    cdef char *endp
    if n <= 0 or n >= 63:
        return False
    if parse_ll(p, n, &v) == 0:
        out[0] = <double>v
        integral[0] = True
        return True
    memcpy(tmp, p, n)
    tmp[n] = 0
    out[0] = strtod(tmp, &endp)
    integral[0] = False
    return endp == tmp + n


cdef void append_human(Buf *out, double v) noexcept nogil:
    """Redis's bytesToHuman."""
    cdef char text[64]
    cdef const char *units = b"KMGTPE"
    cdef int u = -1
    if v < 1024:
        snprintf(text, sizeof(text), b"%lluB", <unsigned long long>v)
    else:
        while v >= 1024 and u < 5:
            v /= 1024
            u += 1
        snprintf(text, sizeof(text), b"%.2f%c", v, units[u])
    buf_append_str(out, text)


cdef void append_number(Buf *out, double v, bint integral) noexcept nogil:
    cdef char text[64]
    if integral:
        snprintf(text, sizeof(text), b"%lld", <long long>v)
    else:
        snprintf(text, sizeof(text), b"%.2f", v)
    buf_append_str(out, text)


cdef bint subfield(const char *p, int n, const char *key, int klen, const char **v, int *vlen) noexcept nogil:
    """The value of `key=` in `k=v,k=v...`."""
    cdef const char *end = p + n
    cdef const char *q
    while p < end:
        q = <const char *>memchr(p, c',', end - p)
        if q == NULL:
            q = end
        if q - p > klen and p[klen] == c'=' and memcmp(p, key, klen) == 0:
            v[0] = p + klen + 1
            vlen[0] = <int>(q - p - klen - 1)
            return True
        p = q + 1
    return False


cdef double subfield_number(InfoLine *l, const char *key) noexcept nogil:
    cdef const char *v
    cdef int vlen
    cdef double d = 0
    cdef bint integral
    if l != NULL and subfield(l.value, l.value_len, key, <int>strlen(key), &v, &vlen):
        value_number(v, vlen, &d, &integral)
    return d


cdef void merge_subfields(Buf *out, int section, InfoLine **match, int n) noexcept nogil:
    """`k=v,...` of the first line found, each numeric k merged over the lines found."""
    cdef InfoLine *first = NULL
    cdef const char *p
    cdef const char *end
    cdef const char *q
    cdef const char *eq
    cdef const char *v
    cdef int i, klen, vlen
    cdef double d, acc, weight, total_weight
    cdef bint integral, all_integral, numeric, sep = False
    cdef char key[64]
    for i in range(n):
        if match[i] != NULL:
            first = match[i]
            break
    p = first.value
    end = p + first.value_len
    while p < end:
        q = <const char *>memchr(p, c',', end - p)
        if q == NULL:
            q = end
        eq = <const char *>memchr(p, c'=', q - p)
        if sep:
            buf_append(out, b",", 1)
        sep = True
        if eq == NULL or eq - p >= 63:
            buf_append(out, p, q - p)
            p = q + 1
            continue
        klen = <int>(eq - p)
        memcpy(key, p, klen)
        key[klen] = 0
        buf_append(out, p, klen + 1)
        if section == S_COMMANDSTATS and name_is(key, klen, b"usec_per_call"):
            d = 0
            acc = 0
            for i in range(n):
                d += subfield_number(match[i], b"usec")
                acc += subfield_number(match[i], b"calls")
            append_number(out, d / acc if acc > 0 else 0, False)
            p = q + 1
            continue
        acc = 0
        total_weight = 0
        all_integral = True
        numeric = True
        for i in range(n):
            if match[i] == NULL or not subfield(match[i].value, match[i].value_len, key, klen, &v, &vlen):
                continue
            if not value_number(v, vlen, &d, &integral):
                numeric = False
                break
            all_integral = all_integral and integral
            if section == S_LATENCYSTATS:
                acc = d if d > acc else acc             # percentiles: the slowest shard's
            elif section == S_KEYSPACE and name_is(key, klen, b"avg_ttl"):
                # Weighted by the keys it is the average of; a shard that has not estimated
                # it yet (0) does not count.
                weight = subfield_number(match[i], b"expires") if d > 0 else 0
                acc += d * weight
                total_weight += weight
            else:
                acc += d
        if not numeric:
            buf_append(out, eq + 1, q - eq - 1)
        elif section == S_KEYSPACE and name_is(key, klen, b"avg_ttl"):
            append_number(out, acc / total_weight if total_weight > 0 else 0, True)
        elif section == S_LATENCYSTATS:
            snprintf(key, sizeof(key), b"%.3f", acc)
            buf_append_str(out, key)
        else:
            append_number(out, acc, all_integral)
        p = q + 1


cdef void merge_field(Core *core, Buf *out, InfoText *texts, int ntexts, InfoLine **match,
                      int section, const char *name, int nlen, int start) noexcept nogil:
    """One `name:value` line, merged over texts[start:] (the earlier ones lack it)."""
    cdef char own[128]
    cdef int i, n, policy, best = -1
    cdef double d, acc = 0, best_v = 0
    cdef bint integral, all_integral = True, numeric = True
    cdef InfoLine *l
    for i in range(ntexts):
        match[i] = info_find(&texts[i], section, name, nlen) if i >= start else NULL
        if match[i] != NULL:
            match[i].used = True
    buf_append(out, name, nlen)
    buf_append(out, b":", 1)
    n = own_value(core, section, name, nlen, own, sizeof(own))
    if n >= 0 and section == S_STATS and name_is(name, nlen, b"total_error_replies"):
        # The shards also count the errors a script met and caught (redis.pcall), which the
        # endpoint never answered: the larger of the two, as one Redis counts both.
        for i in range(start, ntexts):
            if match[i] != NULL and value_number(match[i].value, match[i].value_len, &d, &integral):
                acc += d
        if acc > <double>core.info_own.errors:
            n = snprintf(own, sizeof(own), b"%.0f", acc)
    if n >= 0:
        buf_append(out, own, <size_t>n if <size_t>n < sizeof(own) else sizeof(own) - 1)
        buf_append(out, b"\r\n", 2)
        return
    policy = field_policy(section, name, nlen)
    if policy == P_SUBFIELDS:
        merge_subfields(out, section, match, ntexts)
        buf_append(out, b"\r\n", 2)
        return
    if policy == P_HUMAN:
        # The byte count it shows, merged as that field is.
        n = nlen - 6
        l = NULL
        for i in range(start, ntexts):
            l = info_find(&texts[i], section, name, n)
            if l != NULL:
                break
        if l != NULL and field_policy(section, name, n) != P_FIRST:
            for i in range(start, ntexts):
                l = info_find(&texts[i], section, name, n)
                if l != NULL and value_number(l.value, l.value_len, &d, &integral):
                    if field_policy(section, name, n) == P_MAX:
                        acc = d if d > acc else acc
                    else:
                        acc += d
            append_human(out, acc)
            buf_append(out, b"\r\n", 2)
            return
        policy = P_FIRST
    for i in range(start, ntexts):
        l = match[i]
        if l == NULL:
            continue
        if policy == P_WORST:
            if best < 0 or not name_is(l.value, l.value_len, b"ok"):
                if best < 0 or name_is(match[best].value, match[best].value_len, b"ok"):
                    best = i
            continue
        if policy == P_FIRST:
            if best < 0:
                best = i
            continue
        if not value_number(l.value, l.value_len, &d, &integral):
            numeric = False
            if best < 0:
                best = i
            continue
        all_integral = all_integral and integral
        if policy == P_SUM:
            acc += d
        elif best < 0 or (policy == P_MAX and d > best_v) or (policy == P_MIN and d < best_v):
            best = i
            best_v = d
    if policy == P_SUM and numeric and section == S_CLIENTS and name_is(name, nlen, b"blocked_clients"):
        # The endpoint's clients the shards hold blocked: no more than the proxy has waiting
        # (a shard may not have seen yet that a client left), none the shard does not hold yet.
        n = core.info_own.blocked_clients
        append_number(out, acc if acc < n else n, True)
    elif policy == P_SUM and numeric:
        append_number(out, acc, all_integral)
    elif best >= 0:
        buf_append(out, match[best].value, match[best].value_len)
    buf_append(out, b"\r\n", 2)


cdef void union_rest(Core *core, Buf *out, InfoText *texts, int ntexts, InfoLine **match,
                     int section) noexcept nogil:
    """The lines of a union section that the first text lacks, from the texts that have them."""
    cdef int i, j
    cdef InfoLine *l
    for i in range(1, ntexts):
        for j in range(texts[i].n):
            l = &texts[i].lines[j]
            if l.value_len >= 0 and l.section == section and not l.used:
                merge_field(core, out, texts, ntexts, match, section, l.name, l.name_len, i)


cdef void info_note_memory(Core *core, int shard, InfoText *t) noexcept nogil:
    """A shard's used_memory as its INFO showed it: CONFIG SET maxmemory splits the room above
    it (route.pxi: param_split)."""
    cdef InfoLine *l = info_find(t, S_MEMORY, b"used_memory", 11)
    cdef double d
    cdef bint integral
    if l != NULL and value_number(l.value, l.value_len, &d, &integral) and d >= 0:
        core.shards[shard].used_memory = <unsigned long long>d
        core.shards[shard].used_memory_us = core.now_us


cdef int info_merge(Core *core, Request *r, Buf *out) noexcept nogil:
    """Coalesce the INFO replies of every shard (all bulk or verbatim strings: errors were
    answered before) into the endpoint's INFO."""
    cdef int i, j, nt = r.nfrags, section = -1, rc = 0
    cdef InfoText *texts = <InfoText *>calloc(nt, sizeof(InfoText))
    cdef InfoLine **match = <InfoLine **>calloc(nt, sizeof(InfoLine *))
    cdef const char *p
    cdef const char *end
    cdef const char *body
    cdef const char *eol
    cdef bint verbatim = False
    cdef Buf merged
    cdef InfoLine *l
    memset(&merged, 0, sizeof(Buf))
    if buf_len(&r.command) == sizeof(InfoOwn):
        memcpy(&core.info_own, buf_head(&r.command), sizeof(InfoOwn))     # info_snapshot
    else:
        info_own_fill(core, &core.info_own)
    if texts == NULL or match == NULL:
        rc = -1
    for i in range(nt):
        if rc < 0:
            break
        p = buf_head(&r.frags[i].reply)
        end = p + buf_len(&r.frags[i].reply)
        if p[0] != c'$' and p[0] != c'=':
            rc = -2                 # not text: the first shard's reply as it is
            break
        eol = <const char *>memchr(p, c'\n', end - p)
        if eol == NULL or end - eol < 3:
            rc = -2
            break
        body = eol + 1
        if p[0] == c'=':
            body += 4               # verbatim string: its `txt:` format
            if i == 0:
                verbatim = True
        if info_parse(body, end - 2, &texts[i]) < 0:
            rc = -1
        elif nt == core.nactive:
            info_note_memory(core, core.active[i], &texts[i])
    if rc == 0:
        for j in range(texts[0].n):
            l = &texts[0].lines[j]
            if l.value_len < 0:
                if section >= 0:
                    if union_section(section):
                        union_rest(core, &merged, texts, nt, match, section)
                    buf_append(&merged, b"\r\n", 2)
                section = l.section
                buf_append(&merged, l.name, l.name_len)
                buf_append(&merged, b"\r\n", 2)
            elif not l.used:
                merge_field(core, &merged, texts, nt, match, l.section, l.name, l.name_len, 0)
        if section >= 0 and union_section(section):
            union_rest(core, &merged, texts, nt, match, section)
        if verbatim:
            buf_append_int(out, c'=', <long long>(buf_len(&merged) + 4))
            buf_append_str(out, b"txt:")
            buf_append(out, buf_head(&merged), buf_len(&merged))
            buf_append_str(out, b"\r\n")
        else:
            buf_append_bulk(out, buf_head(&merged), buf_len(&merged))
    elif rc == -2:
        rc = buf_append(out, buf_head(&r.frags[0].reply), buf_len(&r.frags[0].reply))
    if texts != NULL:
        for i in range(nt):
            free(texts[i].lines)
    free(texts)
    free(match)
    buf_free(&merged)
    return rc
