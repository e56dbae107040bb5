"""Runs fuzz/fuzz_parser.py (atheris, coverage-guided) against the RESP parsers for a bounded time.

A crash, a failed check (the fuzz target's assertions) or a memory blowup past -rss_limit_mb makes
libFuzzer exit non-zero, and the test fail with the crashing input's path and libFuzzer's report.

    DMC_FUZZ_SECONDS=300 pytest tests/test_fuzz_parser.py   # a longer run (default 30 s)
    pytest -m 'not fuzz'                                     # leave it out
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "fuzz" / "fuzz_parser.py"
SECONDS = max(1, int(os.environ.get("DMC_FUZZ_SECONDS", "30")))

# A few well-formed inputs to start from (first byte 0: fed in one piece; see the target).
SEEDS = [
    b"\x00*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nva\r\nl\r\n",
    b"\x00PING\r\nset a \"b\\x41c\" 'd e'\r\n",
    b"\x02\x01\x04+OK\r\n-ERR x\r\n:1\r\n$3\r\nabc\r\n*2\r\n$-1\r\n*-1\r\n",
    b"\x00%1\r\n+k\r\n~1\r\n,1.5\r\n|1\r\n+a\r\n#t\r\n>2\r\n+message\r\n(1\r\n",
    b"\x01\x02$?\r\n;2\r\nab\r\n;0\r\n*?\r\n_\r\n=7\r\ntxt:abc\r\n.\r\n",
]


@pytest.mark.fuzz
@pytest.mark.timeout(SECONDS + 120)
def test_fuzz_parser(tmp_path):
    pytest.importorskip("atheris")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, seed in enumerate(SEEDS):
        (corpus / f"seed{i}").write_bytes(seed)
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, str(TARGET), f"-max_total_time={SECONDS}", "-rss_limit_mb=1024",
           "-print_final_stats=1", f"-artifact_prefix={artifacts}/", str(corpus)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=SECONDS + 90)
    out = proc.stdout.decode(errors="replace")
    found = sorted(p.name for p in artifacts.iterdir())
    assert proc.returncode == 0 and not found, (
        f"fuzzer exited with {proc.returncode}; artifacts in {artifacts}: {found}\n"
        f"{' '.join(cmd)}\n...\n{out[-6000:]}")
    assert "Done " in out, out[-2000:]
