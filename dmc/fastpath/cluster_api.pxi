# The OSS Cluster API (a database's `oss_cluster`, dmcproxy --oss-cluster): the endpoint looks
# like a node of a Redis Cluster whose nodes are the proxies of the nodes that hold the
# database's master shards (Redis Enterprise's `all-master-shards` policy), so that a cluster
# client (redis-py's RedisCluster, redis-cli -c, redis-benchmark --cluster) sends each key to
# the proxy of the node where its master shard lives.
#
# - CLUSTER SLOTS, SHARDS, NODES, INFO and MYID are answered from replies made once per
#   topology by dmc/cluster_api.py (Proxy.set_cluster_api, between two turns of the loop, in the
#   same call as the map they describe), one per protocol;
# - CLUSTER KEYSLOT is computed here; COUNTKEYSINSLOT and GETKEYSINSLOT ask the shard that owns
#   the slot, when it is this node's (a node of a Redis Cluster counts only its own keys; for a
#   slot of another node the answer is 0 / empty, as there). Shards are not cluster-mode
#   redis-servers, so they have no index of keys by slot: a script (EVAL_RO, on the proxy's own
#   connection) SCANs the shard and hashes every key, O(keys of the shard) instead of Redis's
#   O(1) / O(count), one atomic script run;
# - a command whose keys' master shard is served by another node's proxy gets
#   `-MOVED <slot> <ip:port>` (the slot of its first key); keys on several nodes get -CROSSSLOT
#   (they cannot be in one slot); keys of this node's shards are served as without the API,
#   several shards' included (a Redis Cluster would say CROSSSLOT: this is more lenient, and a
#   cluster client splits such commands by slot before sending them anyway).
#   Pub/Sub (one shard for the whole database), keyless commands and transactions queued in
#   MULTI are served by whichever proxy gets them, as without the API.
#
# While the API is off (core.cluster NULL) CLUSTER ... goes to a shard as any keyless command,
# which answers that cluster support is disabled, and routing costs one pointer test.


cdef const char *COUNT_KEYS_IN_SLOT_SCRIPT = (
    b"local slot, limit = tonumber(ARGV[1]), tonumber(ARGV[2]) "
    b"local T = {} "
    b"for i = 0, 255 do local c = bit.lshift(i, 8) "
    b"for _ = 1, 8 do if bit.band(c, 0x8000) ~= 0 then c = bit.bxor(bit.lshift(c, 1), 0x1021) "
    b"else c = bit.lshift(c, 1) end c = bit.band(c, 0xffff) end T[i] = c end "
    b"local function crc(s, a, b) local c = 0 for i = a, b do "
    b"c = bit.band(bit.bxor(bit.lshift(c, 8), T[bit.band(bit.bxor(bit.rshift(c, 8), s:byte(i)), 0xff)]), 0xffff) "
    b"end return c end "
    b"local function slot_of(k) local a = k:find('{', 1, true) if a then "
    b"local b = k:find('}', a + 1, true) if b and b > a + 1 then return crc(k, a + 1, b - 1) % 16384 end end "
    b"return crc(k, 1, #k) % 16384 end "
    b"local cursor, n, keys = '0', 0, {} "
    b"repeat local r = redis.call('SCAN', cursor, 'COUNT', 1000) cursor = r[1] "
    b"for _, k in ipairs(r[2]) do if slot_of(k) == slot then n = n + 1 "
    b"if limit >= 0 and n <= limit then keys[n] = k end end end "
    b"until cursor == '0' or (limit >= 0 and n >= limit) "
    b"if limit < 0 then return n end return keys")


cdef void cluster_api_free(ClusterApi *api) noexcept nogil:
    cdef int p, i
    if api == NULL:
        return
    for p in range(2):
        for i in range(CLUSTER_REPLIES):
            buf_free(&api.replies[p][i])
    free(api)


cdef bint cluster_redirected(Core *core, Request *r, ArgVec *av, KeyList *kl) noexcept nogil:
    """True when r is answered -MOVED (its keys' shard is another node's) or -CROSSSLOT (keys on
    several nodes); core.key_shard holds its keys' shards."""
    cdef ClusterApi *api = core.cluster
    cdef int i, k, node = api.node_of[core.key_shard[0]]
    cdef char line[128]
    for i in range(1, kl.n):
        if api.node_of[core.key_shard[i]] != node:
            req_write_str(core, r, b"-CROSSSLOT Keys in request don't hash to the same slot\r\n")
            return True
    if node < 0:
        return False
    k = kl.pos[0]
    snprintf(line, sizeof(line), b"-MOVED %d %s\r\n", <int>key_slot(av.argv[k], av.argl[k]),
             api.node_addr[node])
    req_write_str(core, r, line)
    return True


