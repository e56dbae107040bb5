"""The state machines that change databases and nodes, one module each, run by cnm_exec on the
master node (control/cnm_exec.py) from the action records in CCS (`actions`).

An action is a list of steps (control/machines/base.py). After each step the action's `state`
(whatever the steps want to remember), step name and progress are written to CCS before the
next step starts, so that a new master resumes a half-done action from the step that was
running; every step is written to be run again safely. A step that fails the action records
the failure (`state.failed`) before the machine's `finish` undoes what it must, so a new master
that takes over half-way through the undoing runs it again, not the step.

    bdb_create      place shards, wait for redis_mgr to run them, write the shard map, wait for
                    every node's dmcproxy to serve it, mark the database active
    bdb_update      apply new settings (memory, eviction, password, persistence, replication
                    on/off); wait for shards and proxies to apply them
    bdb_delete      withdraw the endpoint, stop the shards, forget the database
    shard_failover  promote a master's replica; graceful (pause, catch up, switch) while the
                    master lives, forced when it has failed (node_wd submits those)
    shard_migrate   move a shard to another node: a new replica there, then a graceful switch
    node_add        wait until a node that joined runs its services and serves every database
    node_remove     move every shard off a node (a shard_migrate each), then the node leaves
    bdb_reshard     more shards: split each master's slots (replicate, then split; below)
    bdb_backup      an RDB of every slot range (from the replicas) and a manifest, in a folder
    bdb_import      load a backup, or any RDB file, into a database through its endpoint

How slots move (the choice DESIGN.md leaves open): **replicate, then split**. A new shard starts
as a replica of the master whose slots it will take, and catches up by replication (diskless).
Then every node's dmcproxy pauses the database (it keeps reading clients but sends nothing to
shards, and reports when what it had sent is answered); the new replica's offset is checked
equal to its master's; it is promoted; the new map gives it its slots and resumes the proxies.
Clients see a pause of a few milliseconds and never an error; no acknowledged write is lost,
because every write acknowledged before the pause is on the new shard, and none is sent during
it. Then each shard deletes the keys of slots it no longer owns (the proxies never route to
them). A shard migration is the same switch without the split. A reshard that fails before
the new layout is written is rolled back exactly; once it has recorded `committed` it only goes
forward (bdb_reshard's docstring).
"""

from control.machines.bdb_backup import BdbBackup
from control.machines.bdb_create import BdbCreate
from control.machines.bdb_delete import BdbDelete
from control.machines.bdb_import import BdbImport
from control.machines.bdb_reshard import BdbReshard
from control.machines.bdb_update import BdbUpdate
from control.machines.node_add import NodeAdd
from control.machines.node_remove import NodeRemove
from control.machines.shard_failover import ShardFailover
from control.machines.shard_migrate import ShardMigrate

# action name -> its machine
MACHINES = {"bdb_create": BdbCreate, "bdb_update": BdbUpdate, "bdb_delete": BdbDelete,
            "shard_failover": ShardFailover, "shard_migrate": ShardMigrate,
            "bdb_reshard": BdbReshard, "node_add": NodeAdd, "node_remove": NodeRemove,
            "bdb_backup": BdbBackup, "bdb_import": BdbImport}
