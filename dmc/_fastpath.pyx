# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The compiled data path of dmcproxy.

It owns the bytes: RESP parsing to positions, hash slots, the command table compiled from the
shards' `COMMAND` reply, request routing, reply merging and the epoll loop that moves it all.
Python configures it (listening socket, shard map, command table) and reads its counters; per
command, no Python code runs. One extension module: its parts are dmc/fastpath/<part>.pxi (the
code, included below) and <part>.pxd (constants, structs and functions, included by
_fastpath.pxd), so that calls between parts are plain C calls. In the order a request meets them:

    loop          one turn of the epoll loop (loop_once); pause, resume, close
    client        accepted, read (client_recv), cut into requests (req_parse)
      tls           client TLS (OpenSSL): the handshake in the loop, SSL_read / SSL_write;
                    and shard TLS (data_internode_encryption): the backends' client side
      input_limit   client-query-buffer-limit, and the process's input budget
    resp          the parser (parse_request; reply_frame for replies)
    commands      the command table: lookup, key positions, routing policy, command class
    counters      the endpoint's counters (requests, latency, bytes ...), read by stats()
    slot          CRC16 hash slots
    route         req_route: to the shard(s) of the keys; split, per key, every shard; GETKEYS; SCAN
      local         what the proxy answers itself; local_client: CLIENT ...; monitor: MONITOR
      acl           ACL users: AUTH user pass checked on a shard, each user's own shard
                    connections (its rights enforced by Redis), ACL ... to every shard
      transaction   MULTI ... EXEC, WATCH
      sort          SORT's BY / GET patterns: allowed only within the sorted key's slot
      blocking      BLPOP & co. on a connection of the client's own; CLIENT UNBLOCK
      wait          WAIT on every shard the client wrote to
      pubsub        subscribers, and the keyspace-notification relay
      sequential    multi-key commands over several shards, as single-shard steps
                    (multi_slot_commands = sequential; else CROSSSLOT)
        sort_sequential   SORT BY / GET patterns over keys of several shards (sequential)
        blocking_sequential   BLPOP ... BZMPOP, BLMOVE, XREAD over several shards
                          (sequential): try each key in order, then wait on every shard at once
      tracking      CLIENT TRACKING: the proxy's key -> clients table, the shards' tracked connections
      cluster_api   the OSS Cluster API (oss_cluster): CLUSTER SLOTS ... answered, -MOVED to
                    the proxy of the node whose master shard holds the keys
    request       a request and its fragments (req_get, req_fragment); a fragment answered
                  (frag_answered); the answer written in request order (req_write)
    backend       shard connections: sent (frag_send), read (backend_recv, one handler per role)
      fence         a map change fails what is in flight on shards that lost slots (-TRYAGAIN);
                    the fence of a node cut off from the majority (-READONLY, -MASTERDOWN)
      hold          requests for a shard that is down wait for a new map or the shard (hold_ms)
      busy          a shard running a script: control connections (SCRIPT KILL ...), the busy probe
    coalesce      fragments' replies merged (req_coalesce); coalesce_sets, coalesce_pfcount, info
    client        written to the socket (client_send)
    buffer        the byte buffers all of them use
    workers       worker threads of one endpoint (--threads N): what stays per endpoint (client
                  ids, CLIENT LIST/KILL, INFO, MONITOR, the relay, ACL DELUSER, TRACKING
                  REDIRECT, -BUSY, sequential slot locks); WorkerGroup stops them all at once

Under all of them: system.pxd (libc, sockets, epoll) and core.pxd (the Core struct a Proxy
runs on: its clients, backends, request free list, counters).

