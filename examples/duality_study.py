"""A small-scale look at two claims of Garrido et al. (ICLR 2023) on the digits:

1. sample-contrastive (NT-Xent, VICReg-ctr) and dimension-contrastive (VICReg) losses perform alike;
2. neither needs a huge embedding dimension D, nor a huge batch N (at this scale).

It sweeps D at a fixed N and N at a fixed D for the chosen losses, probes every run's encoder
(examples/common.py: linear and kNN probes on all labels and on 5 labels per class), and logs during
training the paper's quantities on the embeddings, via dk.duality_terms: L_c = Σ_{i≠j}(z_i·z_j)²
(sample side), L_nc = Σ_{k≠l}(z_:,k·z_:,l)² (dimension side), Σ_i‖z_i‖⁴ and Σ_k‖z_:,k‖⁴, which
satisfy L_nc + Σ_k‖z_:,k‖⁴ = L_c + Σ_i‖z_i‖⁴ (Thm 3.3). The embeddings are rescaled by one scalar
per step after centering each dimension, so that the mean squared row norm is 1 (the identity is
homogeneous of degree 4 and holds for any matrix, centered or not).

    python examples/duality_study.py --quick            # ~1.5 min on two CPU cores
    python examples/duality_study.py                    # full sweep, ~5 min on two CPU cores

Writes to --out (default examples/results/): accuracy_vs_dim.png, accuracy_vs_batch.png,
duality_terms.png and duality_study.json (every run's accuracies, timings and duality log).
Epochs are fixed across batch sizes (the paper's protocol), so smaller batches take more steps.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common as C  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--losses", nargs="+", default=["ntxent", "vicreg"], choices=sorted(C.LOSSES),
                   help="e.g. add vicreg_ctr, VICReg's sample-contrastive twin")
    p.add_argument("--dims", nargs="+", type=int, default=[16, 32, 64, 128, 256, 512])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[32, 64, 128, 256, 512])
    p.add_argument("--fixed-dim", type=int, default=128, help="D of the batch-size sweep")
    p.add_argument("--fixed-batch", type=int, default=256, help="N of the dimension sweep")
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--quick", action="store_true",
                   help="D in {16, 128, 512}, N in {64, 256}, 15 epochs (explicit options still win)")
    p.add_argument("--duality-every", type=int, default=2, help="log dk.duality_terms every this many steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=C.default_device())
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--replot", action="store_true", help="only redraw the figures from --out/duality_study.json")
    if p.parse_known_args(argv)[0].quick:  # smaller defaults; explicit options still win
        p.set_defaults(dims=[16, 128, 512], batch_sizes=[64, 256], epochs=15)
    return p.parse_args(argv)


PROBES = [("linear", "linear probe, all labels"), ("linear_5", "linear probe, 5 labels / class"),
          ("knn_5", "kNN probe, 5 labels / class")]


def _plot_sweep(runs, baseline, key, xlabel, fixed, path, losses):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PROBES), figsize=(5 * len(PROBES), 3.8))
    for ax, (metric, title) in zip(axes, PROBES):
        for loss in losses:
            rs = sorted((r for r in runs if r["loss"] == loss and r["sweep"] in (key, "both")), key=lambda r: r[key])
            if not rs:
                continue
            fam = C.LOSSES[loss].family
            ax.plot([r[key] for r in rs], [100 * r["trained"][metric] for r in rs], marker="o",
                    linestyle="-" if fam == "sample" else "--", label=f"{loss} ({fam})")
        ax.axhline(100 * baseline[metric], color="gray", linestyle=":", label="random encoder")
        ax.set_xscale("log", base=2)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("held-out accuracy (%)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(fixed, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_duality(runs, path):
    """Per reference run: the four terms over training; last panel: the effective rank of all."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs) + 1, figsize=(5 * (len(runs) + 1), 3.8), squeeze=False)
    axes = axes[0]
    for ax, r in zip(axes, runs):
        log = r["duality"]
        steps = [d["step"] for d in log]
        for k, lab, st in (("L_c", "L_c = Σ_{i≠j} (z_i·z_j)²  (sample side)", "-"),
                           ("L_nc", "L_nc = Σ_{k≠l} (z_:k·z_:l)²  (dimension side)", "-"),
                           ("rows4", "Σ_i ‖z_i‖⁴", "--"), ("cols4", "Σ_k ‖z_:k‖⁴", "--")):
            ax.plot(steps, [d[k] for d in log], st, label=lab)
        res = max(d["identity_residual"] for d in log)
        ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.set_title(f"{r['loss']} ({r['family']}-contrastive), D={r['dim']}, N={r['batch']}\n"
                     f"max |L_nc+Σ_k−L_c−Σ_i| / (L_c+Σ_i) = {res:.1e}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    ax = axes[-1]
    for r in runs:
        log = r["duality"]
        ax.plot([d["step"] for d in log], [d.get("effective_rank",
                                                 r["batch"] ** 2 / (d["L_c"] + d["rows4"])) for d in log],
                label=f"{r['loss']} (D={r['dim']})")
    ax.set_xlabel("training step")
    ax.set_title("effective rank N² / (L_c + Σ_i‖z_i‖⁴) = (Σσ²)² / Σσ⁴", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle("dk.duality_terms on view-1 embeddings during training (centered per dimension, "
                 "rescaled to mean ‖z_i‖² = 1)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_all(study: dict, out: str):
    """The three figures from a duality_study.json's content; returns their paths."""
    args, runs, baseline = study["args"], study["runs"], study["random_encoder"]
    paths = [os.path.join(out, p) for p in ("accuracy_vs_dim.png", "accuracy_vs_batch.png", "duality_terms.png")]
    _plot_sweep(runs, baseline, "dim", "embedding dimension D",
                f"batch N = {args['fixed_batch']}, {args['epochs']} epochs, seed {args['seed']}", paths[0],
                args["losses"])
    _plot_sweep(runs, baseline, "batch", "batch size N",
                f"embedding D = {args['fixed_dim']}, {args['epochs']} epochs, seed {args['seed']}", paths[1],
                args["losses"])
    _plot_duality([r for r in runs if r["sweep"] == "both"], paths[2])
    return paths


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if args.replot:
        with open(os.path.join(args.out, "duality_study.json")) as f:
            print("wrote", ", ".join(plot_all(json.load(f), args.out)))
        return
    data = C.load_digits_split()
    t_all = time.perf_counter()
    configs = []  # (loss, D, N, sweep)
    for loss in args.losses:
        seen = set()
        for d in args.dims:
            configs.append((loss, d, args.fixed_batch, "both" if d == args.fixed_dim else "dim"))
            seen.add((d, args.fixed_batch))
        if (args.fixed_dim, args.fixed_batch) not in seen:  # the reference run, shared by both sweeps
            configs.append((loss, args.fixed_dim, args.fixed_batch, "both"))
            seen.add((args.fixed_dim, args.fixed_batch))
        for n in args.batch_sizes:
            if (args.fixed_dim, n) not in seen:
                configs.append((loss, args.fixed_dim, n, "batch"))
    print(f"{len(configs)} runs of {args.epochs} epochs on {args.device}: losses {args.losses}, D {args.dims} "
          f"at N = {args.fixed_batch}, N {args.batch_sizes} at D = {args.fixed_dim}", flush=True)
    runs = []
    baseline = None
    for i, (loss, d, n, sweep) in enumerate(configs):
        res = C.train(loss, data, epochs=args.epochs, batch_size=n, dim=d, seed=args.seed, device=args.device,
                      progress=not args.no_progress, duality_every=args.duality_every,
                      desc=f"[{i + 1}/{len(configs)}] {loss} D={d} N={n}")
        acc = C.evaluate(res.model.encoder, data)
        if baseline is None:  # the random encoder depends on the seed only (and on D via the projector, unused)
            baseline = C.evaluate(res.random_model.encoder, data, recalibrate_bn=True)
        fin = res.duality[-1]
        runs.append({"loss": loss, "family": C.LOSSES[loss].family, "dim": d, "batch": n, "sweep": sweep,
                     "epochs": args.epochs, "steps": res.steps, "train_seconds": res.seconds, "trained": acc,
                     "final_loss": res.losses[-1],
                     # the whole log for the reference runs (plotted), the last entry for the others
                     "duality": res.duality if sweep == "both" else res.duality[-1:]})
        print(f"[{i + 1}/{len(configs)}] {loss:10s} D={d:4d} N={n:4d} {res.steps:4d} steps {res.seconds:6.1f}s  "
              + "  ".join(f"{k} {100 * acc[k]:.1f}%" for k, _ in PROBES)
              + f"  | final L_c {fin['L_c']:.3g} L_nc {fin['L_nc']:.3g}", flush=True)

    study = {"args": vars(args), "random_encoder": baseline, "runs": runs}
    with open(os.path.join(args.out, "duality_study.json"), "w") as f:
        json.dump(study, f, indent=1)
    paths = plot_all(study, args.out)

    print("\nrandom encoder: " + "  ".join(f"{k} {100 * baseline[k]:.1f}%" for k, _ in PROBES))
    print(f"{'loss':12s}{'D':>6s}{'N':>6s}" + "".join(f"{k:>11s}" for k, _ in PROBES) + f"{'train s':>9s}")
    for r in sorted(runs, key=lambda r: (r["loss"], r["sweep"] == "batch", r["dim"], r["batch"])):
        print(f"{r['loss']:12s}{r['dim']:6d}{r['batch']:6d}"
              + "".join(f"{100 * r['trained'][k]:10.1f}%" for k, _ in PROBES) + f"{r['train_seconds']:9.1f}")
    written = ", ".join(paths + [os.path.join(args.out, "duality_study.json")])
    print(f"\nwrote {written} ({time.perf_counter() - t_all:.0f}s)")


if __name__ == "__main__":
    main()
