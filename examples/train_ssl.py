"""Train a small CNN on the scikit-learn digits with one self-supervised loss of duality_kernels,
then probe its frozen features on a held-out split, next to the same probes on a randomly
initialized copy of the encoder (the baseline to beat) and on raw pixels.

    python examples/train_ssl.py --loss vicreg
    python examples/train_ssl.py --loss ntxent --epochs 100 --dim 256 --device cuda

About 30 s per loss on two CPU cores with the defaults (several times more on a heavily shared
machine). Runs on a GPU with --device cuda, the default when one is visible (not measured yet).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common as C  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--loss", required=True, choices=sorted(C.LOSSES))
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=256, help="global batch (pairs of views)")
    p.add_argument("--dim", type=int, default=128, help="embedding (projector output) dimension D")
    p.add_argument("--width", type=int, default=32, help="CNN width (features = 4·width)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=C.default_device())
    p.add_argument("--labels-per-class", type=int, default=5, help="for the low-label probes (0: skip)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    return p.parse_args(argv)


def run(args) -> dict:
    t0 = time.perf_counter()
    data = C.load_digits_split()
    spec = C.LOSSES[args.loss]
    print(f"{args.loss} ({spec.family}-contrastive; {spec.hparams}) on {args.device}: "
          f"{args.epochs} epochs, batch {args.batch_size}, D = {args.dim}, seed {args.seed}", flush=True)
    res = C.train(args.loss, data, epochs=args.epochs, batch_size=args.batch_size, dim=args.dim, lr=args.lr,
                  width=args.width, seed=args.seed, device=args.device, progress=not args.no_progress)
    lpc = args.labels_per_class
    trained = C.evaluate(res.model.encoder, data, per_class=lpc)
    random = C.evaluate(res.random_model.encoder, data, recalibrate_bn=True, per_class=lpc)
    pixels = C.pixel_baseline(data.to(args.device), per_class=lpc)
    wall = time.perf_counter() - t0
    out = {"loss": args.loss, "family": spec.family, "hparams": spec.hparams, "epochs": args.epochs,
           "batch_size": args.batch_size, "dim": args.dim, "seed": args.seed, "device": args.device,
           "steps": res.steps, "train_seconds": res.seconds, "wall_seconds": wall,
           "final_loss": res.losses[-1], "trained": trained, "random": random, "pixels": pixels}
    cols = list(trained)
    names = {"linear": "linear (all labels)", "knn": "kNN (all labels)",
             f"linear_{lpc}": f"linear ({lpc}/class)", f"knn_{lpc}": f"kNN ({lpc}/class)"}
    print(f"\nheld-out accuracy ({data.x_test.shape[0]} images" + (f"; {lpc}-labels-per-class probes: mean of 10 label draws)" if lpc else ")"))
    print(f"{'':22s}" + "".join(f"{names[c]:>22s}" for c in cols))
    for row, acc in (("trained encoder", trained), ("random encoder", random), ("raw pixels", pixels)):
        print(f"{row:22s}" + "".join(f"{100 * acc[c]:21.1f}%" for c in cols))
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
