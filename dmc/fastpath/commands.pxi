# The command table: name -> arity, key specs and routing policy.
#
# It is compiled at start-up from the shards' own `COMMAND` reply (see dmc/commands.py, which
# turns that reply into plain tuples): key positions come from Redis's key specs, and the way a
# command is routed and its replies merged comes from Redis's request/response policy tips. The
# lookup is an open-addressing hash on the lower-cased name; container commands (OBJECT, CONFIG,
# XINFO, ...) are looked up again as `container|subcommand`.


cdef inline unsigned int name_hash(const char *s, size_t n) noexcept nogil:
    cdef unsigned int h = 2166136261u
    cdef size_t i
    for i in range(n):
        h = (h ^ <unsigned char>s[i]) * 16777619u
    return h


cdef inline char lower_char(char c) noexcept nogil:
    return c + 32 if c'A' <= c <= c'Z' else c


cdef inline int lower_name(const char *s, size_t n, char *out) noexcept nogil:
    """Lower-case s into out; -1 if longer than a command name can be."""
    cdef size_t i
    if n >= CMD_NAME_MAX:
        return -1
    for i in range(n):
        out[i] = lower_char(s[i])
    return <int>n


cdef CommandInfo *command_find(CommandInfo **entries, const char *name, size_t n) noexcept nogil:
    cdef char low[CMD_NAME_MAX]
    cdef int ln = lower_name(name, n, low)
    cdef unsigned int h, i
    cdef CommandInfo *e
    if ln < 0:
        return NULL
    h = name_hash(low, ln) & (CMD_TABLE_SIZE - 1)
    for i in range(CMD_TABLE_SIZE):
        e = entries[(h + i) & (CMD_TABLE_SIZE - 1)]
        if e == NULL:
            return NULL
        if e.name_len == ln and memcmp(e.name, low, ln) == 0:
            return e
    return NULL


cdef CommandInfo *command_lookup(CommandInfo **entries, ArgVec *av) noexcept nogil:
    """The entry for a request, descending into `container|sub` for container commands.
    NULL for an unknown command; the container itself for an unknown subcommand."""
    cdef CommandInfo *c = command_find(entries, av.argv[0], av.argl[0])
    cdef CommandInfo *sub
    cdef char full[CMD_NAME_MAX]
    cdef size_t n
    if c == NULL or not c.has_subcommands or av.argc < 2:
        return c
    n = c.name_len
    if n + 1 + av.argl[1] >= CMD_NAME_MAX:
        return c
    memcpy(full, c.name, n)
    full[n] = c'|'
    memcpy(full + n + 1, av.argv[1], av.argl[1])
    sub = command_find(entries, full, n + 1 + av.argl[1])
    return sub if sub != NULL else c


cdef ParamEntry *param_entry(ParamPolicy *p, const char *name, size_t n) noexcept nogil:
    """The entry of a listed name (any case), else NULL."""
    cdef char low[PARAM_NAME_MAX]
    cdef size_t i
    cdef unsigned int h, j
    cdef ParamEntry *e
    if n >= PARAM_NAME_MAX:
        return NULL
    for i in range(n):
        low[i] = lower_char(name[i])
    h = name_hash(low, n) & (PARAM_TABLE_SIZE - 1)
    for j in range(PARAM_TABLE_SIZE):
        e = &p.entries[(h + j) & (PARAM_TABLE_SIZE - 1)]
        if e.name_len == 0:
            return NULL
        if <size_t>e.name_len == n and memcmp(e.name, low, n) == 0:
            return e
    return NULL


cdef int param_verdict(ParamPolicy *p, const char *name, size_t n) noexcept nogil:
    """PARAM_ALLOWED, PARAM_MANAGED or PARAM_APPLIED for a listed name (any case), else 0."""
    cdef ParamEntry *e = param_entry(p, name, n)
    return e.verdict if e != NULL else 0