There is one mutable state at module level, the process's input budget and the input every
client holds (input_limit, two atomic counters shared by every Proxy on purpose); otherwise
everything a Proxy changes is in its own Core (its
PRNG included) and its own CommandTable (CRC16_TABLE and the reply constants are read-only once
the module is loaded), so several Proxies can run their loops in threads of one process at once,
one thread each.
"""

import os

include "fastpath/buffer.pxi"
include "fastpath/resp.pxi"
include "fastpath/slot.pxi"
include "fastpath/commands.pxi"
include "fastpath/counters.pxi"
include "fastpath/loop.pxi"
include "fastpath/client.pxi"
include "fastpath/tls.pxi"
include "fastpath/input_limit.pxi"
include "fastpath/route.pxi"
include "fastpath/local.pxi"
include "fastpath/local_client.pxi"
include "fastpath/monitor.pxi"
include "fastpath/transaction.pxi"
include "fastpath/sort.pxi"
include "fastpath/blocking.pxi"
include "fastpath/wait.pxi"
include "fastpath/pubsub.pxi"
include "fastpath/acl.pxi"
include "fastpath/tracking.pxi"
include "fastpath/request.pxi"
include "fastpath/backend.pxi"
include "fastpath/fence.pxi"
include "fastpath/hold.pxi"
include "fastpath/busy.pxi"
include "fastpath/coalesce.pxi"
include "fastpath/info.pxi"
include "fastpath/coalesce_sets.pxi"
include "fastpath/coalesce_pfcount.pxi"
include "fastpath/sequential.pxi"
include "fastpath/sort_sequential.pxi"
include "fastpath/blocking_sequential.pxi"
include "fastpath/cluster_api.pxi"
include "fastpath/workers.pxi"
include "fastpath/scripts.pxi"

# Constants shared with dmc/commands.py, which compiles the COMMAND reply into table entries.
ROUTES = {"keyed": ROUTE_KEYED, "split": ROUTE_SPLIT, "all_shards": ROUTE_ALL_SHARDS,
          "local": ROUTE_LOCAL, "refused": ROUTE_REFUSED, "getkeys": ROUTE_GETKEYS,
          "scan": ROUTE_SCAN, "blocking": ROUTE_BLOCKING, "pubsub": ROUTE_PUBSUB,
          "subscribe": ROUTE_SUBSCRIBE, "wait": ROUTE_WAIT, "control": ROUTE_CONTROL,
          "sort": ROUTE_SORT}
MERGES = {"none": MERGE_NONE, "keyed_array": MERGE_KEYED_ARRAY,
          "all_succeeded": MERGE_ALL_SUCCEEDED, "one_succeeded": MERGE_ONE_SUCCEEDED,
          "agg_sum": MERGE_AGG_SUM, "agg_min": MERGE_AGG_MIN, "agg_max": MERGE_AGG_MAX,
          "agg_logical_and": MERGE_AGG_AND, "agg_logical_or": MERGE_AGG_OR, "concat": MERGE_CONCAT,
          "random": MERGE_RANDOM, "info": MERGE_INFO, "sunion": MERGE_SUNION,
          "sinter": MERGE_SINTER, "sdiff": MERGE_SDIFF, "sintercard": MERGE_SINTERCARD,
          "zunion": MERGE_ZUNION, "zinter": MERGE_ZINTER, "zdiff": MERGE_ZDIFF,
          "zintercard": MERGE_ZINTERCARD, "pfcount": MERGE_PFCOUNT,
          "function_stats": MERGE_FUNCTION_STATS, "first": MERGE_FIRST}
LOCALS = {"ping": LOCAL_PING, "quit": LOCAL_QUIT, "select": LOCAL_SELECT, "echo": LOCAL_ECHO,
          "hello": LOCAL_HELLO, "multi": LOCAL_MULTI, "exec": LOCAL_EXEC,
          "discard": LOCAL_DISCARD, "watch": LOCAL_WATCH, "unwatch": LOCAL_UNWATCH,
          "client": LOCAL_CLIENT, "auth": LOCAL_AUTH, "reset": LOCAL_RESET,
          "monitor": LOCAL_MONITOR, "acl": LOCAL_ACL,
          "cluster": LOCAL_CLUSTER}
COMMAND_CLASSES = {"read": CLASS_READ, "write": CLASS_WRITE, "other": CLASS_OTHER}
PARAM_KINDS = {"words": PARAM_WORDS, "memory": PARAM_MEMORY}
KEYSPEC_BEGIN = {"index": BS_INDEX, "keyword": BS_KEYWORD}
KEYSPEC_FIND = {"range": FK_RANGE, "keynum": FK_KEYNUM}
SLOTS = SLOT_COUNT
MULTI_SLOT_POLICIES = {"refuse": MULTI_SLOT_REFUSE, "sequential": MULTI_SLOT_SEQUENTIAL}


def slot_of(key):
    """The hash slot of a key (bytes or str), as Redis Cluster computes it."""
    cdef bytes k = key.encode() if isinstance(key, str) else bytes(key)
    return key_slot(k, len(k))


def set_input_budget(long long budget):
    """The process's input budget (bytes of unparsed input of every client of every Proxy of
    the process; 0: none): past it, the clients with the largest input are disconnected."""
    dmc_input_set_budget(<size_t>max(0, budget))


def input_bytes():
    """Bytes of unparsed client input the process holds now (every Proxy)."""
    return dmc_input_total()


class ProtocolError(Exception):
    """A request stream that redis-server would refuse; str() is its error line."""


cdef class RequestParser:
    """Incremental request parser, fed arbitrary chunks: the proxy's own parser, for tests and
    tools. feed() returns the complete commands as lists of bytes; a protocol error raises
    ProtocolError with Redis's text, after which the parser refuses further input."""
    cdef ArgVec av
    cdef Buf buf
    cdef size_t need
    cdef object error

    def __cinit__(self):
        argvec_init(&self.av)

    def __dealloc__(self):
        argvec_free(&self.av)
        buf_free(&self.buf)

    def feed(self, data):
        cdef const unsigned char[:] view = data
        cdef size_t consumed, need
        cdef int rc, i
        out = []
        if self.error is not None:
            raise self.error
        if view.shape[0]:
            buf_append(&self.buf, <const char *>&view[0], view.shape[0])
        while buf_len(&self.buf) > 0 and buf_len(&self.buf) >= self.need:
            rc = parse_request(buf_head(&self.buf), buf_len(&self.buf), &self.av, &consumed, &need)
            if rc == PARSE_INCOMPLETE:
                self.need = need
                break
            self.need = 0
            if rc < 0:
                if rc == PARSE_ERR_EXPECTED_DOLLAR:
                    text = "ERR Protocol error: expected '$', got '%s'" % chr(<unsigned char>self.av.bad_byte)
                else:
                    text = parse_error_text(rc)[1:].decode().rstrip()
                self.error = ProtocolError(text)
                raise self.error
            if self.av.argc:
                out.append([self.av.argv[i][:self.av.argl[i]] for i in range(self.av.argc)])
            buf_consume(&self.buf, consumed)
        return out

    def pending(self):
        """Bytes buffered but not yet part of a complete request."""
        return buf_len(&self.buf)


