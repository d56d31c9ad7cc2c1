"""Tests of benchmarks/completion.py's bookkeeping: the study's winner, the averages, the splits."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "completion.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("completion_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def study_frame(bench, val_best: str, test_best: str) -> pd.DataFrame:
    rows = []
    for variant in bench.VARIANTS:
        for centre in (False, True):
            for split, best in (("val", val_best), ("test", test_best)):
                mse = 1.0 if (variant == best and centre) else 2.0
                for seed in (0, 1):
                    rows.append(dict(dataset="d", variant=variant, centre=centre, inference="zeroed", split=split,
                                     mask_fraction=0.3, seed=seed, MSE=mse + 0.01 * seed))
    for split in ("val", "test"):
        rows.append(dict(dataset="d", variant="median method", centre=False, inference="-", split=split,
                         mask_fraction=0.3, seed=0, MSE=0.5))  # a baseline never wins
    return pd.DataFrame(rows)


def test_the_study_winner_is_chosen_on_validation_spots_only(bench):
    names = list(bench.VARIANTS)
    won = bench.winner(study_frame(bench, val_best=names[2], test_best=names[0]))
    assert won["variant"] == names[2] and won["centre"] is True
    assert {k: won[k] for k in ("train_input", "loss")} == bench.VARIANTS[names[2]]


def test_averages_weight_datasets_equally_and_list_cells_behind(bench):
    rows = []
    for ds, spackle in (("big", 1.0), ("small", 3.0)):
        for frac in (0.3, 0.7):
            for method, mse in (("spackle", spackle), ("median", 2.0), ("sme", 10.0), ("mean", 2.5)):
                rows.append(dict(dataset=ds, mask_fraction=frac, method=method, schedule="cpu", seed=0, MSE=mse))
    red = bench.reductions(pd.DataFrame(rows))
    a = bench.averages(red)["cpu"]
    # big: 50 % below the median, small: 50 % above -> mean 0 %
    assert a["reduction_vs_median_at_paper_fraction_%"] == pytest.approx(0.0)
    assert a["reduction_vs_train_mean_all_fractions_%"] == pytest.approx(100 * (1 - (0.4 + 1.2) / 2))
    assert sorted(c["dataset"] for c in a["cells_behind_median"]) == ["small", "small"]


def test_single_slide_data_get_spatial_bands(bench):
    adata = ad.AnnData(np.zeros((100, 2), np.float32))
    adata.obsm["spatial"] = np.c_[np.arange(100.0), np.zeros(100)]
    adata.obs["split"] = pd.Categorical(["train"] * 100)
    assert bench.spatial_bands(adata).startswith("spatial bands")
    split = adata.obs["split"].astype(str).to_numpy()
    assert (split[:65] == "train").all() and (split[65:80] == "val").all() and (split[80:] == "test").all()


def test_step_flops_counts_the_paper_size_matmuls(bench):
    # one encoder layer of one token at d=128, FF=2048: 2 x (4 d^2 + 2 d FF) forward
    one = bench.step_flops(batch=1, tokens=1, genes=32, d=128, ff=2048, layers=1)
    assert one == 3 * (2 * (4 * 128**2 + 2 * 128 * 2048) + 4 * 128 + 2 * 2 * 32 * 128)
