"""The sweep's ``--profile``: where one step's time goes (per-kernel GPU time or aten operators on
CPU, launches per step, host time of a loop without synchronization), its companion CSV's rows and
its table."""

from __future__ import annotations

import sys
import time

import _bench as B

PROFILE_COLUMNS = [
    "run_id", "timestamp", "git_sha", "device", "torch", "triton", "loss", "N", "D", "dtype",
    "precision", "provider", "mode", "steps", "host_ms", "loop_ms", "launches_per_step",
    "gpu_us_per_step", "ops_per_step", "name", "calls_per_step", "us_per_step", "time_kind",
]


def _us(avg, attr):
    """A FunctionEventAvg time total in µs (``*_device_*`` names since torch 2.4, ``*_cuda_*`` before)."""
    v = getattr(avg, attr, None)
    if v is None:
        v = getattr(avg, attr.replace("device", "cuda"), 0.0)
    return float(v)


def profile_point(call, device, steps: int) -> dict:
    """One step's profile. ``host_ms``: wall time per step of a loop of max(10, steps) calls with
    no synchronization inside (timer stopped before the final synchronize: what the host spends
    issuing a step); ``loop_ms``: the same loop including the final synchronize. Then ``steps``
    calls under torch.profiler (synchronized after each): on CUDA every GPU activity (kernels,
    memcpy, memset) by name with its device time per step, and the launches per step; on CPU
    every ``aten::`` operator by name with its self CPU time and calls per step."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    loop = max(10, steps)
    B.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(loop):
        out = call()
    t1 = time.perf_counter()
    B.synchronize(device)
    t2 = time.perf_counter()
    del out
    cuda = device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    prof = profile(activities=acts)
    with B._quiet_fd2():
        prof.start()
    try:
        for _ in range(steps):
            out = call()
            del out
            B.synchronize(device)
    finally:
        with B._quiet_fd2():
            prof.stop()
    items = []
    for avg in prof.key_averages():
        if cuda and avg.device_type == DeviceType.CUDA:
            items.append((avg.key, avg.count / steps, _us(avg, "self_device_time_total") / steps))
        elif not cuda and avg.key.startswith("aten::"):
            items.append((avg.key, avg.count / steps, float(avg.self_cpu_time_total) / steps))
    items.sort(key=lambda t: -t[2])
    calls = sum(c for _, c, _ in items)
    return {
        "steps": steps, "host_ms": (t1 - t0) * 1e3 / loop, "loop_ms": (t2 - t0) * 1e3 / loop,
        "launches_per_step": calls if cuda else None, "ops_per_step": None if cuda else calls,
        "gpu_us_per_step": sum(us for _, _, us in items) if cuda else None,
        "time_kind": "device" if cuda else "self_cpu", "items": items,
    }


def profile_rows(rows) -> list:
    """The companion CSV's rows: one per (grid point, provider, kernel or operator)."""
    out = []
    keep = ("run_id", "timestamp", "git_sha", "device", "torch", "triton", "loss", "N", "D", "dtype",
            "precision", "provider", "mode")
    for r in rows:
        prof = r.get("_profile")
        if not prof:
            continue
        step = {k: prof[k] for k in ("steps", "host_ms", "loop_ms", "launches_per_step", "gpu_us_per_step",
                                    "ops_per_step", "time_kind")}
        for name, calls, us in prof["items"]:
            out.append({**{k: r.get(k) for k in keep}, **step, "name": name, "calls_per_step": calls,
                        "us_per_step": us})
    return out


def print_profile(rows, top: int = 4, file=sys.stdout):
    profiled = [r for r in rows if r.get("_profile")]
    if not profiled:
        return
    cuda = profiled[0]["_profile"]["time_kind"] == "device"
    print("\nprofile per step (" + ("GPU kernel time from torch.profiler" if cuda else
          "CPU: aten operators, self CPU time") + "; host = loop without synchronization):", file=file)
    headers = ["N", "D", "provider", "host ms", "loop ms", "launches" if cuda else "aten ops",
               "GPU us" if cuda else "CPU us", f"top {top} (us per step, calls)"]
    body = []
    for r in profiled:
        p = r["_profile"]
        tops = ", ".join(f"{n.replace('aten::', '')[:40]} {us:.0f} ({c:g})" for n, c, us in p["items"][:top])
        body.append([r["N"], r["D"], r["provider"], f"{p['host_ms']:.3f}", f"{p['loop_ms']:.3f}",
                     f"{p['launches_per_step'] if cuda else p['ops_per_step']:g}",
                     f"{p['gpu_us_per_step'] if cuda else sum(us for _, _, us in p['items']):.0f}", tops])
    print(B.format_table(headers, body, align="rrlrrrrl"), file=file)