cdef class ReplyParser:
    """Incremental reply frame splitter: feed() returns complete RESP2/RESP3 values as bytes
    (with their attributes), the proxy's own frame boundaries. Pushes are returned as well;
    is_push() of a frame tells them apart."""
    cdef Buf buf
    cdef size_t need

    def __dealloc__(self):
        buf_free(&self.buf)

    def feed(self, data):
        cdef const unsigned char[:] view = data
        cdef ssize_t n
        cdef size_t need
        cdef int push
        out = []
        if view.shape[0]:
            buf_append(&self.buf, <const char *>&view[0], view.shape[0])
        while buf_len(&self.buf) > 0 and buf_len(&self.buf) >= self.need:
            n = reply_frame(buf_head(&self.buf), buf_len(&self.buf), &need, &push)
            if n == 0:
                self.need = need
                break
            self.need = 0
            if n < 0:
                raise ValueError("not RESP: %r" % buf_head(&self.buf)[:min(buf_len(&self.buf), 40)])
            out.append(buf_head(&self.buf)[:n])
            buf_consume(&self.buf, n)
        return out

    @staticmethod
    def is_push(bytes frame):
        cdef size_t need
        cdef int push
        n = reply_frame(frame, len(frame), &need, &push)
        return n > 0 and push != 0


