"""The benchmark end to end through the real preprocessing and trainer (tiny synthetic data, CPU)."""
from __future__ import annotations

import numpy as np
import pytest

from spared_lib.benchmark import METRICS, ResultsStore, run_benchmark
from spared_lib.benchmark.prepare import crop_slides, prepare_dataset


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    adata, patches = prepare_dataset("synthetic", targets=("raw",), out_dir=out, progress=False,
                                     synthetic_kwargs={"n_spots": 150, "n_genes": 400})
    return out, adata, patches


def test_prepared_data_is_cached(tiny):
    out, adata, patches = tiny
    assert (out / "prepared" / "synthetic" / "READY").exists()
    assert patches.shape == (adata.n_obs, 224, 224, 3) and patches.dtype == np.uint8
    again, again_patches = prepare_dataset("synthetic", targets=("raw",), out_dir=out)  # from the cache
    assert again.n_obs == adata.n_obs and np.array_equal(again.layers["c_d_log1p"], adata.layers["c_d_log1p"])
    assert isinstance(again_patches, np.memmap)


def test_crop_keeps_the_central_block_of_each_slide(tiny):
    _, adata, patches = tiny
    small, small_patches = crop_slides(adata, 20, patches)
    counts = small.obs["slide_id"].value_counts()
    assert (counts == 20).all() and len(counts) == adata.obs["slide_id"].nunique()
    # the kept spots are the nearest to the slide centre: none dropped is nearer than a kept one
    for slide in counts.index:
        xy = adata.obsm["spatial"][(adata.obs["slide_id"] == slide).values]
        d = np.hypot(*(xy - xy.mean(0)).T)
        kept = small.obsm["spatial"][(small.obs["slide_id"] == slide).values]
        dk = np.hypot(*(kept - xy.mean(0)).T)
        assert dk.max() <= np.sort(d)[19] + 1e-9
    idx = np.flatnonzero(np.isin(adata.obs_names, small.obs_names))
    assert np.array_equal(small_patches, np.asarray(patches)[idx])
    with pytest.raises(ValueError, match="max_spots"):
        crop_slides(adata, 0)


def test_real_fit_end_to_end_and_resume(tiny, tmp_path):
    from spared_lib.training import fit

    _, adata, patches = tiny
    adata, patches = crop_slides(adata, 20, patches)
    calls = []

    def counting_fit(*args, **kw):
        calls.append(kw["lr"])
        return fit(*args, **kw)

    kw = dict(targets="raw", lrs=[1e-4, 1e-3], steps=1, size="small", device="cpu", batch_size=8,
              fit_options={"val_every": 1, "progress": False, "verbose": False}, progress=False)
    table = run_benchmark({"synthetic": (adata, patches)}, ["shufflenet"], out=tmp_path, fit_fn=counting_fit, **kw)
    assert sorted(calls) == [1e-4, 1e-3]
    assert (table.status == "ok").all(), table.error.tolist()
    assert np.isfinite(table[METRICS + ["best_val_mse"]].to_numpy(float)).all()
    assert set(table.eval_split) == {"test"} and set(table.device) == {"cpu"}
    final = table[table.stage == "final"].iloc[0]
    search = table[table.stage == "search"].set_index("lr")
    assert final.lr == search.best_val_mse.idxmin() and final.MSE == search.loc[final.lr, "MSE"]
    assert (tmp_path / "checkpoints" / "synthetic" / "shufflenet" / "raw").is_dir()
    calls.clear()
    run_benchmark({"synthetic": (adata, patches)}, ["shufflenet"], out=tmp_path, fit_fn=counting_fit, **kw)
    assert calls == [] and len(ResultsStore(tmp_path / "results.csv")) == 3
