"""The train_ssl.py recipe under DistributedDataParallel, with gather_distributed=True.

    torchrun --nproc_per_node=2 examples/ddp_train.py --loss vicreg           # CPU: gloo
    torchrun --nproc_per_node=8 examples/ddp_train.py --loss ntxent           # GPUs: nccl, one per rank

--batch-size is the GLOBAL batch: every rank draws the same permutation of the training images and
keeps its own contiguous batch_size / world_size rows of each batch (equal shard sizes, incomplete
batches dropped), augments them with its own random stream, and calls the loss with
gather_distributed=True. The losses then see the global batch: VICReg / Barlow statistics over all
ranks' rows, NT-Xent negatives from every rank. With duality_kernels' gradient-summing collectives,
DDP's 1/W averaging of the gradients gives exactly the single-process gradient of the global-batch
loss (see docs/spec.md §5), so the only difference from train_ssl.py at the same global batch
is BatchNorm: on GPU the model's BatchNorm layers become SyncBatchNorm (statistics over the global
batch too); on CPU PyTorch has no SyncBatchNorm under DDP, so each rank normalizes its own shard
(what SimCLR's per-device BatchNorm does).

Rank 0 prints the progress and the final probe accuracies (on the trained encoder and on a randomly
initialized copy). Without torchrun (no RANK in the environment) it runs as a single process.
"""

from __future__ import annotations

import datetime
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn as nn  # noqa: E402

import common as C  # noqa: E402


def parse_args(argv=None):
    p = C.training_args(__doc__, "GLOBAL batch, divisible by the number of ranks")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: one GPU per rank (nccl) when there are enough, else CPU (gloo)")
    p.add_argument("--labels-per-class", type=int, default=5)
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    distributed = "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    nlocal = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.device_count() >= nlocal > 0
                                         and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    else:
        device = "cpu"
        # torchrun sets OMP_NUM_THREADS=1; otherwise share the cores between the local ranks
        if "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // nlocal))
    if distributed:
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=10))
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    if args.batch_size % world:
        raise SystemExit(f"--batch-size {args.batch_size} must be divisible by the {world} ranks")

    def wrap(model: nn.Module) -> nn.Module:
        if not distributed:
            return model
        if use_cuda:  # PyTorch's SyncBatchNorm under DDP is GPU-only
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            return nn.parallel.DistributedDataParallel(model, device_ids=[local_rank])
        return nn.parallel.DistributedDataParallel(model)

    spec = C.LOSSES[args.loss]
    if rank == 0:
        print(f"{args.loss} ({spec.family}-contrastive; {spec.hparams}) on {world} rank(s), "
              f"{'nccl' if use_cuda else 'gloo'} / {device}: {args.epochs} epochs, global batch {args.batch_size} "
              f"({args.batch_size // world} per rank), D = {args.dim}, gather_distributed={distributed}", flush=True)
    data = C.load_digits_split()
    t0 = time.perf_counter()
    res = C.train(args.loss, data, epochs=args.epochs, batch_size=args.batch_size, dim=args.dim, lr=args.lr,
                  width=args.width, seed=args.seed, device=device, progress=not args.no_progress,
                  model_wrapper=wrap)
    if rank == 0:
        # DDP keeps the replicas identical: rank 0's copy is the model. Probe a plain (non-Sync)
        # BatchNorm copy so that nothing here waits for the other ranks.
        trained_enc = C.SSLModel(args.dim, args.width).to(device)
        trained_enc.load_state_dict(res.model.state_dict())
        lpc = args.labels_per_class
        trained = C.evaluate(trained_enc.encoder, data, per_class=lpc)
        random = C.evaluate(res.random_model.encoder, data, recalibrate_bn=True, per_class=lpc)
        cols = list(trained)
        print("\nheld-out accuracy" + (f" ({lpc}-labels-per-class probes: mean of 10 label draws)" if lpc else ""))
        print(f"{'':18s}" + "".join(f"{c:>12s}" for c in cols))
        for row, acc in (("trained encoder", trained), ("random encoder", random)):
            print(f"{row:18s}" + "".join(f"{100 * acc[c]:11.1f}%" for c in cols))
        print(f"\ntrain {res.seconds:.1f}s ({res.steps} steps, final loss on rank 0 {res.losses[-1]:.4g}), "
              f"total {time.perf_counter() - t0:.1f}s", flush=True)
    if distributed:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
