"""The shard map of one database: which shard owns which of the 16384 hash slots.

A ShardMap is an immutable value with a version that only grows. The proxy installs a map
atomically between two turns of its loop. Maps come from dmcproxy's config file (re-read on
SIGHUP) or, in a cluster, from CCS, where the control plane writes each database's map and
node_proxy installs it (ShardMap.from_dict).
"""

from __future__ import annotations

from dataclasses import dataclass

SLOT_COUNT = 16384


@dataclass(frozen=True)
class ShardMap:
    version: int
    shards: tuple[tuple[str, int], ...]
    # For each shard, in order, the list of (first, last) slot ranges it owns.
    ranges: tuple[tuple[tuple[int, int], ...], ...]

    @classmethod
    def even(cls, shards, version: int = 1) -> "ShardMap":
        """The 16384 slots split evenly in shard order, as `dmcproxy --shard ...` does."""
        shards = tuple((h, int(p)) for h, p in shards)
        if not shards:
            raise ValueError("a shard map needs at least one shard")
        n = len(shards)
        ranges = []
        for i in range(n):
            first = i * SLOT_COUNT // n
            last = (i + 1) * SLOT_COUNT // n - 1
            ranges.append(((first, last),))
        return cls(version, shards, tuple(ranges))

    def __post_init__(self):
        owners = self.slot_owners()
        missing = [s for s, o in enumerate(owners) if o < 0]
        if missing:
            raise ValueError(f"{len(missing)} slots have no shard, first {missing[0]}")

    def slot_owners(self) -> list[int]:
        owners = [-1] * SLOT_COUNT
        if len(self.ranges) != len(self.shards):
            raise ValueError("one list of slot ranges per shard")
        for idx, ranges in enumerate(self.ranges):
            for first, last in ranges:
                if not 0 <= first <= last < SLOT_COUNT:
                    raise ValueError(f"bad slot range {first}-{last}")
                for slot in range(first, last + 1):
                    if owners[slot] != -1:
                        raise ValueError(f"slot {slot} is owned twice")
                    owners[slot] = idx
        return owners

    def shard_of_slot(self, slot: int) -> tuple[str, int]:
        for idx, ranges in enumerate(self.ranges):
            for first, last in ranges:
                if first <= slot <= last:
                    return self.shards[idx]
        raise KeyError(slot)

    def to_dict(self) -> dict:
        return {"version": self.version,
                "shards": [{"address": f"{h}:{p}", "slots": [list(r) for r in rs]}
                           for (h, p), rs in zip(self.shards, self.ranges)]}

    @classmethod
    def from_dict(cls, d: dict) -> "ShardMap":
        shards, ranges = [], []
        for s in d["shards"]:
            host, _, port = s["address"].rpartition(":")
            shards.append((host, int(port)))
            ranges.append(tuple((int(a), int(b)) for a, b in s["slots"]))
        return cls(int(d["version"]), tuple(shards), tuple(ranges))
