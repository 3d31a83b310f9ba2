"""The sweep's measurement of one grid point: for every provider a checked call (compared with
eager's value and gradients), a peak-memory call, then the timed calls; failures become rows with an
``error`` classified as out-of-memory, unavailable, skipped or error."""

from __future__ import annotations

import time
import traceback

import torch

import _bench as B
from sweep_cases import LOSSES, Case, Unavailable, est_seconds, make_inputs, make_provider, provider_flops
from sweep_profile import profile_point


class Skipped(Exception):
    """This provider would take unreasonably long here (see --max-est-s)."""


def tolerance(dtype: torch.dtype, precision: str) -> float:
    """Relative difference from eager above which the check column says FLAG."""
    if dtype == torch.float64:
        return 1e-6
    if dtype == torch.float32:
        return 1e-3 if precision == "highest" else 1e-2
    if dtype == torch.float16:
        return 2e-2
    return 5e-2  # bfloat16: 8 mantissa bits; eager itself rounds intermediates to bf16


def classify_error(e: BaseException) -> tuple[str, str]:
    """(kind, message): kind is "oom", "unavailable", "skipped" or "error"."""
    msg = f"{type(e).__name__}: {e}".replace("\n", " ").strip()
    if len(msg) > 300:
        msg = msg[:297] + "..."
    oom_types = tuple(t for t in (getattr(torch.cuda, "OutOfMemoryError", None),
                                  getattr(torch, "OutOfMemoryError", None)) if t)
    if isinstance(e, oom_types) or "out of memory" in str(e).lower() or isinstance(e, MemoryError):
        return "oom", "OOM: " + msg
    if isinstance(e, Skipped):
        return "skipped", f"skipped: {e}"
    if isinstance(e, (Unavailable, NotImplementedError)) or type(e).__name__ == "BackendUnavailableError":
        return "unavailable", "unavailable: " + (str(e) if isinstance(e, Unavailable) else msg)
    return "error", msg


def rel_diff(x: torch.Tensor, ref: torch.Tensor) -> float:
    x, ref = x.detach().double(), ref.detach().double()
    den = ref.abs().max().item()
    return (x - ref).abs().max().item() / max(den, 1e-30)


