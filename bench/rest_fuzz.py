"""The REST API's regression net at length: tests/test_rest_fuzz.py with many examples per
operation (default 200; a few thousand requests, some minutes).

    PYTHONPATH=. python3 bench/rest_fuzz.py [--examples N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from clusters import rest_cluster  # noqa: E402
from test_rest_fuzz import FIRST_ADDRESS, run_fuzz  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        with rest_cluster(Path(tmp) / "cluster", FIRST_ADDRESS) as cluster:
            found = run_fuzz(cluster, Path(tmp), args.examples)
    calls = found.pop("_calls")[0]
    print(f"{calls} requests, {sum(map(len, found.values()))} failures")
    for operation, failures in found.items():
        print(f"{operation}:\n  " + "\n  ".join(failures[:5]))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
