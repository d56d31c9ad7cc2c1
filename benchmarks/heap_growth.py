#!/usr/bin/env python
"""Memory across runs in one process: is it kept (a leak), or kept by the allocator?

The full-size rehearsal (``benchmarks/rehearse.py``, chapter 6) saw each ViT-B+Δ run of the
learning-rate search peak about 2 GB higher than the one before, in the same kernel. This script
repeats one paper-size run :func:`spared_lib.training.fit` ``--runs`` times in one process, on the
her2st sections with H&E (``her2st_hne``, from the fixtures folder), and prints per run: its wall
time, its peak resident memory (``FitResult.extra['peak_memory_gb']``), the process's resident
memory after the result is dropped, and whether the model is still alive (a weak reference). It
does so twice, side by side, in two child processes:

- ``glibc default``: malloc as it comes. After a large block is freed, glibc raises its mmap
  threshold (up to 32 MB) and serves such blocks from a heap it rarely gives back;
- ``fixed mmap threshold``: ``MALLOC_MMAP_THRESHOLD_=131072``, which turns that adjustment off:
  every block of 128 KiB or more is its own mapping, returned when freed.

At the end each child calls ``malloc_trim(0)`` and prints the resident memory left. ``fit`` itself
calls :func:`spared_lib.training.memory.release_memory` (gc, then ``malloc_trim``) before it plans
the micro-batch, so each run starts from what is really in use.

    python benchmarks/heap_growth.py                       # ViT-B, 4 runs, batch 16: about 10 minutes on 2 cores
    python benchmarks/heap_growth.py --model shufflenet --runs 3
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

SETTINGS = {"glibc default": {}, "fixed mmap threshold": {"MALLOC_MMAP_THRESHOLD_": "131072"}}


def child(model: str, runs: int, batch: int, spots: int) -> None:
    """Run ``runs`` fits in this process; one JSON line per run, then one for the end."""
    import ctypes
    import gc
    import time
    import warnings
    import weakref

    import numpy as np
    import psutil

    from spared_lib.data import load_dataset, resolve_dataset
    from spared_lib.preprocessing import extract_patches, preprocess
    from spared_lib.training import fit

    warnings.filterwarnings("ignore")
    adata = preprocess(load_dataset(resolve_dataset("her2st_hne")), progress=False)
    # a subset of each split keeps a CPU run to a minute; the allocator sees the same tensors
    keep = np.concatenate([np.flatnonzero(adata.obs["split"].astype(str).to_numpy() == s)[:spots]
                           for s in ("train", "val", "test")])
    adata = adata[np.sort(keep)].copy()
    patches = extract_patches(adata, progress=False)
    proc = psutil.Process()
    for i in range(runs):
        t0 = time.perf_counter()
        result = fit(model, adata, steps=1, lr=1e-4, patches=patches, batch_size=batch, micro_batch_size=None,
                     size="paper", pretrained=None, device="cpu", progress=False, verbose=False)
        alive = weakref.ref(result.model)
        peak = result.extra["peak_memory_gb"]
        del result
        gc.collect()
        print(json.dumps({"run": i + 1, "wall_s": round(time.perf_counter() - t0, 1), "peak_gb": peak,
                          "rss_after_gb": round(proc.memory_info().rss / 2**30, 2),
                          "model_alive": alive() is not None}), flush=True)
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    print(json.dumps({"end": True, "rss_after_trim_gb": round(proc.memory_info().rss / 2**30, 2)}), flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="vit_b", help="a registered model (default vit_b)")
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--batch", type=int, default=16, help="batch of the one training step")
    ap.add_argument("--spots", type=int, default=48, help="spots kept per split")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.model, args.runs, args.batch, args.spots)
        return 0
    if not sys.platform.startswith("linux"):
        sys.exit("heap_growth.py measures glibc's malloc: run it on Linux")
    cmd = [sys.executable, __file__, "--child", "--model", args.model, "--runs", str(args.runs),
           "--batch", str(args.batch), "--spots", str(args.spots)]
    print(f"{args.model} at paper size, batch {args.batch}, 1 step, {args.runs} runs in one process "
          f"(her2st_hne, {args.spots} spots per split)")
    print(f"{'allocator':22s} {'run':>4s} {'wall':>7s} {'peak':>9s} {'RSS after':>10s}  model alive")
    for label, extra in SETTINGS.items():
        proc = subprocess.run(cmd, env={**os.environ, **extra}, capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parents[1])
        if proc.returncode:
            sys.exit(f"{label}: the child failed:\n{proc.stderr[-3000:]}")
        for line in proc.stdout.splitlines():
            if not line.startswith("{"):
                continue
            row = json.loads(line)
            if "end" in row:
                print(f"{label:22s} after malloc_trim: {row['rss_after_trim_gb']:.2f} GiB")
            else:
                print(f"{label:22s} {row['run']:4d} {row['wall_s']:6.0f}s {row['peak_gb']:7.2f} GiB "
                      f"{row['rss_after_gb']:6.2f} GiB  {row['model_alive']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
