"""The benchmark runner's logic: grid, lr selection, table, resume (with an injected fit)."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from spared_lib.benchmark import (COLUMNS, METRICS, Cell, ResultsStore, final_results, lr_grid,
                                  parse_targets, run_benchmark, select_lr)
from spared_lib.benchmark.__main__ import build_parser, kwargs_from_args

MODEL_OFFSET = {"shufflenet": 0.0, "stnet": 0.1, "vit_b": 0.2}


class FakeFit:
    """A deterministic stand-in for training.fit: validation MSE is a parabola in
    log10(lr) with its minimum at ``best_lr`` (per target), so the right choice is known."""

    def __init__(self, interrupt_at: int | None = None, fail=lambda model, lr: False,
                 best_lr={"raw": 1e-4, "completed": 1e-3}):
        self.calls: list[dict] = []
        self.interrupt_at = interrupt_at
        self.fail = fail
        self.best_lr = best_lr

    def __call__(self, model_name, adata, *, target_layer, steps, lr, patches, seed, out_dir, **kw):
        self.calls.append(dict(dataset=adata["name"], model=model_name, target_layer=target_layer, steps=steps, lr=lr, seed=seed,
                               out_dir=out_dir, **kw))
        if self.interrupt_at is not None and len(self.calls) == self.interrupt_at:
            raise KeyboardInterrupt
        if self.fail(model_name, lr):
            raise RuntimeError(f"{model_name} diverged")
        target = "raw" if target_layer == "c_d_log1p" else "completed"
        val = (math.log10(lr) - math.log10(self.best_lr[target])) ** 2 + MODEL_OFFSET[model_name] + 0.5
        test = val + 0.01 * seed + adata["shift"]
        metrics = {m: test + i for i, m in enumerate(METRICS)}
        return SimpleNamespace(metrics=metrics, best_val_mse=val, eval_split="test", n_params=1000 + steps,
                               wall_time_s=0.1, device="cpu", checkpoint_path=None)


DATA = {"toy": ({"name": "toy", "shift": 0.0}, None), "toy2": ({"name": "toy2", "shift": 1.0}, None)}
LRS = [1e-5, 1e-4, 1e-3]


def test_lr_grid_is_log_spaced():
    g = lr_grid(1e-5, 1e-3, 5)
    assert g[0] == 1e-5 and g[-1] == 1e-3 and len(g) == 5
    ratios = np.diff(np.log10(g))
    np.testing.assert_allclose(ratios, 0.5, atol=2e-3)  # 3 significant digits of rounding
    assert lr_grid(3e-4, 3e-4, 1) == [3e-4]
    for bad in [dict(low=-1), dict(low=1e-2, high=1e-3), dict(n=0), dict(n=1)]:
        with pytest.raises(ValueError):
            lr_grid(**bad)


def test_parse_targets_and_cell_validation():
    assert parse_targets("raw, completed,raw") == ["raw", "completed"]
    with pytest.raises(ValueError, match="unknown target"):
        parse_targets("raw,imputed")
    with pytest.raises(ValueError, match="stage"):
        Cell("d", "m", "raw", "tune", 1e-4, 0, 10)
    # keys read back from disk (rounded floats) equal keys built in memory
    assert Cell("d", "m", "raw", "search", 0.000316227766, 0, 10) == Cell("d", "m", "raw", "search", 3.16e-4, 0, 10)


def test_search_then_final_selects_lowest_validation_mse(tmp_path):
    fit = FakeFit()
    models = ["shufflenet", "stnet"]
    table = run_benchmark(DATA, models, "raw,completed", tmp_path, lrs=LRS, steps=7, fit_fn=fit, progress=False)
    search = table[table.stage == "search"]
    final = table[table.stage == "final"]
    assert len(search) == 2 * 2 * 2 * 3 and len(final) == 2 * 2 * 2
    # each target's own optimum is chosen
    assert set(final[final.target == "raw"].lr) == {1e-4}
    assert set(final[final.target == "completed"].lr) == {1e-3}
    # one seed, same steps: finals reuse the search runs instead of training again
    assert len(fit.calls) == len(search) and final.reused_from.eq("search").all()
    # the final row carries the twin search run's test metrics
    twin = search.set_index(["dataset", "model", "target", "lr"]).loc[("toy2", "stnet", "raw", 1e-4)]
    row = final[(final.dataset == "toy2") & (final.model == "stnet") & (final.target == "raw")].iloc[0]
    assert row.MSE == twin.MSE == pytest.approx(0.1 + 0.5 + 1.0)
    # the layers handed to fit
    assert {c["target_layer"] for c in fit.calls} == {"c_d_log1p", "c_t_log1p"}
    assert all(c["steps"] == 7 and c["size"] == "paper" and c["device"] == "auto" for c in fit.calls)
    assert list(table.columns) == COLUMNS


def test_rows_of_an_earlier_grid_do_not_take_part(tmp_path):
    run_benchmark({"toy": DATA["toy"]}, ["shufflenet"], "raw", tmp_path, lrs=LRS, steps=5, fit_fn=FakeFit(),
                  progress=False)
    # narrowing the grid to points that exclude the optimum (1e-4) must not pick the old 1e-4 row
    table = run_benchmark({"toy": DATA["toy"]}, ["shufflenet"], "raw", tmp_path, lrs=[1e-3, 1e-2], steps=5,
                          fit_fn=FakeFit(), progress=False)
    assert select_lr(table, "toy", "shufflenet", "raw", lrs=[1e-3, 1e-2], steps=5) == 1e-3
    assert select_lr(table, "toy", "shufflenet", "raw") == 1e-4
    assert 1e-3 in set(table[table.stage == "final"].lr)
    assert select_lr(table, "toy", "shufflenet", "raw", steps=6) is None
    res = final_results(table)
    assert len(res) == 1 and res.lr.iloc[0] == 1e-3


def test_seeds_and_search_steps_need_new_final_runs(tmp_path):
    fit = FakeFit()
    table = run_benchmark({"toy": DATA["toy"]}, ["shufflenet"], "raw", tmp_path, lrs=LRS, steps=20,
                          search_steps=5, seeds=(0, 1), fit_fn=fit, progress=False)
    assert [c["steps"] for c in fit.calls] == [5, 5, 5, 20, 20]
    assert [c["seed"] for c in fit.calls] == [0, 0, 0, 0, 1]
    res = final_results(table)
    assert len(res) == 1 and res.n_seeds.iloc[0] == 2
    # mean over the two seeds of test = val + 0.01 * seed
    assert res.MSE.iloc[0] == pytest.approx(0.5 + 0.005)


def test_interrupted_run_resumes_without_recomputing(tmp_path):
    models = ["shufflenet", "stnet", "vit_b"]
    n_cells = 2 * 3 * 2 * 3  # datasets x models x targets x lrs (finals reuse the search)
    first = FakeFit(interrupt_at=8)
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(DATA, models, "raw,completed", tmp_path, lrs=LRS, steps=5, fit_fn=first, progress=False)
    assert len(ResultsStore(tmp_path / "results.csv")) == 7  # every run before the interrupt was saved

    second = FakeFit()
    table = run_benchmark(DATA, models, "raw,completed", tmp_path, lrs=LRS, steps=5, fit_fn=second, progress=False)
    cell = lambda c: (c["dataset"], c["model"], c["target_layer"], c["lr"])  # noqa: E731
    done_before = {cell(c) for c in first.calls[:7]}
    redone = {cell(c) for c in second.calls}
    assert not (done_before & redone), "finished cells were trained again"
    assert len(second.calls) == n_cells - 7
    # a third invocation has nothing left to do
    third = FakeFit()
    again = run_benchmark(DATA, models, "raw,completed", tmp_path, lrs=LRS, steps=5, fit_fn=third, progress=False)
    assert third.calls == []
    pd.testing.assert_frame_equal(again, table)

    # and the resumed table equals an uninterrupted run's
    clean = run_benchmark(DATA, models, "raw,completed", tmp_path / "clean", lrs=LRS, steps=5, fit_fn=FakeFit(),
                          progress=False)
    cols = ["dataset", "model", "target", "stage", "lr", "seed", "steps", *METRICS, "best_val_mse"]
    key = ["dataset", "model", "target", "stage", "lr"]
    pd.testing.assert_frame_equal(table[cols].sort_values(key).reset_index(drop=True),
                                  clean[cols].sort_values(key).reset_index(drop=True))


def test_failed_run_is_recorded_and_retried(tmp_path):
    bad = FakeFit(fail=lambda model, lr: model == "stnet" and lr == 1e-3)
    with pytest.warns(UserWarning, match="stnet.*diverged"):
        table = run_benchmark({"toy": DATA["toy"]}, ["shufflenet", "stnet"], "raw", tmp_path, lrs=LRS, steps=5,
                              fit_fn=bad, progress=False)
    failed = table[table.status == "failed"]
    assert len(failed) == 1 and failed.lr.iloc[0] == 1e-3 and "diverged" in failed.error.iloc[0]
    assert np.isnan(failed.MSE.iloc[0])
    # the failed learning rate is simply not a candidate; the other runs go on
    assert select_lr(table, "toy", "stnet", "raw") == 1e-4
    good = FakeFit()
    table = run_benchmark({"toy": DATA["toy"]}, ["shufflenet", "stnet"], "raw", tmp_path, lrs=LRS, steps=5,
                          fit_fn=good, progress=False)
    assert [(c["model"], c["lr"]) for c in good.calls] == [("stnet", 1e-3)]
    assert (table.status == "ok").all()
    assert len(ResultsStore(tmp_path / "results.csv").table(latest=False)) == len(table) + 1


def test_shared_search_target_reuses_raw_lr(tmp_path):
    fit = FakeFit()
    table = run_benchmark({"toy": DATA["toy"]}, ["shufflenet"], "raw,completed", tmp_path, lrs=LRS, steps=5,
                          search_target="raw", fit_fn=fit, progress=False)
    assert set(table[table.stage == "search"].target) == {"raw"}
    final = table[table.stage == "final"].set_index("target")
    assert final.loc["completed", "lr"] == final.loc["raw", "lr"] == 1e-4
    assert final.loc["completed", "reused_from"] != "search"  # trained, not copied
    assert len(fit.calls) == 3 + 1


def test_store_repairs_cut_line_and_reads_parquet(tmp_path):
    row = {**Cell("d", "m", "raw", "search", 1e-4, 0, 5).as_dict(), "status": "ok", "MSE": 1.5}
    store = ResultsStore(tmp_path / "r.csv")
    store.append(row)
    store.append({**row, "lr": 1e-3})
    with open(tmp_path / "r.csv", "a") as fh:
        fh.write("d,m,raw,search,0.01,0,5,c_d_lo")  # a write cut by a kill
    with pytest.warns(UserWarning, match="incomplete last line"):
        again = ResultsStore(tmp_path / "r.csv")
    assert len(again) == 2 and again.table().MSE.tolist() == [1.5, 1.5]
    assert again.done_keys() == {("d", "m", "raw", "search", 1e-4, 0, 5), ("d", "m", "raw", "search", 1e-3, 0, 5)}

    pq = ResultsStore(tmp_path / "r.parquet")
    pq.append(row)
    pq.append({**row, "status": "failed"})
    back = ResultsStore(tmp_path / "r.parquet")
    assert back.table().status.tolist() == ["failed"] and back.done_keys() == set()
    with pytest.raises(ValueError, match="unknown column"):
        pq.append({**row, "accuracy": 1})
    with pytest.raises(ValueError, match=".csv or .parquet"):
        ResultsStore(tmp_path / "r.xlsx")
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="other.csv.*not a benchmark results table"):
        ResultsStore(tmp_path / "other.csv")


def test_resuming_with_other_settings_is_refused(tmp_path):
    run_benchmark({"toy": DATA["toy"]}, ["shufflenet"], "raw", tmp_path, lrs=[1e-4], steps=2, size="small",
                  fit_fn=FakeFit(), progress=False)
    before = (tmp_path / "results.csv").read_text()
    with pytest.raises(ValueError, match="other settings.*size"):
        run_benchmark({"toy": DATA["toy"]}, ["shufflenet"], "raw", tmp_path, lrs=[1e-4], steps=2, size="paper",
                      fit_fn=FakeFit(), progress=False)
    assert (tmp_path / "results.csv").read_text() == before


def test_bad_arguments_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="no models"):
        run_benchmark(DATA, [], "raw", tmp_path, fit_fn=FakeFit())
    with pytest.raises(ValueError, match="backend"):
        run_benchmark(DATA, ["shufflenet"], "raw", tmp_path / "b", backend="dask", fit_fn=FakeFit())
    with pytest.raises(ValueError, match="steps"):
        run_benchmark(DATA, ["shufflenet"], "raw", tmp_path / "c", steps=0, fit_fn=FakeFit())
    with pytest.raises(ValueError, match="fit_options may not set.*lr"):
        run_benchmark(DATA, ["shufflenet"], "raw", tmp_path / "d", fit_options={"lr": 1}, fit_fn=FakeFit())


def test_fit_options_reach_fit(tmp_path):
    fit = FakeFit()
    run_benchmark({"toy": DATA["toy"]}, ["shufflenet"], "raw", tmp_path, lrs=[1e-4], steps=2, fit_fn=fit,
                  fit_options={"val_every": 7, "progress": False}, progress=False)
    assert fit.calls[0]["val_every"] == 7 and fit.calls[0]["progress"] is False


def test_command_line_arguments():
    args = build_parser().parse_args(["--datasets", "synthetic,her2st", "--models", "all", "--targets", "raw",
                                      "--out", "res", "--lr-grid", "1e-5:1e-3:3", "--seeds", "0,1",
                                      "--steps", "50", "--ray", "--address", "auto", "--gpus-per-trial", "1"])
    kw = kwargs_from_args(args)
    assert kw["datasets"] == ["synthetic", "her2st"] and kw["targets"] == ["raw"]
    assert kw["lrs"] == [1e-5, 1e-4, 1e-3] and kw["seeds"] == [0, 1] and kw["steps"] == 50
    assert kw["backend"] == "ray" and kw["ray_address"] == "auto" and kw["gpus_per_trial"] == 1
    assert len(kw["models"]) == 10
    kw = kwargs_from_args(build_parser().parse_args(["--datasets", "x", "--models", "stnet", "--lrs", "1e-4,3e-4"]))
    assert kw["lrs"] == [1e-4, 3e-4] and kw["backend"] == "sequential"
    with pytest.raises(SystemExit):
        kwargs_from_args(build_parser().parse_args(["--datasets", "x", "--models", "stnet", "--lr-grid", "1e-5"]))
