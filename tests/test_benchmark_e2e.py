"""The benchmark end to end through the real preprocessing and trainer (tiny synthetic data, CPU)."""
from __future__ import annotations

import numpy as np
import pytest

from spared_lib.benchmark import ResultsStore, prepare_dataset, run_benchmark
from spared_lib.data import crop_slides
from spared_lib.metrics import METRICS


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


def test_completed_targets_use_spackle_at_the_library_default(tiny, tmp_path, monkeypatch):
    """Issue 13 §5: the benchmark's SpaCKLE runs as long as the library's default (the paper's
    10,000 steps), unless asked otherwise; before, preparation passed its own 1,000."""
    import spared_lib.completion as completion

    seen = []

    def fake_train(adata, **kw):
        seen.append(kw)
        return "model", None

    def fake_complete(adata, model, **kw):
        adata.layers["c_t_log1p"] = adata.layers["c_d_log1p"].copy()

    monkeypatch.setattr(completion, "train_spackle", fake_train)
    monkeypatch.setattr(completion, "complete", fake_complete)
    import shutil

    for name in ("a", "b"):  # the prepared raw data, completed on top (as a resumed benchmark does)
        shutil.copytree(tiny[0] / "prepared", tmp_path / name / "prepared")
    adata, _ = prepare_dataset("synthetic", targets=("raw", "completed"), out_dir=tmp_path / "a", progress=False)
    from spared_lib.completion.train import PAPER_STEPS

    assert seen[0]["steps"] == PAPER_STEPS == 10_000 and "c_t_log1p" in adata.layers
    prepare_dataset("synthetic", targets=("raw", "completed"), out_dir=tmp_path / "b", progress=False,
                    spackle_steps=30)
    assert seen[1]["steps"] == 30
    # the cached completion is reused only for the same SpaCKLE steps; other steps redo it
    again, _ = prepare_dataset("synthetic", targets=("raw", "completed"), out_dir=tmp_path / "b",
                               progress=False, spackle_steps=30)
    assert len(seen) == 2 and again.uns["spackle_steps"] == 30
    prepare_dataset("synthetic", targets=("raw", "completed"), out_dir=tmp_path / "b", progress=False)
    assert len(seen) == 3 and seen[2]["steps"] == PAPER_STEPS


def test_real_fit_end_to_end_and_resume(tiny, tmp_path):
    from spared_lib.training import fit

    _, adata, patches = tiny
    adata, patches = crop_slides(adata, 20, patches)
    calls = []

    def counting_fit(*args, **kw):
        calls.append(kw["lr"])
        return fit(*args, **kw)

    kw = dict(targets="raw", lrs=[1e-4, 1e-3], steps=1, size="small", pretrained=None, device="cpu", batch_size=8,
              fit_options={"val_every": 1, "progress": False, "verbose": False}, progress=False)
    table = run_benchmark({"synthetic": (adata, patches)}, ["shufflenet"], out=tmp_path, fit_fn=counting_fit, **kw)
    assert sorted(calls) == [1e-4, 1e-3]
    assert (table.status == "ok").all(), table.error.tolist()
    assert np.isfinite(table[[*METRICS, "best_val_mse"]].to_numpy(float)).all()
    assert set(table.eval_split) == {"test"} and set(table.device) == {"cpu"}
    final = table[table.stage == "final"].iloc[0]
    search = table[table.stage == "search"].set_index("lr")
    assert final.lr == search.best_val_mse.idxmin() and final.MSE == search.loc[final.lr, "MSE"]
    assert (tmp_path / "checkpoints" / "synthetic" / "shufflenet" / "raw").is_dir()
    calls.clear()
    run_benchmark({"synthetic": (adata, patches)}, ["shufflenet"], out=tmp_path, fit_fn=counting_fit, **kw)
    assert calls == [] and len(ResultsStore(tmp_path / "results.csv")) == 3


def test_train_mean_baseline_by_hand(tiny):
    """The baseline row every results table carries: each gene's mean over all training entries,
    scored on observed entries of the test split (validation where there is none)."""
    from spared_lib.benchmark import TRAIN_MEAN, train_mean_metrics, train_mean_results
    from spared_lib.metrics import compute_metrics

    _, adata, _ = tiny
    split = adata.obs["split"].to_numpy()
    y, m = adata.layers["c_d_log1p"], adata.layers["mask"].astype(bool)
    mean = y[split == "train"].mean(0)
    test = split == "test"
    want = compute_metrics(y[test], np.tile(mean, (test.sum(), 1)), m[test])
    got = train_mean_metrics(adata, "c_d_log1p")
    assert got["eval_split"] == "test" and got["MSE"] == pytest.approx(want["MSE"], rel=1e-6)
    # the observed-entries mean would be a different (wrong) baseline for an all-entries loss
    observed_mean = (y * m)[split == "train"].sum(0) / m[split == "train"].sum(0)
    assert not np.allclose(observed_mean, mean)
    rows = train_mean_results({"synthetic": (adata, None)}, "raw")
    assert rows.model.tolist() == [TRAIN_MEAN] and rows.MSE.iloc[0] == pytest.approx(got["MSE"])
    assert set(METRICS) <= set(rows.columns)
    with pytest.raises(KeyError, match="c_t_log1p"):
        train_mean_metrics(adata, "c_t_log1p")
