"""Train a small CNN on the scikit-learn digits with one self-supervised loss of duality_kernels,
then probe its frozen features on a held-out split, next to the same probes on a randomly
initialized copy of the encoder (the baseline to beat) and on raw pixels. RankMe (the effective
rank of the embeddings, ``dk.RankMeMonitor``) is logged every epoch and plotted (``--plot``).

    python examples/train_ssl.py --loss vicreg
    python examples/train_ssl.py --loss ntxent --epochs 100 --dim 256 --device cuda

About 30 s per loss on two CPU cores with the defaults (several times more on a heavily shared
machine). Runs on a GPU with --device cuda, the default when one is visible (not measured yet).
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common as C  # noqa: E402
from common import dk  # noqa: E402


def parse_args(argv=None):
    p = C.training_args(__doc__, "global batch (pairs of views)")
    p.add_argument("--device", default=C.default_device())
    p.add_argument("--labels-per-class", type=int, default=5, help="for the low-label probes (0: skip)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    p.add_argument("--plot", metavar="PATH", default=None,
                   help="RankMe per epoch as a PNG (default examples/results/rankme_<loss>.png; '' to skip)")
    return p.parse_args(argv)


def rankme_logger(loss_fn, steps_per_epoch: int, log: list):
    """``loss_fn`` (z1, z2, gather) -> loss, feeding view 1's projector outputs to a RankMeMonitor
    and appending the RankMe of each epoch's embeddings to ``log`` (computed and reset at the end
    of every epoch: ~1,000 rows here, under the monitor's 25,600)."""
    monitor = dk.RankMeMonitor()
    calls = [0]

    def fn(z1, z2, gather):
        monitor.update(z1)
        calls[0] += 1
        if calls[0] % steps_per_epoch == 0:
            log.append(float(monitor.compute()))
            monitor.reset()
        return loss_fn(z1, z2, gather)

    return fn


def plot_rankme(values, loss: str, dim: int, path: str) -> bool:
    """RankMe per epoch as a PNG; False (and a note) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no RankMe plot")
        return False
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(range(1, len(values) + 1), values, marker="o", markersize=3)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"RankMe (of D = {dim})")
    ax.set_title(f"{loss}: effective rank of the projector output")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def run(args) -> dict:
    t0 = time.perf_counter()
    data = C.load_digits_split()
    spec = C.LOSSES[args.loss]
    print(f"{args.loss} ({spec.family}-contrastive; {spec.hparams}) on {args.device}: "
          f"{args.epochs} epochs, batch {args.batch_size}, D = {args.dim}, seed {args.seed}", flush=True)
    rankme = []
    loss_fn = rankme_logger(C.make_loss(args.loss, args.dim), data.x_train.shape[0] // args.batch_size, rankme)
    res = C.train(args.loss, data, epochs=args.epochs, batch_size=args.batch_size, dim=args.dim, lr=args.lr,
                  width=args.width, seed=args.seed, device=args.device, progress=not args.no_progress,
                  loss_fn=loss_fn)
    lpc = args.labels_per_class
    trained = C.evaluate(res.model.encoder, data, per_class=lpc)
    random = C.evaluate(res.random_model.encoder, data, recalibrate_bn=True, per_class=lpc)
    pixels = C.pixel_baseline(data.to(args.device), per_class=lpc)
    wall = time.perf_counter() - t0
    out = {"loss": args.loss, "family": spec.family, "hparams": spec.hparams, "epochs": args.epochs,
           "batch_size": args.batch_size, "dim": args.dim, "seed": args.seed, "device": args.device,
           "steps": res.steps, "train_seconds": res.seconds, "wall_seconds": wall,
           "final_loss": res.losses[-1], "rankme": rankme, "trained": trained, "random": random, "pixels": pixels}
    cols = list(trained)
    names = {"linear": "linear (all labels)", "knn": "kNN (all labels)",
             f"linear_{lpc}": f"linear ({lpc}/class)", f"knn_{lpc}": f"kNN ({lpc}/class)"}
    probes = f"; {lpc}-labels-per-class probes: mean of 10 label draws)" if lpc else ")"
    print(f"\nheld-out accuracy ({data.x_test.shape[0]} images" + probes)
    print(f"{'':22s}" + "".join(f"{names[c]:>22s}" for c in cols))
    for row, acc in (("trained encoder", trained), ("random encoder", random), ("raw pixels", pixels)):
        print(f"{row:22s}" + "".join(f"{100 * acc[c]:21.1f}%" for c in cols))
    print(f"\nRankMe of the projector output (D = {args.dim}) per epoch: " + " ".join(f"{r:.1f}" for r in rankme))
    plot = args.plot if args.plot is not None else os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                                  f"rankme_{args.loss}.png")
    if plot and plot_rankme(rankme, args.loss, args.dim, plot):
        print(f"RankMe plot: {plot}")
    print(f"\ntrain {res.seconds:.1f}s ({res.steps} steps, final loss {res.losses[-1]:.4g}), total {wall:.1f}s")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


def main(argv=None):
    return run(parse_args(argv))


if __name__ == "__main__":
    main()