cdef int param_normalise(int kind, const char *v, size_t n, char *out) noexcept nogil:
    """v as the shards' CONFIG GET would show it, into out (PARAM_VALUE_MAX bytes): its length,
    or -1 when it is no value of that kind (or too long), so never equal to an applied one.
    PARAM_MEMORY: Redis's memtoull (b, k, kb, m, mb, g, gb; k is 1000, kb 1024)."""
    cdef size_t i, k = 0
    cdef unsigned long long num = 0, mul = 1
    cdef char u0, u1
    if kind == PARAM_MEMORY:
        i = 0
        while i < n and c'0' <= v[i] <= c'9':
            if num > 1844674407370955161ULL:
                return -1
            num = num * 10 + <unsigned long long>(v[i] - c'0')
            i += 1
        if i == 0 or n - i > 2:
            return -1
        u0 = lower_char(v[i]) if i < n else 0
        u1 = lower_char(v[i + 1]) if i + 1 < n else 0
        if u0 == 0 or (u0 == c'b' and u1 == 0):
            mul = 1
        elif u0 == c'k':
            mul = 1024 if u1 == c'b' else 1000
        elif u0 == c'm':
            mul = 1024 * 1024 if u1 == c'b' else 1000 * 1000
        elif u0 == c'g':
            mul = 1024 * 1024 * 1024 if u1 == c'b' else 1000 * 1000 * 1000
        else:
            return -1
        if u1 != 0 and u1 != c'b':
            return -1
        return snprintf(out, PARAM_VALUE_MAX, b"%llu", num * mul)
    for i in range(n):
        if v[i] == c' ' or v[i] == c'\t' or v[i] == c'\r' or v[i] == c'\n':
            if k > 0 and out[k - 1] != c' ':
                if k >= PARAM_VALUE_MAX:
                    return -1
                out[k] = c' '
                k += 1
            continue
        if k >= PARAM_VALUE_MAX:
            return -1
        out[k] = lower_char(v[i])
        k += 1
    if k > 0 and out[k - 1] == c' ':
        k -= 1
    return <int>k


cdef bint param_is_applied(ParamEntry *e, const char *v, size_t n) noexcept nogil:
    """Does value v ask for what the shards apply (a PARAM_APPLIED entry)?"""
    cdef char norm[PARAM_VALUE_MAX]
    cdef int k = param_normalise(e.kind, v, n, norm)
    return k == e.applied_len and memcmp(norm, e.applied, <size_t>k) == 0


cdef int param_refused(ParamPolicy *p, ArgVec *av, int *noops) noexcept nogil:
    """The argument position of the first parameter the policy refuses, or -1. *noops: how many
    parameters ask for the value the shards apply (PARAM_APPLIED), answered without them, plus
    1000 for each PARAM_SPLIT one (its value is rewritten for the shards). A
    request whose arguments do not come in whole groups is left to the shard, which answers
    Redis's own error (and applies nothing)."""
    cdef int i
    cdef ParamEntry *e
    noops[0] = 0
    if av.argc < p.first or (av.argc - p.first) % p.step != 0:
        return -1
    i = p.first
    while i < av.argc:
        e = param_entry(p, av.argv[i], av.argl[i])
        if e == NULL:
            if p.strict:
                return i
        elif e.verdict == PARAM_APPLIED and i + 1 < av.argc \
                and param_is_applied(e, av.argv[i + 1], av.argl[i + 1]):
            noops[0] += 1
        elif e.verdict == PARAM_SPLIT:
            noops[0] += 1000        # rewritten for the shards (route.pxi: params_rewrite)
        elif e.verdict != PARAM_ALLOWED:
            return i
        i += p.step
    return -1