cdef class Proxy:
    """One dmcproxy endpoint: a listening socket, a shard map and the epoll loop serving it.

    Configure it with a command table and a shard map, then call run() (or run_once() or
    run_until_wakeup() from a loop of your own). A turn of the loop runs without the GIL, so
    every other method is called between turns, by the thread that runs the loop (a signal
    handler of the main thread in dmcproxy, Endpoint.call() in dmc.endpoint); wakeup() alone is
    for any thread, to end a turn that waits in epoll.

    apply_shard_map(): client connections stay open, requests already sent finish on the
    connections they were sent on, and new requests follow the new map; but requests in flight
    to a shard that loses slots (or leaves the map) are answered -TRYAGAIN and its connections
    closed, never read (a demoted master's +OK would be a write it loses; see fence.pxi). For a
    live migration, pause() first: requests are held (read, not sent) until resume(), when they
    follow the map current then; inflight() says when the ones sent before the pause are all
    answered. fence(True): writes are answered -READONLY, reads -MASTERDOWN, until
    fence(False); with fence_hold_ms they first wait up to that long for the fence to be down
    (fence.pxi). hold_ms: a request for a shard that is down waits up to that long for a new
    map (or the shard) instead of being answered "unavailable" (hold.pxi).
    """
    cdef Core core
    cdef CommandTable table
    cdef bint stopping
    cdef dict shard_index          # (host, port) -> index in core.shards

    def __cinit__(self):
        memset(&self.core, 0, sizeof(Core))
        self.core.epfd = -1
        self.core.listener.fd = -1
        self.core.wake.fd = -1

    def __init__(self, int listen_fd, CommandTable table, int max_clients=10000,
                 int backend_timeout_ms=5000, int conns_per_shard=1, str server_version="7.0.0",
                 long long client_output_limit=256 * 1024 * 1024, password=None,
                 int idle_timeout_s=0, long long tracking_max_keys=0,
                 long long client_query_limit=1024 * 1024 * 1024,
                 str multi_slot_commands="refuse", int hold_ms=0, int fence_hold_ms=0):
        if table.serving:
            # Its per-command counters are written by the loop that serves it, without a lock.
            raise ValueError("this command table already serves another Proxy: build one per Proxy")
        self.core.epfd = epoll_create1(EPOLL_CLOEXEC)
        if self.core.epfd < 0:
            raise OSError(errno, "epoll_create1")
        table.serving = True
        self.table = table
        self.core.commands = table.entries
        self.core.max_clients = max_clients
        self.core.backend_timeout_us = <long long>backend_timeout_ms * 1000
        self.core.conns_per_shard = max(1, conns_per_shard)
        self.core.client_output_limit = max(0, client_output_limit)
        self.core.client_query_limit = max(0, client_query_limit)
        self.core.idle_timeout_us = <long long>max(0, idle_timeout_s) * 1000000
        self.core.tls_handshake_timeout_us = TLS_HANDSHAKE_TIMEOUT_S * 1000000
        self.core.hold_us = <long long>max(0, hold_ms) * 1000
        self.core.fence_hold_us = <long long>max(0, fence_hold_ms) * 1000
        self.core.tracking_max_keys = <size_t>max(0, tracking_max_keys)
        self.set_password(password)
        self.set_multi_slot_commands(multi_slot_commands)
        # A test hook, off unless the environment asks (tests/test_multislot_crash.py): the
        # process stops itself (SIGSTOP) once a sequence's destination is written and before
        # its source is changed, so that a test can kill -9 it, or a shard, right there.
        self.core.seq_stop_before_write_back = os.environ.get("DMC_TEST_STOP_BEFORE_WRITE_BACK") == "1"
        version = server_version.encode()[:31]
        memcpy(self.core.server_version, <char *>version, len(version))
        self.core.shards = <Shard *>calloc(MAX_SHARDS, sizeof(Shard))
        self.core.shard_frag = <int *>calloc(MAX_SHARDS, sizeof(int))
        self.core.active = <int *>calloc(MAX_SHARDS, sizeof(int))
        self.core.read_chunk = <char *>malloc(READ_CHUNK)
        if not (self.core.shards and self.core.shard_frag and self.core.active and self.core.read_chunk):
            raise MemoryError()
        argvec_init(&self.core.av)
        argvec_init(&self.core.relay_av)
        keylist_init(&self.core.keys)
        self.core.now_us = monotonic_us()
        self.core.default_shard = -1
        # Seeded apart for every Proxy (time, and where its Core lives).
        self.core.random_state = <unsigned long long>self.core.now_us ^ <unsigned long long><size_t>&self.core
        self.shard_index = {}
        self.core.listener.kind = KIND_LISTENER
        self.core.listener.fd = listen_fd
        cdef sockaddr_in local
        cdef socklen_t local_len = sizeof(local)
        if getsockname(listen_fd, <sockaddr *>&local, &local_len) == 0:
            format_address(&local, self.core.listen_addr)
        counters_init(&self.core, ntohs(local.sin_port))
        cdef epoll_event ev
        ev.events = EPOLLIN
        ev.data.ptr = &self.core.listener
        if epoll_ctl(self.core.epfd, EPOLL_CTL_ADD, listen_fd, &ev) < 0:
            raise OSError(errno, "epoll_ctl on the listening socket")
        self.core.wake.kind = KIND_WAKE
        self.core.wake.fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        if self.core.wake.fd < 0:
            raise OSError(errno, "eventfd")
        ev.events = EPOLLIN
        ev.data.ptr = &self.core.wake
        if epoll_ctl(self.core.epfd, EPOLL_CTL_ADD, self.core.wake.fd, &ev) < 0:
            raise OSError(errno, "epoll_ctl on the wake-up eventfd")

    def __dealloc__(self):
        cdef int i, j
        cdef Backend *b
        cdef Request *r
        cdef Held *h
        while self.core.held_head != NULL:     # (their requests go with the process, as clients')
            h = self.core.held_head
            self.core.held_head = h.next
            buf_free(&h.cmd)
            free(h)
        # Client structs and in-flight requests are reclaimed with the process; close sockets.
        if self.core.shards != NULL:
            acl_close(&self.core, False)
            for i in range(self.core.nshards):
                for j in range(self.core.shards[i].nconns):
                    b = &self.core.shards[i].conns[j]
                    backend_socket_close(b)
                    buf_free(&b.rbuf)
                    buf_free(&b.wbuf)
                free(self.core.shards[i].conns)
                for j in range(4):
                    b = self.core.shards[i].control[j] if j < 2 else self.core.shards[i].spare[j - 2]
                    if b != NULL:
                        backend_socket_close(b)
                        buf_free(&b.rbuf)
                        buf_free(&b.wbuf)
                        free(b)
            free(self.core.shards)
        while self.core.free_requests != NULL:
            r = self.core.free_requests
            self.core.free_requests = r.next
            free(r)
        free(self.core.password)
        free(self.core.seq_locks)
        free(self.core.shard_frag)
        free(self.core.active)
        free(self.core.read_chunk)
        free(self.core.key_shard)
        free(self.core.scripts_spread)
        argvec_free(&self.core.av)
        keylist_free(&self.core.keys)
        buf_free(&self.core.merged)
        buf_free(&self.core.subcommand)
        buf_free(&self.core.monitor_line)
        buf_free(&self.core.users_deleted)
        buf_free(&self.core.relay_cmd)
        argvec_free(&self.core.relay_av)
        tracking_free(&self.core)
        cluster_api_free(self.core.cluster)
        if self.core.wake.fd >= 0:
            close(self.core.wake.fd)
        if self.core.epfd >= 0:
            close(self.core.epfd)
        if self.core.tls_ctx != NULL:
            SSL_CTX_free(self.core.tls_ctx)
        if self.core.shard_tls_ctx != NULL:
            SSL_CTX_free(self.core.shard_tls_ctx)
        if self.table is not None:
            self.table.serving = False

    cdef int shard_for(self, str host, int port) except -1:
        cdef Shard *s
        cdef Backend *b
        cdef int j
        key = (host, port)
        idx = self.shard_index.get(key)
        if idx is not None:
            return idx
        if self.core.nshards >= MAX_SHARDS:
            raise ValueError("too many shards")
        idx = self.core.nshards
        s = &self.core.shards[idx]
        memset(s, 0, sizeof(Shard))
        label = ("%s:%d" % (host, port)).encode()[:63]
        memcpy(s.label, <char *>label, len(label))
        s.addr.sin_family = AF_INET
        s.addr.sin_port = htons(port)
        if inet_pton(AF_INET, host.encode(), &s.addr.sin_addr) != 1:
            raise ValueError("not an IPv4 address: %r" % host)
        s.per_proto = self.core.conns_per_shard
        s.nconns = 2 * s.per_proto
        s.conns = <Backend *>calloc(s.nconns, sizeof(Backend))
        if s.conns == NULL:
            raise MemoryError()
        for j in range(s.nconns):
            b = &s.conns[j]
            b.kind = KIND_BACKEND
            b.fd = -1
            b.state = BK_DOWN
            b.role = ROLE_SHARED
            b.shard = idx
            b.retry_delay_us = RETRY_MIN_US
            b.retry_at_us = 0
            b.proto = 2 if j < s.per_proto else 3
            b.used = j < s.per_proto
        self.core.nshards += 1
        self.shard_index[key] = idx
        return idx

    def apply_shard_map(self, unsigned long long version, list shards, slot_owner):
        """Install a shard map. shards: [(ipv4, port)] in map order; slot_owner: 16384 indices
        into shards (any sequence of ints). A version not newer than the current map is ignored
        and False returned."""
        cdef int i, n = len(shards)
        cdef unsigned short table[SLOT_COUNT]
        cdef int idx[MAX_SHARDS]
        cdef unsigned char lost[MAX_SHARDS]
        cdef unsigned short old_map[SLOT_COUNT]
        if self.core.nactive and version <= self.core.map_version:
            return False
        if n == 0 or n > MAX_SHARDS:
            raise ValueError("a shard map needs 1 to %d shards" % MAX_SHARDS)
        if len(slot_owner) != SLOT_COUNT:
            raise ValueError("a shard map assigns all %d slots" % SLOT_COUNT)
        for i in range(n):
            host, port = shards[i]
            idx[i] = self.shard_for(host, int(port))
        for i in range(SLOT_COUNT):
            owner = slot_owner[i]
            if not 0 <= owner < n:
                raise ValueError("slot %d is owned by shard %r, not in the map" % (i, owner))
            table[i] = idx[owner]
        # From here on nothing can fail: switch atomically with respect to the loop.
        # lost: the shards that lose slots, or their place in the map (see fence.pxi).
        memset(lost, 0, sizeof(lost))
        memcpy(old_map, self.core.slot_map, sizeof(old_map))
        if self.core.nactive:
            for i in range(SLOT_COUNT):
                if self.core.slot_map[i] != table[i]:
                    lost[self.core.slot_map[i]] = 1
        for i in range(self.core.nshards):
            if self.core.shards[i].active:
                lost[i] = lost[i] | 2
            self.core.shards[i].active = False
        for i in range(n):
            self.core.shards[idx[i]].active = True
            self.core.active[i] = idx[i]
            lost[idx[i]] &= 1
        self.core.nactive = n
        memcpy(self.core.slot_map, table, sizeof(table))
        self.core.map_version = version
        default_shard_changed(&self.core)
        relays_sync(&self.core)
        spares_sync(&self.core)
        tracking_map_changed(&self.core)
        # After the switch: a request answered -TRYAGAIN may let its client's next ones be
        # routed, by the new map.
        fence_map_change(&self.core, lost)
        for i in range(self.core.nshards):
            self.core.shards[i].suspect_until_us = 0    # the new map says who the masters are
        if self.core.held_head != NULL:
            held_remap(&self.core, old_map)     # what waited for a dead shard goes to its successor
        return True

    @property
    def map_version(self):
        return self.core.map_version

    def run_once(self, int timeout_ms=100):
        """One turn: wait up to timeout_ms for events (less when wakeup() is called), handle
        them. Returns the number of events."""
        cdef int n, err = 0
        with nogil:
            n = loop_once(&self.core, timeout_ms)
            if n < 0:
                err = errno
        if n < 0 and err != EINTR:
            raise OSError(err, "epoll_wait")
        return n

    def run_until_wakeup(self, int tick_ms=100):
        """Turns, without taking the GIL between them, until wakeup() is called: the loop of a
        thread that serves one endpoint and does something else only when asked to."""
        cdef int n = 0, err = 0
        with nogil:
            while not self.core.woken:
                n = loop_once(&self.core, tick_ms)
                if n < 0:
                    err = errno
                    if err != EINTR:
                        break
            self.core.woken = False
        if n < 0 and err != EINTR:
            raise OSError(err, "epoll_wait")

    def run(self, int tick_ms=100):
        """Serve until stop() is called (for example from a signal handler)."""
        cdef int n, err = 0
        self.stopping = False
        while not self.stopping:
            with nogil:
                n = loop_once(&self.core, tick_ms)
                if n < 0:
                    err = errno
            if n < 0 and err != EINTR:
                raise OSError(err, "epoll_wait")
            PyErr_CheckSignals()

    def stop(self):
        """run() returns after the turn under way."""
        self.stopping = True
        self.wakeup()

    def wakeup(self):
        """End the turn under way if it waits in epoll (run_once() returns, run_until_wakeup()
        returns after it). Safe from any thread."""
        cdef unsigned long long one = 1
        with nogil:
            write(self.core.wake.fd, &one, sizeof(one))

    def pause(self):
        """Hold every request not yet sent: connections are still accepted and read, but from
        now on requests wait, in order, unparsed in their client's input, until resume(). A
        client with a held request is not read further (what one read brought, usually up to
        64 KiB, is held; the rest waits in its socket), but its hang-up is noticed and it is
        closed.
        Requests already sent to a shard are answered as usual (see inflight())."""
        self.core.paused = True

    def resume(self):
        """End a pause: the held requests are routed, in each client's order, by the shard map
        current now (install the new map first, then resume), and written to the shards before
        this returns."""
        if self.core.paused:
            with nogil:
                core_resume(&self.core)

    @property
    def paused(self):
        return bool(self.core.paused)

    def fence(self, bint on):
        """The fence: while on, every command that writes (the table's `writes`: write or
        may_replicate, EXEC) is answered -READONLY instead of being sent, and every one that
        reads data (`readonly`) -MASTERDOWN; the rest is served. For a node cut off from the
        cluster's majority, whose shards may be failed over on the other side
        (control/node_proxy.py decides; fence.pxi)."""
        self.core.fenced = on
        self._fence_moved()

    def fence_until(self, double until):
        """The node's majority lease: from `until` (a time.monotonic() deadline) on, the fence
        is up by itself, checked for every command against the loop's clock (0: no lease)."""
        self.core.lease_until_us = <long long>(until * 1e6) if until > 0 else 0
        self._fence_moved()

    cdef void _fence_moved(self):
        """The fence is down now: what it held goes (fence.pxi)."""
        cdef long long until = self.core.lease_until_us
        if self.core.held_head != NULL and not self.core.fenced \
                and (until == 0 or monotonic_us() < until):
            self.core.now_us = monotonic_us()
            held_release(&self.core, FENCE_DOWN)

    @property
    def fence_hold_ms(self):
        """How long a request the fence refuses waits for it to be down first (0: refused at
        once; fence.pxi)."""
        return self.core.fence_hold_us // 1000

    @fence_hold_ms.setter
    def fence_hold_ms(self, int ms):
        self.core.fence_hold_us = <long long>max(0, ms) * 1000

    @property
    def fenced(self):
        cdef long long until = self.core.lease_until_us
        return bool(self.core.fenced or (until != 0 and monotonic_us() >= until))

    @property
    def hold_ms(self):
        """How long a request for a shard that is down waits for a new map (hold.pxi; 0: it
        is answered "unavailable" at once)."""
        return self.core.hold_us // 1000

    @hold_ms.setter
    def hold_ms(self, int ms):
        self.core.hold_us = <long long>max(0, ms) * 1000

    def inflight(self):
        """Requests (fragments, for a split or fan-out request) sent to a shard and not yet
        answered. Clients blocked in BLPOP & co. and subscriber connections are not counted:
        they wait on purpose. Paused, this falls to 0 once the shards have answered."""
        return core_inflight(&self.core)

    def set_client_query_limit(self, long long limit):
        """Redis's client-query-buffer-limit: bytes of unparsed input a client may hold (0: no
        limit); applies from the client's next read."""
        self.core.client_query_limit = max(0, limit)

    def set_password(self, password):
        """The database password (str or bytes; None or empty: none). New AUTH and HELLO AUTH
        are checked against it; clients already authenticated stay so, as in Redis, and with no
        password every client is."""
        cdef char *pw = NULL
        cdef char *old = self.core.password
        cdef Client *c
        if password:
            b = password.encode() if isinstance(password, str) else bytes(password)
            pw = <char *>malloc(len(b) + 1)
            if pw == NULL:
                raise MemoryError()
            memcpy(pw, <char *>b, len(b))
            pw[len(b)] = 0
        self.core.password = pw
        free(old)
        if pw == NULL:
            c = self.core.all_clients
            while c != NULL:
                c.flags |= CF_AUTHED
                c = c.next

    def set_tls(self, certfile=None, keyfile=None, cafile=None, str client_auth="none",
                authorized_names=(), str min_version="1.2", str ciphers="",
                str ciphersuites=""):
        """Client TLS (tls.pxi): clients accepted from now on speak TLS with this certificate
        (PEM chain file) and key; client_auth "none", "optional" (a certificate, if sent, must
        verify against cafile) or "required" (refused without one that does); a client
        certificate must name one of authorized_names if any (subject CN or DNS SAN);
        min_version "1.2" or "1.3", ciphers (TLS 1.2, OpenSSL's cipher list syntax) and
        ciphersuites (TLS 1.3), "": OpenSSL's defaults. certfile None:
        plaintext again. Loaded at once (a bad file raises ValueError, the TLS in use stays);
        clients already connected keep the TLS (or plaintext) they started with, so calling
        it again with a renewed certificate rotates it without dropping anyone."""
        cdef SSL_CTX *ctx = NULL
        cdef SSL_CTX *old = self.core.tls_ctx
        modes = {"none": TLS_CLIENT_AUTH_NONE, "optional": TLS_CLIENT_AUTH_OPTIONAL,
                 "required": TLS_CLIENT_AUTH_REQUIRED}
        if client_auth not in modes:
            raise ValueError(f"client_auth must be one of {', '.join(modes)}, not {client_auth!r}")
        if certfile is not None:
            if keyfile is None:
                raise ValueError("TLS needs a key file with the certificate")
            ctx = tls_context(os.fsencode(certfile), os.fsencode(keyfile),
                              os.fsencode(cafile) if cafile else b"", modes[client_auth],
                              [str(n).encode() for n in authorized_names], min_version,
                              ciphers.encode(), ciphersuites.encode())
        self.core.tls_ctx = ctx
        if old != NULL:
            SSL_CTX_free(old)       # its clients' SSLs hold references of their own

    @property
    def tls(self):
        return self.core.tls_ctx != NULL

    @property
    def tls_handshake_timeout(self):
        """Seconds a TLS client may take for its handshake before it is closed (0: no limit)."""
        return self.core.tls_handshake_timeout_us / 1e6

    @tls_handshake_timeout.setter
    def tls_handshake_timeout(self, double seconds):
        self.core.tls_handshake_timeout_us = <long long>(max(0.0, seconds) * 1e6)

    def set_shard_tls(self, cafile=None, certfile=None, keyfile=None, str min_version="1.2",
                      str ciphers="", str ciphersuites=""):
        """Shard TLS (tls.pxi): connections opened to shards from now on speak TLS, the shards'
        certificates verified against cafile, certfile/keyfile (PEM) presented as the proxy's
        client certificate; min_version and ciphers as set_tls's. cafile None: plaintext
        again. Connections already open keep what
        they started with (a shard that switched drops them; they reconnect with this)."""
        cdef SSL_CTX *ctx = NULL
        cdef SSL_CTX *old = self.core.shard_tls_ctx
        if cafile is not None:
            if certfile is not None and keyfile is None:
                raise ValueError("a client certificate needs its key file")
            ctx = shard_tls_context(os.fsencode(certfile) if certfile else b"",
                                    os.fsencode(keyfile) if keyfile else b"",
                                    os.fsencode(cafile), min_version, ciphers.encode(),
                                    ciphersuites.encode())
        self.core.shard_tls_ctx = ctx
        if old != NULL:
            SSL_CTX_free(old)       # its connections' SSLs hold references of their own

    @property
    def shard_tls(self):
        return self.core.shard_tls_ctx != NULL

    def set_keyspace_relay(self, bint on):
        """Whether this proxy relays the shards' keyspace notifications to the pub/sub shard
        (pubsub.pxi); off where another proxy of the same database does."""
        self.core.keyspace_relay_off = not on
        relays_sync(&self.core)

    def set_multi_slot_commands(self, str policy):
        """The database's multi_slot_commands: `refuse` (CROSSSLOT for keys of several shards,
        as Redis Cluster) or `sequential` (carried out in single-shard steps, sequential.pxi).
        Sequences already running finish as they started."""
        if policy not in MULTI_SLOT_POLICIES:
            raise ValueError(f"multi_slot_commands must be one of {', '.join(MULTI_SLOT_POLICIES)}, not {policy!r}")
        self.core.multi_slot = MULTI_SLOT_POLICIES[policy]

    def set_cluster_api(self, replies, dict node_of=None, list node_addrs=None):
        """The OSS Cluster API (cluster_api.pxi), None: off. replies: {(proto, name): bytes}
        for proto 2 and 3 and name slots, shards, nodes, info, myid (dmc/cluster_api.py makes
        them); node_of: {(host, port) of a shard: index into node_addrs, the "ip:port" of the
        proxy serving it; -1 or absent: this one}. Call it after apply_shard_map, in the same
        turn, with the topology of the map just installed."""
        cdef ClusterApi *api
        cdef int p, i
        names = ("slots", "shards", "nodes", "info", "myid")
        if replies is None:
            cluster_api_free(self.core.cluster)
            self.core.cluster = NULL
            return
        node_addrs = node_addrs or []
        if len(node_addrs) > CLUSTER_MAX_NODES:
            raise ValueError("at most %d cluster nodes" % CLUSTER_MAX_NODES)
        for (host, port), node in (node_of or {}).items():
            if node >= len(node_addrs):
                raise ValueError("shard %s:%d is served by node %d, not in node_addrs" % (host, port, node))
        api = <ClusterApi *>calloc(1, sizeof(ClusterApi))
        if api == NULL:
            raise MemoryError()
        for i in range(MAX_SHARDS):
            api.node_of[i] = -1
        try:
            for p in range(2):
                for i in range(CLUSTER_REPLIES):
                    data = bytes(replies[(p + 2, names[i])])
                    if buf_append(&api.replies[p][i], <char *>data, len(data)) < 0:
                        raise MemoryError()
            for i, addr in enumerate(node_addrs):
                label = addr.encode()[:63]
                memcpy(api.node_addr[i], <char *>label, len(label))
                api.node_addr[i][len(label)] = 0
            for (host, port), node in (node_of or {}).items():
                if node >= 0:
                    api.node_of[self.shard_for(host, int(port))] = node
        except BaseException:
            cluster_api_free(api)
            raise
        cluster_api_free(self.core.cluster)
        self.core.cluster = api

    @property
    def oss_cluster(self):
        return self.core.cluster != NULL

    def close(self):
        """Stop serving: the listening socket leaves the loop (its owner closes it), every
        client connection and shard connection is closed. Call it once the loop has stopped."""
        with nogil:
            core_close(&self.core)

    def stats(self):
        cdef int i, j
        cdef Backend *b
        shards = []
        for i in range(self.core.nshards):
            s = &self.core.shards[i]
            conns = []
            for j in range(s.nconns):
                b = &s.conns[j]
                conns.append({"state": ("down", "connecting", "up")[b.state], "queued": b.queued,
                              "proto": b.proto})
            shards.append({"address": s.label.decode(), "active": bool(s.active), "conns": conns,
                           "busy": bool(s.busy)})
        return {
            "map_version": self.core.map_version,
            "paused": bool(self.core.paused),
            "fenced": self.fenced,
            "held_bytes": self.core.held_bytes,
            "inflight": core_inflight(&self.core),
            "clients": self.core.nclients,
            "total_connections": self.core.total_connections,
            "rejected_connections": self.core.rejected_connections,
            "client_query_buffer_limit_disconnections": self.core.qbuf_limit_disconnections,
            "evicted_clients": self.core.evicted_clients,
            "tls": self.core.tls_ctx != NULL,
            "tls_handshake_failures": self.core.tls_handshake_failures,
            "tls_handshake_timeouts": self.core.tls_handshake_timeouts,
            "shard_tls": self.core.shard_tls_ctx != NULL,
            "shard_tls_failures": self.core.shard_tls_failures,
            "shards": shards,
            "commands": self.table.counters(),
            "counters": counters_dict(&self.core),
        }


