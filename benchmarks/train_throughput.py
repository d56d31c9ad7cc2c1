#!/usr/bin/env python
"""Training throughput (patches/s, forward + backward + optimiser step) of each model, and its size.

For every model of the registry (default: the four patch models of chapter 4) this times
full training steps on random 224-px patches on the CPU, and on the GPU when one is visible
(mixed precision, as :func:`spared_lib.training.fit` trains there), and prints the number of
trainable parameters of our build next to the original's (the paper's Fig. 4b).

    python benchmarks/train_throughput.py                        # patch models, paper size, CPU (+GPU)
    python benchmarks/train_throughput.py --size small --batch 8
    python benchmarks/train_throughput.py --models all --steps 5 --devices cuda

Slide models (``batching == 'slide'``) are timed on one crop of ``--batch`` spots with a ring
graph; exemplar models are prepared on random training targets first.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from spared_lib.models import MODELS, PATCH_MODELS, build_model, count_parameters
from spared_lib.models.base import FitContext


def _batch(n: int, g: int, device: str, size: int) -> dict:
    idx = torch.arange(n)
    side = int(np.ceil(np.sqrt(n)))
    grid = torch.stack([idx // side, idx % side], 1)
    # a ring graph through the batch, both directions: enough for graph layers to run
    src = torch.cat([idx, (idx + 1) % n])
    dst = torch.cat([(idx + 1) % n, idx])
    batch = {"image": torch.randn(n, 3, size, size), "target": torch.randn(n, g),
             "mask": torch.rand(n, g) > 0.2, "index": idx, "slide": torch.zeros(n, dtype=torch.long),
             "grid": grid, "xy": grid.float() * 100, "edge_index": torch.stack([src, dst])}
    return {k: v.to(device) for k, v in batch.items()}


def _prepare(model, n_genes: int, device: str, size: int) -> None:
    """Give exemplar / retrieval models a small random training set to remember."""
    n = 64
    rng = np.random.default_rng(0)
    patches = rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8)
    neighbors = np.full((n, 7), -1, np.int64)
    neighbors[:, 0] = np.arange(n)
    neighbors[:, 1] = (np.arange(n) + 1) % n

    @torch.no_grad()
    def encode(module, index):
        from spared_lib.training.data import normalise

        return torch.cat([module(normalise(torch.from_numpy(patches[index[i:i + 16]]).to(device))).float().cpu()
                          for i in range(0, len(index), 16)])

    ctx = FitContext(adata=None, patches=patches, target=rng.normal(size=(n, n_genes)).astype(np.float32),
                     mask=np.ones((n, n_genes), bool), train_index=np.arange(n), neighbors=neighbors,
                     device=torch.device(device), encode=encode)
    model.prepare(ctx)


def time_model(name: str, device: str, size: str, batch: int, steps: int, n_genes: int, image: int) -> dict:
    torch.manual_seed(0)
    model = build_model(name, n_genes, pretrained=None, size=size).to(device)
    try:
        _prepare(model, n_genes, device, image)
    except Exception as err:  # a model whose prepare needs real data: time it unprepared, say so
        print(f"  ({name}: prepare skipped: {type(err).__name__}: {err})")
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    b = _batch(batch, n_genes, device, image)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else torch.autocast("cpu", enabled=False)

    def step():
        opt.zero_grad(set_to_none=True)
        with amp:
            pred = model(b)
        loss = model.loss(b, pred.float())
        loss.backward()
        opt.step()

    step()  # warm-up (allocations, cuDNN autotuning)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    out = {"model": MODELS[name].display, "device": device, "size": size, "batch": batch,
           "patches/s": batch * steps / dt, "s/step": dt / steps, "params": count_parameters(model),
           "original params": MODELS[name].original_params}
    if device == "cuda":
        out["peak GB"] = torch.cuda.max_memory_allocated() / 1e9
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="patch", help="'patch', 'all', or comma-separated registry names")
    ap.add_argument("--size", default="paper", choices=["paper", "small"])
    ap.add_argument("--batch", type=int, default=None, help="spots per step (default 16 on CPU, 256 on GPU)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    ap.add_argument("--genes", type=int, default=128)
    ap.add_argument("--image", type=int, default=224)
    ap.add_argument("--devices", default="auto", help="'auto' (cpu, and cuda if present), 'cpu' or 'cuda'")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = (list(PATCH_MODELS) if args.models == "patch" else list(MODELS) if args.models == "all"
             else [m.strip() for m in args.models.split(",")])
    devices = (["cpu"] + (["cuda"] if torch.cuda.is_available() else [])) if args.devices == "auto" else [args.devices]
    rows = []
    for device in devices:
        batch = args.batch or (256 if device == "cuda" else 16)
        print(f"# {device}: {torch.cuda.get_device_name() if device == 'cuda' else f'{torch.get_num_threads()} CPU threads'}"
              f", batch {batch}, {args.steps} timed steps, size={args.size}, {args.image}-px patches, G={args.genes}")
        for name in names:
            try:
                r = time_model(name, device, args.size, batch, args.steps, args.genes, args.image)
            except torch.OutOfMemoryError:
                print(f"  {name}: out of GPU memory at batch {batch}")
                torch.cuda.empty_cache()
                continue
            rows.append(r)
            extra = f"  peak {r['peak GB']:.1f} GB" if "peak GB" in r else ""
            orig = f"{r['original params']:>13,}" if r["original params"] else f"{'?':>13}"
            print(f"  {r['model']:<11} {r['patches/s']:9.1f} patches/s  {r['s/step']:8.3f} s/step  "
                  f"params {r['params']:>13,}  original {orig}{extra}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
