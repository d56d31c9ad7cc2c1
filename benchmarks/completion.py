"""Completion benchmark (paper Fig. 3): SpaCKLE vs the adaptive median vs stLearn's SME.

On every real fixture with a spatial grid (``visium_mouse_cytassist``, ``her2st`` C2-C4) and on
synthetic data, hide 10 % ... 70 % of the observed entries at random (several seeds), complete
them with each method and print the MSE on the hidden entries of held-out spots, SpaCKLE's
relative MSE reduction against the median (the paper reports 82.5 % over SpaRED) and against SME,
and the time to train and to complete per 1,000 spots.

    .venv/bin/python benchmarks/completion.py                    # CPU-sized defaults
    .venv/bin/python benchmarks/completion.py --size paper --steps 10000 --device cuda

Single-slide datasets have no validation or test slide: the 20 % of spots with the largest x
coordinate become the scored ``test`` spots (a spatial hold-out), for every method alike.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SIZES = {  # model and batch per size; 'paper' is the original architecture
    "paper": dict(d_model=128, n_layers=2, n_heads=1, dim_feedforward=2048, batch_size=256),
    "small": dict(d_model=64, n_layers=2, n_heads=1, dim_feedforward=256, batch_size=128),
}


def spatial_holdout(adata, fraction: float = 0.2):
    """Mark the right-most ``fraction`` of spots as ``test`` when the data has no val/test spots."""
    split = adata.obs["split"].astype(str)
    if split.isin(["val", "test"]).any():
        return adata, "given"
    x = adata.obsm["spatial"][:, 0]
    split = np.where(x > np.quantile(x, 1 - fraction), "test", "train")
    adata.obs["split"] = pd.Categorical(split)
    return adata, f"spatial hold-out ({fraction:.0%} right-most spots)"


def load(name: str, seed: int):
    from spared_lib import data, preprocessing

    if name == "synthetic":
        import tempfile

        info = data.make_synthetic_dataset(Path(tempfile.mkdtemp()) / "synthetic", n_slides=3,
                                           n_spots=600, seed=seed)
        raw, overrides = data.load_dataset(info), {}
    else:
        raw = data.load_dataset(data.fixture_dataset(name))
        overrides = {}
    try:
        adata = preprocessing.preprocess(raw, **overrides)
    except ValueError as err:  # too few genes pass the filters for the dataset's n_genes
        n = int(str(err).split(" genes left")[0].split()[-1])
        n_genes = max(8, (n * 3) // 4)
        print(f"  {name}: {err}; using n_genes={n_genes}")
        adata = preprocessing.preprocess(raw, n_genes=n_genes)
    try:
        patches = preprocessing.extract_patches(adata, size=224)
    except Exception as err:  # no full-resolution image (e.g. the CytAssist fixture)
        print(f"  {name}: no patches ({type(err).__name__}: {err}); SME uses mean colour/texture")
        patches = None
    return adata, patches


def morphology(adata, patches, device):
    from spared_lib.completion import colour_features, image_features

    if patches is not None:
        feats, source = image_features(patches, device=device)
        return feats, source
    feats = colour_features(adata)
    return feats, "mean colour/texture of the slide image" if feats is not None else "none"


def run(args) -> pd.DataFrame:
    import torch

    from spared_lib import completion

    if args.threads:
        torch.set_num_threads(args.threads)
    rows, timing = [], []
    for name in args.datasets:
        t0 = time.perf_counter()
        try:
            adata, patches = load(name, args.seed)
        except FileNotFoundError as err:
            print(f"skip {name}: {err}")
            continue
        adata, holdout = spatial_holdout(adata)
        n = adata.n_obs
        print(f"{name}: {n} spots x {adata.n_vars} genes, scored spots: {holdout} "
              f"(loaded in {time.perf_counter() - t0:.0f} s)", flush=True)
        feats, source = morphology(adata, patches, args.device)
        print(f"  SME morphology: {source}", flush=True)
        size = dict(SIZES[args.size])
        batch = size.pop("batch_size")
        t0 = time.perf_counter()
        model, hist = completion.train_spackle(adata, steps=args.steps, batch_size=batch, seed=args.seed,
                                               device=args.device, progress=False, **size)
        t_train = time.perf_counter() - t0
        per = {}
        for frac in args.fractions:
            for seed in args.seeds:
                for method in ("spackle", "median", "sme"):
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", RuntimeWarning)
                        res = completion.evaluate_completion(adata, method, frac, seed=seed, model=model,
                                                             morphology=feats)
                    rows.append(dict(dataset=name, method=method, mask_fraction=frac, seed=seed,
                                     MSE=res["MSE"], MAE=res["MAE"], PCC_gene=res["PCC-Gene"],
                                     n_scored=res["n_scored"]))
                    per.setdefault(method, []).append(res["time_s"])
        timing.append(dict(dataset=name, spots=n, steps=args.steps, train_s=t_train,
                           train_s_per_1000_steps=1000 * t_train / args.steps,
                           **{f"{m}_s_per_1000_spots": 1000 * np.median(t) / n for m, t in per.items()},
                           best_val_mse=model.meta["best_val_mse"]))
    return pd.DataFrame(rows), pd.DataFrame(timing)


def summarise(res: pd.DataFrame) -> pd.DataFrame:
    mean = res.groupby(["dataset", "mask_fraction", "method"])["MSE"].mean().unstack("method")
    mean["reduction_vs_median_%"] = 100 * (1 - mean["spackle"] / mean["median"])
    mean["reduction_vs_sme_%"] = 100 * (1 - mean["spackle"] / mean["sme"])
    return mean


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["synthetic", "visium_mouse_cytassist", "her2st"])
    p.add_argument("--fractions", nargs="+", type=float, default=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--size", choices=sorted(SIZES), default="small")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.add_argument("--out", type=Path, default=None, help="write the per-run table as CSV here")
    args = p.parse_args(argv)
    res, timing = run(args)
    if res.empty:
        sys.exit("no dataset could be loaded")
    pd.set_option("display.width", 200)
    pd.set_option("display.max_columns", 20)
    print(f"\nCompletion MSE on hidden observed entries (mean over seeds {args.seeds}); "
          f"SpaCKLE size={args.size}, {args.steps} steps")
    print(summarise(res).round(4).to_string())
    overall = res.groupby("method")["MSE"].mean()
    print(f"\nOver all datasets and fractions: SpaCKLE reduces the median's MSE by "
          f"{100 * (1 - overall['spackle'] / overall['median']):.1f} % (paper: 82.5 %) and SME's by "
          f"{100 * (1 - overall['spackle'] / overall['sme']):.1f} %")
    print("\nTimes")
    print(timing.round(3).to_string(index=False))
    if args.out:
        res.to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
