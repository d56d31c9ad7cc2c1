#!/usr/bin/env python
"""Training memory and work of each model at paper size: what one step needs, per sample, on a CPU.

For every registered model, built at paper size (random weights: memory does not depend on them),
this measures in its own process (so that peaks do not mix):

- ``params``: trainable parameters; ``weights_gb``: every parameter and buffer;
- ``fixed_gb``: what a training step adds whatever the batch — gradients, optimiser state and the
  optimiser step's temporaries
  (:func:`spared_lib.training.memory.fixed_bytes`);
- ``act_gb_per_sample``: activation bytes autograd keeps per sample (per spot for slide models, at
  the size of a her2st section), counted by :func:`spared_lib.training.memory.saved_bytes` in fp32;
- ``step_peak_gb`` (measured): the process's peak resident memory during one real training step
  (forward, backward, Adam step) at ``--step-batch`` samples, next to ``step_model_gb``, what the
  two figures above predict for it (weights + fixed + activations + the process before the step);
- ``peak_256_gb``: the predicted peak of one fp32 step at the paper's batch of 256 (slide models:
  one her2st slide), i.e. whether batch 256 fits without micro-batches;
- ``gflop_per_sample``: forward + backward FLOPs per sample (``torch.utils.flop_counter``);
  and SpaCKLE's FLOPs per training step (the completed targets train it first).

GPU figures (bf16 activations, cuDNN workspaces, the allocator's real peak) need a GPU: none was
lent when this file was committed. The script measures them when CUDA is visible (``--devices
cuda``) and the chapter says which were measured where.

    python benchmarks/train_memory.py                      # all ten models, writes the results file
    python benchmarks/train_memory.py --models vit_b,stnet --no-save

Writes ``spared_lib/resources/results/train_memory.json`` (shown by ``notebooks/06_benchmark.py``).
Takes about 10 minutes on 2 CPU cores; it needs about 20 GB of free memory for paper-size Hist2ST
(its real step is skipped, and said so, where less is free).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: Spots of the largest her2st section with H&E (C2), the slide a slide model sees in chapter 6.
HER2ST_SLIDE_SPOTS = 187


def _context(n_genes: int, n: int, device: str):
    """What ``prepare`` sees in ``fit``, for ``n`` random spots on two hex slides: an AnnData with raw
    counts (Hist2ST's ZINB term), slides (EGN/EGGN draw exemplars from other slides), grid positions
    (SEPAL), random 224-px patches and the frozen-feature encoder."""
    import anndata
    import numpy as np
    import pandas as pd
    import torch

    from spared_lib.models.base import FitContext
    from spared_lib.preprocessing import first_ring
    from spared_lib.training import normalise

    rng = np.random.default_rng(0)
    half = n // 2
    side = int(np.ceil(np.sqrt(half)))
    r, c = np.divmod(np.arange(half), side)
    rows, cols = np.tile(r, 2), np.tile(2 * c + r % 2, 2)
    obs = pd.DataFrame({"slide_id": pd.Categorical(np.repeat(["A", "B"], half)), "split": "train",
                        "array_row": rows, "array_col": cols}, index=[f"s{i}" for i in range(2 * half)])
    adata = anndata.AnnData(X=np.zeros((2 * half, n_genes), np.float32), obs=obs)
    adata.obsm["spatial"] = np.stack([cols * 50.0, rows * 86.6], 1)
    adata.uns["dataset"] = {"grid": "hex"}
    adata.layers["counts"] = rng.poisson(5.0, (2 * half, n_genes)).astype(np.float32)
    patches = rng.integers(0, 255, (2 * half, 224, 224, 3), dtype=np.uint8)
    target = rng.normal(8, 1, (2 * half, n_genes)).astype(np.float32)

    @torch.no_grad()
    def encode(module, index):
        return torch.cat([module(normalise(torch.from_numpy(patches[index[i:i + 16]]).to(device))).float().cpu()
                          for i in range(0, len(index), 16)])

    return FitContext(adata=adata, patches=patches, target=target, mask=np.ones_like(target, bool),
                      train_index=np.arange(2 * half), neighbors=first_ring(adata), device=torch.device(device),
                      encode=encode)


def measure(name: str, n_genes: int, step_batch: int, slide_spots: int, device: str) -> dict:
    """All figures of one model (runs in a child process)."""
    import numpy as np
    import psutil
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    sys.path.insert(0, str(HERE))
    from train_throughput import _batch

    from spared_lib.engine import autocast
    from spared_lib.models import MODELS, build_model, count_parameters
    from spared_lib.training.memory import PeakMemory, fixed_bytes, saved_bytes

    torch.manual_seed(0)
    proc = psutil.Process()
    model = build_model(name, n_genes, pretrained=None, size="paper").to(device)
    slide = model.batching == "slide"
    model.prepare(_context(n_genes, max(2 * slide_spots, 64), device))
    model.train()
    weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    fixed = fixed_bytes(model, device)
    # activations: two sizes for patch models (linear in the batch); for slide models three small
    # crops fitted by a + b·n + c·n² (attention over spots is quadratic), extrapolated to a slide,
    # since a whole paper-size Hist2ST slide does not fit this machine's memory
    sizes = (8, 16, 32) if slide else (2, 4)
    used = [saved_bytes(model, _batch(n, n_genes, device, 224), device) for n in sizes]
    coef = np.polyfit(sizes, used, len(sizes) - 1)

    def act(n):
        return max(float(np.polyval(coef, n)), 0.0)

    base = act(0)
    ref = slide_spots if slide else 4
    per = (act(ref) - base) / ref

    # work per sample: forward + backward of the loss
    b = sizes[-1]
    batch = _batch(b, n_genes, device, 224)
    with FlopCounterMode(display=False) as flops:
        with autocast(device):
            pred = model(batch)
        model.loss(batch, pred.float()).backward()
    gflop = flops.get_total_flops() / b / 1e9
    model.zero_grad(set_to_none=True)

    out = {"model": name, "display": MODELS[name].display, "batching": model.batching, "device": device,
           "params": count_parameters(model), "weights_gb": weights / 2**30, "fixed_gb": fixed / 2**30,
           "act_gb_per_sample": per / 2**30, "act_gb_base": base / 2**30, "gflop_per_sample": gflop,
           "act_probe_sizes": list(sizes),
           "sample": "spot of a her2st slide" if slide else "224-px patch"}
    n256 = slide_spots if slide else 256
    out["peak_256_gb"] = (weights + fixed + act(n256)) / 2**30
    out["peak_256_batch"] = f"one slide of {slide_spots} spots" if slide else "256 patches"

    # one real step at a small batch, measured (skipped where the machine cannot afford it)
    n = step_batch if not slide else 16
    free = psutil.virtual_memory().available
    need = weights + fixed + act(n)
    if device == "cpu" and need > 0.6 * free:
        out["step_skipped"] = f"needs ~{need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free"
        return out
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    batch = _batch(n, n_genes, device, 224)
    before = proc.memory_info().rss if device == "cpu" else torch.cuda.memory_allocated()
    with PeakMemory(device) as peak:
        with autocast(device):
            pred = model(batch)
        model.loss(batch, pred.float()).backward()
        opt.step()
    out["step_batch"] = n
    out["step_peak_gb"] = peak.peak_gb
    # before the step the process already held the weights (and, on CPU, Python and the libraries)
    out["step_model_gb"] = (before + fixed + act(n)) / 2**30
    return out


def measure_spackle(device: str) -> dict:
    """Forward + backward FLOPs of one SpaCKLE training step at the library's sizes (batch 256), on
    the her2st sections with H&E (32 genes): the FLOPs of a 4-step and a 2-step run, each validated
    once at its end, differ by two training steps."""
    from torch.utils.flop_counter import FlopCounterMode

    from spared_lib import data, preprocessing
    from spared_lib.completion import train_spackle

    adata = preprocessing.preprocess(data.load_dataset(data.resolve_dataset("her2st_hne"), load_images=False),
                                     progress=False)
    counts = []
    for steps in (2, 4):
        with FlopCounterMode(display=False) as flops:
            train_spackle(adata, steps=steps, val_every=steps, device=device, progress=False)
        counts.append(flops.get_total_flops())
    return {"model": "spackle", "display": "SpaCKLE", "genes": int(adata.n_vars),
            "gflop_per_step": (counts[1] - counts[0]) / 2 / 1e9}


def run_one(name: str, args) -> dict:
    cmd = [sys.executable, __file__, "--one", name, "--genes", str(args.genes), "--step-batch", str(args.step_batch),
           "--slide-spots", str(args.slide_spots), "--devices", args.devices]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    if res.returncode != 0 or not lines:
        return {"model": name, "error": (res.stderr.strip().splitlines() or ["no output"])[-1][:300]}
    return json.loads(lines[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="all", help="'all' (the ten models and SpaCKLE) or comma-separated names "
                                                     "(registry names, 'spackle')")
    ap.add_argument("--update", action="store_true",
                    help="re-measure only --models and keep the other rows of the committed results file")
    ap.add_argument("--genes", type=int, default=32, help="predicted genes (her2st: 32)")
    ap.add_argument("--step-batch", type=int, default=4, help="samples of the measured real step")
    ap.add_argument("--slide-spots", type=int, default=HER2ST_SLIDE_SPOTS)
    ap.add_argument("--devices", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--no-save", action="store_true", help="print only; do not write the results file")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        res = (measure_spackle(args.devices) if args.one == "spackle"
               else measure(args.one, args.genes, args.step_batch, args.slide_spots, args.devices))
        print(json.dumps(res), flush=True)
        return 0

    from spared_lib.models import MODELS

    names = [*MODELS, "spackle"] if args.models == "all" else [m.strip() for m in args.models.split(",")]
    want_spackle = "spackle" in names
    names = [n for n in names if n != "spackle"]
    rows = []
    print(f"{'model':<11} {'params':>13} {'weights':>8} {'fixed':>7} {'act/sample':>11} {'GFLOP':>7} "
          f"{'peak@256':>9} {'step(meas.)':>12} {'step(model)':>12}  (GiB, fp32, {args.devices})", flush=True)
    for name in names:
        r = run_one(name, args)
        rows.append(r)
        if "error" in r:
            print(f"{name:<11} failed: {r['error']}", flush=True)
            continue
        meas = (f"{r['step_peak_gb']:8.2f} @{r['step_batch']:<3}" if "step_peak_gb" in r else "   skipped   ")
        model = f"{r['step_model_gb']:12.2f}" if "step_model_gb" in r else f"{'':>12}"
        print(f"{r['display']:<11} {r['params']:>13,} {r['weights_gb']:8.2f} {r['fixed_gb']:7.2f} "
              f"{r['act_gb_per_sample']:11.4f} {r['gflop_per_sample']:7.1f} {r['peak_256_gb']:9.1f} {meas} {model}"
              + (f"  ({r['step_skipped']})" if "step_skipped" in r else ""), flush=True)
    spackle = None
    if want_spackle:
        spackle = run_one("spackle", args)
        print(f"SpaCKLE: {spackle.get('gflop_per_step', float('nan')):.0f} GFLOP per training step (batch 256)"
              + (f"  failed: {spackle['error']}" if "error" in spackle else ""), flush=True)
    if not args.no_save:
        from spared_lib.resources import load_result, save_result

        results = {"genes": args.genes, "slide_spots": args.slide_spots, "step_batch": args.step_batch,
                   "device": args.devices, "models": rows, "spackle": spackle}
        command = f"python benchmarks/train_memory.py --devices {args.devices}"
        if args.update:  # keep the committed rows of what was not measured now
            old = load_result("train_memory")
            done = {r["model"] for r in rows}
            results["models"] = [r for r in old["results"]["models"] if r["model"] not in done] + rows
            results["spackle"] = spackle if want_spackle else old["results"].get("spackle")
            results["updated"] = {"rows": sorted(done | ({"spackle"} if want_spackle else set())),
                                  "earlier_rows_from": old["provenance"]}
            command += f" --models {args.models} --update"
        path = save_result("train_memory", results, command=command)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