cdef class CommandTable:
    """The compiled command table. Filled from Python (rare), read from C (every command).
    One Proxy at a time uses it: the loop serving it counts calls in its entries."""
    cdef CommandInfo *entries[CMD_TABLE_SIZE]
    cdef int count
    cdef bint serving

    def __dealloc__(self):
        cdef int i
        for i in range(CMD_TABLE_SIZE):
            if self.entries[i] != NULL:
                free(self.entries[i].refusal)
                if self.entries[i].params != NULL:
                    free(self.entries[i].params.refusal)
                    free(self.entries[i].params.entries)
                    free(self.entries[i].params)
                free(self.entries[i])

    def add(self, bytes name, int arity, int route, int merge, int local, bint has_subcommands,
            list specs, refusal=None, params=None, bint writes=False,
            bint unmonitored=False, bint tracks_reads=False, int cls=CLASS_OTHER,
            bint no_multi=False, bint caches_script=False):
        """Add one command. specs: tuples (bs_type, bs_index, keyword, fk_type, a, b, c).
        params: None, or (first, step, strict, refusal, {name: allowed}) for a command whose
        parameter names the proxy checks (refusal: the error text, `{param}` the name given).
        cls: the class the endpoint's counters count it in (CLASSES: read, write, other)."""
        cdef CommandInfo *e
        cdef KeySpec *ks
        cdef unsigned int h, i
        cdef bytes kw
        cdef bytes low = name.lower()
        cdef ParamPolicy *pp = NULL
        if len(low) >= CMD_NAME_MAX:
            raise ValueError("command name too long: %r" % name)
        if self.count >= CMD_TABLE_SIZE // 2:
            raise ValueError("command table full")
        if command_find(self.entries, low, len(low)) != NULL:
            raise ValueError("duplicate command: %r" % name)
        if params is not None:
            first, step, strict, text, names = params
            pp = param_policy_new(first, step, strict, text, names)
        e = <CommandInfo *>calloc(1, sizeof(CommandInfo))
        if e == NULL:
            raise MemoryError()
        e.params = pp
        memcpy(e.name, <char *>low, len(low))
        e.name_len = len(low)
        e.arity = arity
        e.route = route
        e.merge = merge
        e.local = local
        e.has_subcommands = has_subcommands
        e.writes = writes
        e.unmonitored = unmonitored
        e.no_multi = no_multi
        e.tracks_reads = tracks_reads
        e.caches_script = caches_script
        if not 0 <= cls < NCLASSES:
            raise ValueError("not a command class: %d" % cls)
        e.cls = cls
        e.timed = route != ROUTE_BLOCKING and route != ROUTE_WAIT
        for spec in specs[:MAX_KEY_SPECS]:
            ks = &e.specs[e.nspecs]
            ks.bs_type, ks.bs_index, kw, ks.fk_type, ks.fk_a, ks.fk_b, ks.fk_c = spec
            kw = (kw or b"")[:15]
            memcpy(ks.bs_keyword, <char *>kw, len(kw))
            ks.bs_keyword_len = len(kw)
            e.nspecs += 1
        if refusal is not None:
            line = b"-" + refusal.encode() + b"\r\n"
            e.refusal = <char *>malloc(len(line) + 1)
            memcpy(e.refusal, <char *>line, len(line) + 1)
        h = name_hash(e.name, e.name_len) & (CMD_TABLE_SIZE - 1)
        for i in range(CMD_TABLE_SIZE):
            if self.entries[(h + i) & (CMD_TABLE_SIZE - 1)] == NULL:
                self.entries[(h + i) & (CMD_TABLE_SIZE - 1)] = e
                break
        self.count += 1

    def __len__(self):
        return self.count

    def param_refused(self, list argv):
        """The position of the first parameter the proxy refuses in a request, or None (for
        tests and tools)."""
        cdef ArgVec av
        cdef CommandInfo *c
        cdef list keep = [bytes(a) for a in argv]
        cdef int i, noops
        argvec_init(&av)
        try:
            if argvec_grow(&av, len(keep)) < 0:
                raise MemoryError()
            for i, a in enumerate(keep):
                av.argv[i] = <const char *><char *>a
                av.argl[i] = len(a)
            av.argc = len(keep)
            c = command_lookup(self.entries, &av)
            if c == NULL or c.params == NULL:
                return None
            i = param_refused(c.params, &av, &noops)
            return None if i < 0 else i
        finally:
            argvec_free(&av)

    def counters(self):
        """{name: (calls, errors, usec)} for every command called at least once."""
        cdef int i
        cdef CommandInfo *e
        out = {}
        for i in range(CMD_TABLE_SIZE):
            e = self.entries[i]
            if e != NULL and e.calls:
                out[e.name[:e.name_len].decode()] = (e.calls, e.errors, e.usec)
        return out

    def keys_of(self, list argv):
        """Key positions of a command as the proxy computes them (for tests and tools)."""
        cdef ArgVec av
        cdef KeyList kl
        cdef CommandInfo *c
        cdef list keep = [bytes(a) for a in argv]
        argvec_init(&av)
        keylist_init(&kl)
        try:
            if argvec_grow(&av, len(keep)) < 0:
                raise MemoryError()
            for i, a in enumerate(keep):
                av.argv[i] = <const char *><char *>a
                av.argl[i] = len(a)
            av.argc = len(keep)
            c = command_lookup(self.entries, &av)
            if c == NULL:
                return None
            if command_keys(c, &av, &kl) < 0:
                raise MemoryError()
            return [kl.pos[i] for i in range(kl.n)]
        finally:
            argvec_free(&av)
            keylist_free(&kl)


