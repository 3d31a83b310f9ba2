"""benchmarks/host_overhead.py's invariant, checked on every loss and backend that runs here: a
forward+backward makes no host-device synchronization (docs/design.md convention 3: dispatch and launch decided from
shapes, dtypes and devices only). The benchmark counts every ``.item()``-style op
(aten::_local_scalar_dense and friends) in one step; its times are not asserted (no timed tests)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOSSES = ["vicreg", "barlow", "spectral", "ntxent", "dcl", "infonce", "vicreg_exp", "vicreg_ctr"]


def test_no_host_sync_per_step():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # it stubs the kernels itself
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "host_overhead.py"), "--reps", "2", "--warmup", "0", "--no-csv",
         "--N", "256", "--D", "64", "--scale", "4"],
        capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    header = next(line for line in out.stdout.splitlines() if line.startswith("loss ") and "syncs" in line)
    words = header.split()
    col = words.index("syncs") - words[:words.index("syncs")].count("us")  # "median us": one value in a row
    # the table's rows (the progress lines above it are indented)
    rows = [line.split() for line in out.stdout.splitlines() if line[:1].strip() and line.split()[0] in LOSSES]
    measured = [r for r in rows if r[3] != "-"]
    backends = {(r[0], r[1]) for r in measured}
    # the Triton backend runs everywhere (no-op kernels, no GPU needed), the torch reference always
    for loss in LOSSES:
        assert (loss, "triton") in backends and (loss, "torch") in backends, (loss, sorted(backends))
    for r in measured:
        assert r[col] == "0", f"{r[0]} on {r[1]} ({r[2]}): {r[col]} host syncs per forward+backward"