cdef int cluster_slot_arg(Core *core, Request *r, ArgVec *av, int i) noexcept nogil:
    """The slot argument at i, or -1 with r answered as Redis answers a bad one."""
    cdef long long slot
    if parse_ll(av.argv[i], av.argl[i], &slot) < 0:
        req_write_str(core, r, b"-ERR value is not an integer or out of range\r\n")
        return -1
    if slot < 0 or slot >= SLOT_COUNT:
        req_write_str(core, r, b"-ERR Invalid slot\r\n")
        return -1
    return <int>slot


cdef void cluster_keys_in_slot(Core *core, Client *c, Request *r, int slot, long long limit) noexcept nogil:
    """COUNTKEYSINSLOT (limit -1) and GETKEYSINSLOT: asked of the slot's shard if it is this
    node's, on the proxy's own connection (whatever the client's ACL user)."""
    cdef Buf *sub = &core.subcommand
    cdef char digits[24]
    cdef int shard = core.slot_map[slot]
    if core.cluster.node_of[shard] >= 0:
        req_write_str(core, r, b":0\r\n" if limit < 0 else b"*0\r\n")
        return
    buf_clear(sub)
    buf_append_str(sub, b"*5\r\n$7\r\nEVAL_RO\r\n")
    buf_append_bulk(sub, COUNT_KEYS_IN_SLOT_SCRIPT, strlen(COUNT_KEYS_IN_SLOT_SCRIPT))
    buf_append_str(sub, b"$1\r\n0\r\n")
    snprintf(digits, sizeof(digits), b"%d", slot)
    buf_append_bulk(sub, digits, strlen(digits))
    snprintf(digits, sizeof(digits), b"%lld", limit)
    if buf_append_bulk(sub, digits, strlen(digits)) < 0:
        req_write_str(core, r, b"-ERR out of memory\r\n")
        return
    r.pending = 1
    frag_send_on(core, shard_backend(core, shard, c.proto), &r.frag0, buf_head(sub), buf_len(sub))


cdef void route_local_cluster(Core *core, Client *c, Request *r, ArgVec *av) noexcept nogil:
    cdef ClusterApi *api = core.cluster
    cdef Buf *reply
    cdef int which = -1, slot, k
    cdef long long count, wanted_slot
    cdef char line[32]
    if api == NULL:
        # No cluster API: the shard answers, as it does every keyless command.
        r.pending = 1
        frag_send(core, default_shard(core), &r.frag0, av.wire, av.wire_len)
        return
    if av.argc == 2:
        if arg_is(av, 1, b"slots"):
            which = CLUSTER_REPLY_SLOTS
        elif arg_is(av, 1, b"shards"):
            which = CLUSTER_REPLY_SHARDS
        elif arg_is(av, 1, b"nodes"):
            which = CLUSTER_REPLY_NODES
        elif arg_is(av, 1, b"info"):
            which = CLUSTER_REPLY_INFO
        elif arg_is(av, 1, b"myid"):
            which = CLUSTER_REPLY_MYID
        if which >= 0:
            reply = &api.replies[1 if c.proto == 3 else 0][which]
            req_write(core, r, buf_head(reply), buf_len(reply))
            return
    if av.argc == 3 and arg_is(av, 1, b"keyslot"):
        k = snprintf(line, sizeof(line), b":%d\r\n", <int>key_slot(av.argv[2], av.argl[2]))
        req_write(core, r, line, k)
        return
    if av.argc == 3 and arg_is(av, 1, b"countkeysinslot"):
        slot = cluster_slot_arg(core, r, av, 2)
        if slot >= 0:
            cluster_keys_in_slot(core, c, r, slot, -1)
        return
    if av.argc == 4 and arg_is(av, 1, b"getkeysinslot"):
        # Redis's order: both integers, then their ranges.
        if parse_ll(av.argv[2], av.argl[2], &wanted_slot) < 0 or \
                parse_ll(av.argv[3], av.argl[3], &count) < 0:
            req_write_str(core, r, b"-ERR value is not an integer or out of range\r\n")
        elif wanted_slot < 0 or wanted_slot >= SLOT_COUNT or count < 0:
            req_write_str(core, r, b"-ERR Invalid slot or number of keys\r\n")
        else:
            cluster_keys_in_slot(core, c, r, <int>wanted_slot, count)
        return
    if av.argc >= 2 and (arg_is(av, 1, b"slots") or arg_is(av, 1, b"shards") or
                         arg_is(av, 1, b"nodes") or arg_is(av, 1, b"info") or
                         arg_is(av, 1, b"myid") or arg_is(av, 1, b"keyslot") or
                         arg_is(av, 1, b"countkeysinslot") or arg_is(av, 1, b"getkeysinslot")):
        req_write_error(core, r, b"-ERR wrong number of arguments for '%s' command\r\n", r.cmd.name)
        return
    if av.argc >= 2:
        req_write_str(core, r, b"-ERR this CLUSTER subcommand is not available through the "
                               b"database endpoint: the cluster manages its shards\r\n")
        return
    req_write_str(core, r, b"-ERR wrong number of arguments for 'cluster' command\r\n")