cdef class WorkerGroup:
    """The worker threads of one endpoint: Proxies that serve the same port, each run by a
    thread of its own (dmc/endpoint.py). stop() / start() stop every worker between two turns
    of its loop, so that a change can be applied to all at once."""
    cdef Workers *w
    cdef list proxies

    def __cinit__(self, list proxies):
        cdef int i
        cdef Proxy p
        if not 2 <= len(proxies) <= MAX_WORKERS:
            raise ValueError("2 to %d workers" % MAX_WORKERS)
        self.w = <Workers *>calloc(1, sizeof(Workers))
        if self.w == NULL:
            raise MemoryError()
        self.proxies = list(proxies)
        self.w.n = len(proxies)
        pthread_mutex_init(&self.w.world, NULL)
        pthread_mutex_init(&self.w.seq_lock, NULL)
        for i in range(self.w.n):
            pthread_mutex_init(&self.w.turn[i], NULL)
            pthread_mutex_init(&self.w.inbox_lock[i], NULL)
        for i in range(self.w.n):
            p = proxies[i]
            if p.core.workers != NULL:
                raise ValueError("a Proxy is a worker of one group only")
            self.w.cores[i] = &p.core
        for i in range(self.w.n):
            p = proxies[i]
            p.core.workers = self.w
            p.core.worker = i
            p.core.next_client_id = <unsigned long long>i
            # What INFO shows of the endpoint itself is worker 0's (one run_id, one uptime).
            memcpy(p.core.counters.run_id, self.w.cores[0].counters.run_id, sizeof(p.core.counters.run_id))
            p.core.counters.started_us = self.w.cores[0].counters.started_us
            p.core.counters.started_unix_us = self.w.cores[0].counters.started_unix_us
            # The sequential commands' slot locks are the endpoint's (sequential.pxi).
            free(p.core.seq_locks)
            p.core.seq_locks = self.w.seq_locks
            dmc_atomic_add_int(&self.w.nclients, p.core.nclients)
            relays_sync(&p.core)        # worker 0 relays the keyspace notifications, alone

    def stop(self):
        """Every worker waits, outside its loop's turns, until start()."""
        with nogil:
            workers_stop(self.w)

    def start(self):
        with nogil:
            workers_start(self.w)
            workers_wake(self.w, NULL)

    def __dealloc__(self):
        # Once the loops have ended (Endpoint.stop): the Proxies go on alone.
        cdef int i
        cdef Proxy p
        if self.w == NULL:
            return
        for p in self.proxies or []:
            p.core.workers = NULL
            p.core.seq_locks = NULL         # the group's: a Proxy alone makes its own
        for i in range(self.w.n):
            pthread_mutex_destroy(&self.w.turn[i])
            pthread_mutex_destroy(&self.w.inbox_lock[i])
            buf_free(&self.w.inbox[i])
            buf_free(&self.w.mail[i])
        pthread_mutex_destroy(&self.w.world)
        pthread_mutex_destroy(&self.w.seq_lock)
        free(self.w)
