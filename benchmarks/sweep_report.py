"""The sweep's output: the table of a run, the summary of a CSV (latest row per configuration) and
the heatmap of our best provider's speedup over eager on the N x D grid."""

from __future__ import annotations

import math
import os
import sys

import _bench as B
from sweep_cases import ALL_PROVIDERS, OURS

HERE = os.path.dirname(os.path.abspath(__file__))


def _f(v, fmt):
    if v in (None, ""):
        return "-"
    try:
        v = float(v)
    except (TypeError, ValueError):
        return str(v)
    if math.isnan(v):
        return "n/a"
    return format(v, fmt)


def print_table(rows, notes=None, file=sys.stdout):
    headers = ["N", "D", "dtype", "prec", "mode", "provider", "median ms", "p20-p80 ms",
               "peak MB", "speedup", "loss rel", "grad rel", "check", "note"]
    body = []
    for r in rows:
        err = r.get("error") or ""
        if err.startswith(("unavailable", "skipped")) and notes is not None:
            continue  # listed once below instead of once per grid point
        body.append([
            r["N"], r["D"], r["dtype"], r["precision"], r["mode"], r["provider"],
            _f(r.get("median_ms"), ".3f"),
            "-" if r.get("p20_ms") in (None, "") else f"{_f(r['p20_ms'], '.3f')}-{_f(r['p80_ms'], '.3f')}",
            _f(r.get("peak_extra_mb"), ".1f"), _f(r.get("speedup_vs_eager"), ".2f"),
            _f(r.get("loss_rel_diff"), ".1e"), _f(r.get("grad_rel_diff"), ".1e"),
            r.get("check") or "-", (err[:70] + "...") if len(err) > 73 else err,
        ])
    print(B.format_table(headers, body, align="rrllllrrrrrrll"), file=file)
    if notes:
        print("\nnot run:", file=file)
        for (prov, msg), pts in notes.items():
            where = f"{len(pts)} grid point(s)" if len(pts) > 1 else f"N={pts[0][0]} D={pts[0][1]}"
            print(f"  {prov:8s} {msg}  [{where}]", file=file)


def plot_heatmap(csv_path, run_id, out_png):
    """Speedup of our best provider over eager on the N x D grid, from the CSV rows of one run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    rows = [r for r in B.read_csv(csv_path) if r.get("run_id") == run_id]
    if not rows:
        return None, "no rows for this run"
    Ns = sorted({int(r["N"]) for r in rows})
    Ds = sorted({int(r["D"]) for r in rows})
    eager, best = {}, {}
    for r in rows:
        if r.get("error") or not r.get("median_ms"):
            continue
        key, ms = (int(r["N"]), int(r["D"])), float(r["median_ms"])
        if r["provider"] == "eager":
            eager[key] = ms
        elif r["provider"] in OURS and (key not in best or ms < best[key][0]):
            best[key] = (ms, r["provider"])
    if not best:
        return None, "no successful rows of our providers"
    grid = [[float("nan")] * len(Ds) for _ in Ns]
    labels = [[""] * len(Ds) for _ in Ns]
    for i, n in enumerate(Ns):
        for j, d in enumerate(Ds):
            if (n, d) in best and (n, d) in eager:
                s = eager[(n, d)] / best[(n, d)][0]
                grid[i][j] = math.log2(s)
                labels[i][j] = f"{s:.2f}x\n{best[(n, d)][1]}"
            elif (n, d) in best:
                labels[i][j] = f"{best[(n, d)][1]}\n{best[(n, d)][0]:.3g} ms\n(no eager)"
            else:
                labels[i][j] = "n/a"
    finite = [abs(v) for row in grid for v in row if not math.isnan(v)] or [1.0]
    lim = max(1.0, max(finite))
    fig, ax = plt.subplots(figsize=(1.6 * len(Ds) + 2.5, 1.0 * len(Ns) + 2.0))
    cmap = plt.get_cmap("RdYlGn").copy()
    cmap.set_bad("#dddddd")
    import numpy as np

    im = ax.imshow(np.ma.masked_invalid(np.array(grid, dtype=float)), cmap=cmap,
                   norm=TwoSlopeNorm(vmin=-lim, vcenter=0.0, vmax=lim), aspect="auto",
                   origin="lower")
    for i in range(len(Ns)):
        for j in range(len(Ds)):
            ax.text(j, i, labels[i][j], ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(Ds)), [str(d) for d in Ds])
    ax.set_yticks(range(len(Ns)), [str(n) for n in Ns])
    ax.set_xlabel("D (embedding dimension)")
    ax.set_ylabel("N (batch size)")
    r0 = rows[0]
    ax.set_title(f"{r0['loss']} {r0['mode']}: eager / best of ours  ({r0['dtype']}, "
                 f"{r0['precision']})\n{r0['device']}, torch {r0['torch']}, {r0['git_sha']}",
                 fontsize=9)
    cb = fig.colorbar(im, ax=ax)
    cb.set_label("log2 speedup (green: ours faster)")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return out_png, None


def default_png(loss, device_label, dtype_name, precision, mode):
    suffix = ""
    if dtype_name != "float32" or precision != "highest":
        suffix += f"_{dtype_name}" + ("_tf32" if dtype_name == "float32" and precision != "highest" else "")
    if mode != "fwdbwd":
        suffix += f"_{mode}"
    return os.path.join(HERE, "results", f"{loss}_{B.slug(device_label)}{suffix}_speedup.png")


def summarize(csv_path):
    rows = B.read_csv(csv_path)
    latest = {}
    for r in rows:  # the last row wins for each configuration
        key = (r["device"], r["loss"], r["N"], r["D"], r["dtype"], r["precision"], r["mode"],
               r["provider"])
        latest[key] = r
    hidden = [r for r in latest.values() if (r.get("error") or "").startswith(("unavailable", "skipped"))]
    out = sorted((r for r in latest.values() if r not in hidden), key=lambda r: (r["device"], r["loss"], r["dtype"],
                                                 r["precision"], r["mode"], int(r["N"]),
                                                 int(r["D"]), ALL_PROVIDERS.index(r["provider"])
                                                 if r["provider"] in ALL_PROVIDERS else 99))
    print(f"{csv_path}: {len(rows)} rows, latest per configuration:")
    headers = ["loss", "N", "D", "dtype", "prec", "mode", "provider", "median ms", "peak MB",
               "speedup", "check", "error"]
    body = [[r["loss"], r["N"], r["D"], r["dtype"], r["precision"], r["mode"], r["provider"],
             _f(r.get("median_ms"), ".3f"), _f(r.get("peak_extra_mb"), ".1f"),
             _f(r.get("speedup_vs_eager"), ".2f"), r.get("check") or "-",
             (r.get("error") or "")[:60]] for r in out]
    print(B.format_table(headers, body, align="lrrllllrrrll"))
    if hidden:
        print(f"({len(hidden)} unavailable/skipped row(s) not shown: "
              + ", ".join(sorted({r['provider'] for r in hidden})) + ")")