def free_device_memory(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def run_point(args, loss, N, D, dtype, device, providers, base_row, notes, on_task_done):
    """Benchmark every provider at one (N, D). Returns the CSV rows (dicts)."""
    rows = []
    try:
        case = make_inputs(loss, N, D, dtype, device, args.seed, args.queue)
    except Unavailable as e:  # the loss has no inputs at this point (e.g. SupCon with N odd)
        for prov in providers:
            notes.setdefault((prov, f"unavailable: {e}"), []).append((N, D))
            rows.append(dict(base_row, N=N, D=D, provider=prov, timestamp=B.utc_now(),
                             error=f"unavailable: {e}", check=""))
            on_task_done(prov)
        return rows
    ref = {}              # eager's (loss value, gradients), filled by its row
    eager_median = None

    for prov in providers:
        row = dict(base_row, N=N, D=D, provider=prov, timestamp=B.utc_now())
        try:
            fn = make_provider(prov, loss, device, N, D)
            est = est_seconds(provider_flops(prov, loss, N, D, args.queue), device, dtype, args.precision)
            if args.max_est_s > 0 and est > args.max_est_s:
                raise Skipped(f"estimated {est:.1f} s per fwd+bwd call > --max-est-s {args.max_est_s:g}")
            if prov == "eager" and LOSSES[loss].ref_float64 and dtype != torch.float64:
                try:
                    ref.update(zip(("val", "grads"), _evaluate(fn, _float64(case), args.mode)))
                except (RuntimeError, MemoryError) as e:  # e.g. out of memory: check against eager as is
                    notes.setdefault((prov, f"float64 reference failed, checked against eager in {args.dtype}: "
                                      + classify_error(e)[1][:120]), []).append((N, D))
                    e = None
                    free_device_memory(device)
            measure_provider(args, prov, fn, case, device, dtype, row, ref)
            if prov == "eager":
                eager_median = row["median_ms"]
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # noqa: BLE001 - one provider's failure must not stop the sweep
            kind, msg = classify_error(e)
            row["error"] = msg
            row.setdefault("check", "")
            if kind == "error" and args.verbose:
                traceback.print_exc()
            if kind in ("unavailable", "skipped"):
                notes.setdefault((prov, msg), []).append((N, D))
            e = None  # drop the traceback's frames (and the tensors they hold) before freeing
            free_device_memory(device)
        rows.append(row)
        on_task_done(prov)

    for r in rows:
        m = r.get("median_ms")
        if eager_median and m and not r.get("error"):
            r["speedup_vs_eager"] = eager_median / m
    del case, ref
    free_device_memory(device)
    return rows


def _float64(case: Case) -> Case:
    """The case's inputs as float64 leaves (integer inputs such as labels as they are)."""
    up = {id(x): x.detach().double().requires_grad_(x.requires_grad)
          for x in case.args if isinstance(x, torch.Tensor) and x.is_floating_point()}
    return Case(tuple(up.get(id(x), x) for x in case.args), tuple(up[id(x)] for x in case.grads))


def _evaluate(fn, case: Case, mode: str):
    """(loss value as float64, gradients or None in fwd mode) of one call."""
    out = fn(*case.args)
    grads = torch.autograd.grad(out, case.grads) if mode != "fwd" else None
    return out.detach().double(), grads


def measure_provider(args, prov, fn, case, device, dtype, row, ref):
    """Check, memory and timing of one provider at one grid point, written into ``row``; eager's
    results go into ``ref`` for the providers after it, unless ``ref`` already holds a float64
    reference (then eager's row is checked against it like the others)."""
    inputs, wrt = case.args, case.grads
    # 1) checked call (also the first warm-up; compiles what needs compiling). On CPU in fwdbwd
    #    mode it is exactly the timed call plus the comparison afterwards, so it also measures peak
    #    memory (the profiler's cost is per op, small against a call).
    cpu_fused = (device.type == "cpu" and args.mode == "fwdbwd" and not args.no_memory
                 and prov != "compile")  # compile's first call includes compiling
    holder = {}

    def checked():
        B.synchronize(device)
        t0 = time.perf_counter()
        out = fn(*inputs)
        grads = torch.autograd.grad(out, wrt) if args.mode != "fwd" else None
        B.synchronize(device)
        holder["ms"] = (time.perf_counter() - t0) * 1e3
        holder["val"], holder["grads"] = out.detach().double(), grads

    if cpu_fused:
        row["peak_extra_mb"] = B.peak_extra_mb_cpu(checked)
    else:
        checked()
    check_ms, val, grads = holder.pop("ms"), holder.pop("val"), holder.pop("grads")
    row["loss_value"] = val.item()
    if prov == "eager" and not ref:
        ref.update(val=val, grads=grads)
        row["check"] = "ref"
    elif not ref:
        row["check"] = "n/a"
    else:
        worst = row["loss_rel_diff"] = rel_diff(val, ref["val"])
        if grads is not None and ref["grads"] is not None:
            gr = max(rel_diff(g, r) for g, r in zip(grads, ref["grads"]))
            row["grad_rel_diff"] = gr
            worst = max(worst, gr)
        row["check"] = "ok" if worst <= tolerance(dtype, args.precision) else "FLAG"
    del grads

    # 2) the timed callable for the mode
    if args.mode == "fwd":
        def call():
            return fn(*inputs)
    elif args.mode == "fwdbwd":
        def call():
            return torch.autograd.grad(fn(*inputs), wrt)
    else:  # bwd: one forward kept alive, backward through it repeatedly
        kept = fn(*inputs)

        def call():
            return torch.autograd.grad(kept, wrt, retain_graph=True)

    # 3) peak extra memory of one call; its time (a warm call) plans the timing
    call_ms = check_ms
    if not cpu_fused:
        t0 = time.perf_counter()
        if args.no_memory:
            call_ms = B.time_once_ms(call, device)
            row["peak_extra_mb"] = float("nan")
        else:
            row["peak_extra_mb"] = B.peak_extra_mb(call, device)
            call_ms = (time.perf_counter() - t0) * 1e3

    # 4) timing
    if device.type == "cuda":
        # do_bench takes times, not counts: at least ~5 timed calls (100 ms for fast ones, capped
        # at 3 s), or --reps / --warmup calls' worth of time.
        rep_ms = (args.reps * call_ms if args.reps
                  else min(max(100.0, 5 * call_ms), max(3000.0, call_ms)))
        warm_ms = (max(1.0, args.warmup * call_ms) if args.warmup is not None
                   else min(max(25.0, call_ms), 1000.0))
        p20, p50, p80, n = B.bench_cuda(call, warm_ms, rep_ms, grad_to_none=wrt)
    elif args.reps is None and call_ms >= 1e3 * args.single_shot_s:
        # A multi-second CPU call: the warm call above is the one sample (reps=1 in the CSV); more
        # calls would blow the run's budget for little gain in precision.
        p20 = p50 = p80 = call_ms
        n = 1
    else:
        reps = args.reps or B.auto_cpu_reps(call_ms)
        warm = args.warmup if args.warmup is not None else (1 if call_ms < 1000 else 0)
        p20, p50, p80, n = B.bench_cpu(call, warm, reps)
    row.update(p20_ms=p20, median_ms=p50, p80_ms=p80, reps=n)
    if args.profile:
        row["_profile"] = profile_point(call, device, args.profile_steps)