cdef ParamPolicy *param_policy_new(int first, int step, bint strict, str refusal, dict names) except NULL:
    cdef ParamPolicy *p
    cdef ParamEntry *e
    cdef bytes low, line
    cdef unsigned int h, j
    if first < 1 or step < 1:
        raise ValueError("a parameter policy needs first >= 1 and step >= 1")
    if len(names) > PARAM_TABLE_SIZE // 2:
        raise ValueError("too many parameters: %d" % len(names))
    line = ("-" + refusal.replace("%", "%%").replace("{param}", "%.*s") + "\r\n").encode()
    p = <ParamPolicy *>calloc(1, sizeof(ParamPolicy))
    if p == NULL:
        raise MemoryError()
    p.first, p.step, p.strict = first, step, strict
    p.entries = <ParamEntry *>calloc(PARAM_TABLE_SIZE, sizeof(ParamEntry))
    p.refusal = <char *>malloc(len(line) + 1)
    if p.entries == NULL or p.refusal == NULL:
        free(p.entries)
        free(p.refusal)
        free(p)
        raise MemoryError()
    memcpy(p.refusal, <char *>line, len(line) + 1)
    for name, allowed in names.items():
        # allowed: True, False, (kind, applied value) for a PARAM_APPLIED one, or (kind, a
        # shard's value, "split") for a PARAM_SPLIT one
        low = (name.encode() if isinstance(name, str) else bytes(name)).lower()
        if not 0 < len(low) < PARAM_NAME_MAX:
            continue            # never matched: such a name is treated as unknown
        h = name_hash(low, len(low)) & (PARAM_TABLE_SIZE - 1)
        for j in range(PARAM_TABLE_SIZE):
            e = &p.entries[(h + j) & (PARAM_TABLE_SIZE - 1)]
            if e.name_len == 0 or (<size_t>e.name_len == <size_t>len(low) and memcmp(e.name, <char *>low, len(low)) == 0):
                break
        memcpy(e.name, <char *>low, len(low))
        e.name_len = len(low)
        if isinstance(allowed, tuple):
            kind, value = allowed[:2]
            value = value.encode() if isinstance(value, str) else bytes(value)
            if len(value) < PARAM_VALUE_MAX:
                e.verdict = PARAM_SPLIT if allowed[2:] == ("split",) else PARAM_APPLIED
                e.kind = kind
                memcpy(e.applied, <char *>value, len(value))
                e.applied_len = len(value)
                continue
            allowed = False
        e.verdict = PARAM_ALLOWED if allowed else PARAM_MANAGED
    return p


# ---- key extraction ---------------------------------------------------------------------------


cdef inline void keylist_init(KeyList *kl) noexcept nogil:
    kl.n = 0
    kl.cap = KEYLIST_STATIC
    kl.pos = kl.pos_static


cdef inline void keylist_free(KeyList *kl) noexcept nogil:
    if kl.pos != kl.pos_static:
        free(kl.pos)
    keylist_init(kl)


cdef inline int keylist_add(KeyList *kl, int p) noexcept nogil:
    cdef int *np
    if kl.n == kl.cap:
        np = <int *>malloc(2 * kl.cap * sizeof(int))
        if np == NULL:
            return -1
        memcpy(np, kl.pos, kl.n * sizeof(int))
        if kl.pos != kl.pos_static:
            free(kl.pos)
        kl.pos = np
        kl.cap *= 2
    kl.pos[kl.n] = p
    kl.n += 1
    return 0


cdef inline bint arg_equals_ci(const char *a, size_t an, const char *b, size_t bn) noexcept nogil:
    cdef size_t i
    if an != bn:
        return False
    for i in range(an):
        if lower_char(a[i]) != lower_char(b[i]):
            return False
    return True


cdef bint arg_is(ArgVec *av, int i, const char *word) noexcept nogil:
    return i < av.argc and arg_equals_ci(av.argv[i], av.argl[i], word, strlen(word))


cdef int command_keys(CommandInfo *c, ArgVec *av, KeyList *kl) noexcept nogil:
    """Append to kl the argument positions of the keys of a request, following the key specs
    as redis-server does (getKeysUsingKeySpecs). -1 when out of memory."""
    cdef int s, i, first, last, step, start, stop, argc = av.argc
    cdef long long numkeys
    cdef KeySpec *ks
    kl.n = 0
    for s in range(c.nspecs):
        ks = &c.specs[s]
        first = 0
        if ks.bs_type == BS_INDEX:
            first = ks.bs_index
        elif ks.bs_type == BS_KEYWORD:
            start = ks.bs_index if ks.bs_index > 0 else argc + ks.bs_index
            stop = argc - 1 if ks.bs_index > 0 else 0
            i = start
            while i != stop:
                if i >= argc or i < 1:
                    break
                if arg_equals_ci(av.argv[i], av.argl[i], ks.bs_keyword, ks.bs_keyword_len):
                    first = i + 1
                    break
                i = i + 1 if start <= stop else i - 1
            if first == 0:
                continue
        else:
            continue
        if ks.fk_type == FK_RANGE:
            if ks.fk_a >= 0:
                last = first + ks.fk_a
            elif ks.fk_c == 0:
                last = argc + ks.fk_a
            else:
                last = first + ((argc - first) // ks.fk_c + ks.fk_a)
            step = ks.fk_b
        elif ks.fk_type == FK_KEYNUM:
            if first + ks.fk_a >= argc:
                continue
            if parse_ll(av.argv[first + ks.fk_a], av.argl[first + ks.fk_a], &numkeys) < 0 \
                    or numkeys < 0 or numkeys > argc:
                continue
            first += ks.fk_b
            last = first + <int>numkeys - 1
            step = ks.fk_c
        else:
            continue
        if step <= 0:
            step = 1
        i = first
        while i <= last:
            if i >= argc or i < first:
                break       # too few arguments: the shard reports the arity error
            if keylist_add(kl, i) < 0:
                return -1
            i += step
    return 0
