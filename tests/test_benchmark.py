"""The benchmark runner's logic: grid, lr selection, table, resume (with an injected fit)."""
from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from spared_lib.benchmark import (COLUMNS, KEY_COLUMNS, Cell, ResultsStore, count_runs, final_results, lr_grid,
                                  parse_targets, run_benchmark, select_lr)
from spared_lib.benchmark.__main__ import build_parser, kwargs_from_args
from spared_lib.metrics import METRICS

MODEL_OFFSET = {"shufflenet": 0.0, "stnet": 0.1, "vit_b": 0.2, "vit_b_delta": 0.05, "sepal": 0.02}


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
        ckpt = None
        if out_dir is not None:  # like fit: the best checkpoint in out_dir
            import torch

            Path(out_dir).mkdir(parents=True, exist_ok=True)
            ckpt = str(Path(out_dir) / f"{model_name}-best-step={steps}.ckpt")
            torch.save({"state_dict": {"w": torch.zeros(2)}, "optimizer_states": [{"m": torch.zeros(4)}]}, ckpt)
        return SimpleNamespace(metrics=metrics, best_val_mse=val, eval_split="test", n_params=1000 + steps,
                               wall_time_s=0.1, device="cpu", checkpoint_path=ckpt,
                               extra={"peak_memory_gb": 0.5, "precision": "32-true", "batch_size": 256,
                                      "micro_batch_size": 64, "accumulate_grad_batches": 4,
                                      "pretrained": kw.get("pretrained")})


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
    table = run_benchmark(DATA, models, "raw,completed", tmp_path, lrs=LRS, steps=7, fit_fn=fit, progress=False,
                          search_target=None)
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
        run_benchmark(DATA, models, "raw,completed", tmp_path, lrs=LRS, steps=5, fit_fn=first, progress=False,
                      search_target=None)
    assert len(ResultsStore(tmp_path / "results.csv")) == 7  # every run before the interrupt was saved

    second = FakeFit()
    table = run_benchmark(DATA, models, "raw,completed", tmp_path, lrs=LRS, steps=5, fit_fn=second, progress=False,
                          search_target=None)
    cell = lambda c: (c["dataset"], c["model"], c["target_layer"], c["lr"])  # noqa: E731
    done_before = {cell(c) for c in first.calls[:7]}
    redone = {cell(c) for c in second.calls}
    assert not (done_before & redone), "finished cells were trained again"
    assert len(second.calls) == n_cells - 7
    # a third invocation has nothing left to do
    third = FakeFit()
    again = run_benchmark(DATA, models, "raw,completed", tmp_path, lrs=LRS, steps=5, fit_fn=third, progress=False,
                          search_target=None)
    assert third.calls == []
    pd.testing.assert_frame_equal(again, table)

    # and the resumed table equals an uninterrupted run's
    clean = run_benchmark(DATA, models, "raw,completed", tmp_path / "clean", lrs=LRS, steps=5, fit_fn=FakeFit(),
                          progress=False, search_target=None)
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


# --------------------------------------------------------------------------- the paper's protocol (issue 13)
def test_default_protocol_searches_once_on_raw_with_imagenet_weights(tmp_path):
    """Issue 13 §2 and §4: by default the backbones start from ImageNet, the learning rate is
    searched once per dataset (and model) on raw data and reused for the completed target, and
    the effective batch is split into micro-batches chosen from the device's memory."""
    fit = FakeFit()
    table = run_benchmark({"toy": DATA["toy"]}, ["shufflenet", "stnet"], "raw,completed", tmp_path, lrs=LRS,
                          steps=5, fit_fn=fit, progress=False)
    assert set(table[table.stage == "search"].target) == {"raw"}
    final = table[table.stage == "final"]
    assert set(final.lr) == {1e-4}  # raw's optimum, although completed's own would be 1e-3
    assert len(fit.calls) == 2 * (3 + 1)  # per model: three search runs, one completed final
    assert {c["pretrained"] for c in fit.calls} == {"imagenet"}
    assert {c["micro_batch_size"] for c in fit.calls} == {"auto"}
    assert set(table.pretrained) == {"imagenet"} and set(table.batching) == {"256 = 4 × 64"}
    assert set(table.peak_memory_gb) == {0.5}


def test_command_line_defaults_are_the_papers():
    kw = kwargs_from_args(build_parser().parse_args(["--datasets", "her2st", "--models", "all"]))
    assert kw["pretrained"] == "imagenet" and kw["search_target"] == "raw"
    assert kw["micro_batch_size"] == "auto" and "prepare_fn" not in kw  # SpaCKLE at the library default
    kw = kwargs_from_args(build_parser().parse_args(["--datasets", "x", "--models", "stnet", "--pretrained", "none",
                                                     "--search-target", "each", "--micro-batch", "32",
                                                     "--max-hours", "3.5"]))
    assert kw["pretrained"] is None and kw["search_target"] is None and kw["micro_batch_size"] == 32
    assert kw["max_hours"] == 3.5
    with pytest.raises(SystemExit, match="unknown model.*resnet"):
        kwargs_from_args(build_parser().parse_args(["--datasets", "x", "--models", "stnet,resnet"]))
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--datasets", "x", "--models", "stnet", "--micro-batch", "0"])
    from spared_lib.models import MODELS

    assert kwargs_from_args(build_parser().parse_args(["--datasets", "x", "--models", "all"]))["models"] == list(MODELS)
    assert "vit_b_delta (ViT-B+Δ)" in build_parser().format_help().replace("\n", " ").replace("  ", " ")


def _sepal_calls(fit):
    return [c for c in fit.calls if c["model"] == "sepal"]


def test_sepal_refines_the_vit_b_delta_run_of_the_same_settings(tmp_path):
    """Issue 13 §3: each SEPAL run gets, as stage 1, the checkpoint of the ViT-B+Δ run with the same
    dataset, target, learning rate and seed; the table records which."""
    fit = FakeFit()
    table = run_benchmark({"toy": DATA["toy"]}, ["sepal", "vit_b_delta"], "raw,completed", tmp_path, lrs=LRS,
                          steps=5, fit_fn=fit, progress=False)
    vit = table[table.model == "vit_b_delta"].set_index(["target", "stage", "lr"])
    for c in _sepal_calls(fit):
        target = "raw" if c["target_layer"] == "c_d_log1p" else "completed"
        ckpt = Path(c["model_kwargs"]["stage1"])
        assert c["pretrained"] == "imagenet"
        assert ckpt.is_file() and f"/vit_b_delta/{target}/" in ckpt.as_posix()
        assert f"_lr{c['lr']:g}_seed{c['seed']}_steps{c['steps']}" in ckpt.as_posix()
    # every SEPAL call came after the ViT-B+Δ run it refines
    order = [(c["model"], c["lr"], c["target_layer"]) for c in fit.calls]
    for i, c in enumerate(fit.calls):
        if c["model"] == "sepal":
            assert ("vit_b_delta", c["lr"], c["target_layer"]) in order[:i]
    sepal = table[(table.model == "sepal") & table.reused_from.isna()]
    assert sepal.stage1_run.notna().all() and sepal.stage1_checkpoint.notna().all()
    row = sepal[sepal.stage == "search"].iloc[0]
    assert row.stage1_run == f"toy/vit_b_delta/raw/search_lr{row.lr:g}_seed0_steps5"
    assert (tmp_path / row.stage1_checkpoint).is_file()  # relative to the results folder
    # ViT-B+Δ checkpoints are kept, weights only; SEPAL's own are deleted once scored
    import torch

    kept = torch.load(tmp_path / row.stage1_checkpoint, weights_only=False)
    assert set(kept) == {"state_dict"}
    assert table[table.model == "sepal"].checkpoint.isna().all()
    assert not list((tmp_path / "checkpoints" / "toy" / "sepal").rglob("*.ckpt"))
    assert vit.checkpoint.notna().all()
    res = final_results(table).set_index(["model", "target"])
    assert res.loc[("sepal", "completed"), "stage1_run"].startswith("toy/vit_b_delta/completed/")


def test_sepal_trains_its_stage_1_when_the_grid_has_none(tmp_path):
    fit = FakeFit()
    table = run_benchmark({"toy": DATA["toy"]}, ["sepal"], "raw,completed", tmp_path, lrs=LRS, steps=5,
                          fit_fn=fit, progress=False)
    stage1 = table[table.stage == "stage1"]
    assert set(stage1.model) == {"vit_b_delta"} and len(stage1) == 3 + 1  # 3 searched lrs + completed final
    assert len(fit.calls) == len(table[table.reused_from.isna()])
    assert {c["model"] for c in fit.calls[:3]} == {"vit_b_delta"}
    # stage-1 runs are not results
    assert set(final_results(table).model) == {"sepal"}
    # a deleted stage-1 checkpoint is trained again on resume (SEPAL's rows stay done)
    for f in (tmp_path / "checkpoints").rglob("*.ckpt"):
        f.unlink()
    again = FakeFit()
    run_benchmark({"toy": DATA["toy"]}, ["sepal"], "raw,completed", tmp_path, lrs=LRS, steps=5, fit_fn=again,
                  progress=False)
    assert again.calls == []


def test_count_runs_matches_what_the_runner_trains(tmp_path):
    """Chapter 6's grid size comes from count_runs: it must equal the fits a real call makes."""
    models = ["shufflenet", "stnet", "sepal"]
    fit = FakeFit()
    run_benchmark(DATA, models, "raw,completed", tmp_path, lrs=LRS, steps=5, seeds=(0, 1), fit_fn=fit,
                  progress=False)
    n = count_runs(models, ["raw", "completed"], n_lrs=3, n_seeds=2, n_datasets=2)
    assert n.loc["total", "runs"] == len(fit.calls)
    assert n.loc["shufflenet"].tolist() == [2 * 3, 2 * 3, 0, 2 * 6]  # search, final (3 of 4 trained), stage1
    per_target = count_runs(["shufflenet"], ["raw", "completed"], n_lrs=5, search_target=None)
    assert per_target.loc["total", "runs"] == 10  # both targets searched, finals reused


def test_time_budget_stops_and_the_same_call_continues(tmp_path, capsys):
    fit = FakeFit()
    t = run_benchmark({"toy": DATA["toy"]}, ["shufflenet", "stnet"], "raw,completed", tmp_path, lrs=LRS, steps=5,
                      fit_fn=fit, progress=False, max_hours=0)
    assert len(fit.calls) == 0 and len(t) == 0
    assert "run the same command" in capsys.readouterr().out
    rest = FakeFit()
    t = run_benchmark({"toy": DATA["toy"]}, ["shufflenet", "stnet"], "raw,completed", tmp_path, lrs=LRS, steps=5,
                      fit_fn=rest, progress=False)
    assert len(rest.calls) == 8 and (t.status == "ok").all()
    with pytest.raises(ValueError, match="max_hours.*sequential"):
        run_benchmark({"toy": DATA["toy"]}, ["shufflenet"], "raw", tmp_path / "r", fit_fn=FakeFit(), backend="ray",
                      max_hours=1)


def test_a_table_of_the_previous_version_is_read_and_extended(tmp_path):
    old_columns = [*KEY_COLUMNS, "target_layer", "best_val_mse", *METRICS, "n_params", "wall_time_s", "device",
                   "eval_split", "status", "error", "reused_from", "finished_at"]
    path = tmp_path / "results.csv"
    path.write_text(",".join(old_columns) + "\n" + "toy,shufflenet,raw,search,0.0001,0,5,c_d_log1p,0.5,"
                    + ",".join(["1"] * len(METRICS)) + ",100,1.0,cpu,test,ok,,,2026-01-01\n")
    store = ResultsStore(path)
    assert store.done_keys() == {("toy", "shufflenet", "raw", "search", 1e-4, 0, 5)}
    store.append({**Cell("toy", "stnet", "raw", "search", 1e-4, 0, 5).as_dict(), "status": "ok", "MSE": 2.0})
    back = ResultsStore(path).table()
    assert list(back.columns) == COLUMNS and len(back) == 2 and back.MSE.tolist() == [1.0, 2.0]


def test_unknown_model_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(ValueError, match="unknown model.*resnet"):
        run_benchmark(DATA, ["resnet"], "raw", tmp_path, fit_fn=FakeFit())
    assert not (tmp_path / "results.csv").exists()


def test_small_models_without_imagenet_weights_are_refused_early():
    with pytest.raises(SystemExit, match="--pretrained none"):
        kwargs_from_args(build_parser().parse_args(["--datasets", "x", "--models", "stnet", "--size", "small"]))
    kw = kwargs_from_args(build_parser().parse_args(["--datasets", "x", "--models", "stnet", "--size", "small",
                                                     "--pretrained", "none"]))
    assert kw["pretrained"] is None and kw["batch_size"] == 256


def test_grid_cost_by_hand():
    from spared_lib.benchmark import GPU, grid_cost

    memory = {"slide_spots": 100, "models": [
        {"model": "shufflenet", "batching": "spot", "gflop_per_sample": 1.0, "weights_gb": 0.1, "fixed_gb": 0.2},
        {"model": "histogene", "batching": "slide", "gflop_per_sample": 2.0, "weights_gb": 1.0, "fixed_gb": 2.0},
        {"model": "hist2st", "batching": "slide", "gflop_per_sample": 3.0, "weights_gb": 4.0, "fixed_gb": 12.0}]}
    gpu = GPU("test", memory_gb=15, tflops=1.0)
    cost = grid_cost(memory, ["shufflenet", "histogene", "hist2st"], n_lrs=3, steps=600, batch_size=100, gpu=gpu)
    # 600 steps x 100 patches x 1 GFLOP = 60 TFLOP at 1 TFLOP/s = 1 minute; 4 runs (3 search + completed)
    assert cost.loc["shufflenet", "min_per_run"] == pytest.approx(1.0)
    assert cost.loc["shufflenet", "runs"] == 4 and cost.loc["shufflenet", "hours"] == pytest.approx(4 / 60)
    assert cost.loc["histogene", "min_per_run"] == pytest.approx(2.0)  # one slide of 100 spots per step
    assert not cost.loc["hist2st", "fits"] and np.isnan(cost.loc["hist2st", "hours"])  # 16 GB > 15 GB
    assert cost.loc["total", "hours"] == pytest.approx(4 / 60 + 8 / 60)
    # SpaCKLE before the completed targets: 10,000 steps of 3 GFLOP = 30 TFLOP = 0.5 min per dataset
    memory["spackle"] = {"gflop_per_step": 3.0}
    cost = grid_cost(memory, ["shufflenet"], n_lrs=3, steps=600, batch_size=100, gpu=gpu, n_datasets=2)
    assert cost.loc["spackle", "runs"] == 2 and cost.loc["spackle", "min_per_run"] == pytest.approx(0.5)
    assert cost.loc["total", "hours"] == pytest.approx(2 * 4 / 60 + 2 * 0.5 / 60)
    assert "spackle" not in grid_cost(memory, ["shufflenet"], targets=["raw"], gpu=gpu).index
    with pytest.raises(KeyError, match="train_memory"):
        grid_cost(memory, ["vit_b"])


def test_chapter_6_defaults_fit_one_colab_session():
    """Issue 13 §7: the chapter's defaults are one Colab session's work on a T4 (by the committed
    per-model FLOPs and the stated T4 throughput), stop themselves before the session's 12-hour
    limit, keep the table on Google Drive, and the chapter gives the command that continues."""
    import jupytext

    from spared_lib.benchmark import COLAB_T4, grid_cost, plan_sessions
    from spared_lib.models import MODELS
    from spared_lib.resources import load_result

    source = Path(__file__).resolve().parents[1] / "notebooks" / "06_benchmark.py"
    nb = jupytext.read(source)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    p: dict = {}
    exec(cell.source, p)  # noqa: S102 - the chapter's own plain-values cell
    models = list(MODELS) if p["MODELS"] == "all" else p["MODELS"].split(",")
    assert p["PRETRAINED"] == "imagenet" and p["SIZE"] == "paper" and p["BATCH_SIZE"] == 256
    assert p["STEPS"] == 1000 and p["SPACKLE_STEPS"] is None and p["MICRO_BATCH"] == "auto"
    memory = load_result("train_memory")["results"]
    kw = dict(n_lrs=p["N_LRS"], n_datasets=len(p["DATASETS"].split(",")), steps=p["STEPS"],
              batch_size=p["BATCH_SIZE"], gpu=COLAB_T4)
    cost = grid_cost(memory, models, p["TARGETS"].split(","), **kw)
    assert cost.loc["total", "hours"] < p["MAX_HOURS"] < 12
    # the defaults are the first session of the whole grid's plan, which the chapter prints
    plan = plan_sessions(grid_cost(memory, list(MODELS), p["TARGETS"].split(","), **kw), hours=8)
    assert set(models) == set(plan.models.iloc[0])
    assert plan[plan.fits].hours.max() <= p["MAX_HOURS"]
    text = source.read_text()
    assert "/content/drive/MyDrive/spared-book/benchmark" in text and "drive.mount" in text
    assert "--max-hours 11" in text and "python -m spared_lib.benchmark --datasets {DATASETS}" in text


def test_stage_1_runs_are_priced_as_the_base_model_and_sessions_keep_pairs_together():
    from spared_lib.benchmark import GPU, grid_cost, plan_sessions

    m = lambda name, g, batching="spot", w=0.1: {"model": name, "batching": batching,  # noqa: E731
                                                 "gflop_per_sample": g, "weights_gb": w, "fixed_gb": w}
    memory = {"slide_spots": 100, "models": [m("vit_b_delta", 10.0), m("sepal", 0.0), m("vit_b", 10.0),
                                             m("shufflenet", 1.0), m("hist2st", 1.0, "slide", 9.0)]}
    gpu = GPU("test", memory_gb=15, tflops=1.0)
    kw = dict(n_lrs=3, steps=600, batch_size=100, gpu=gpu)
    alone = grid_cost(memory, ["sepal"], **kw)
    # SEPAL alone: 4 stage-1 ViT-B+Δ runs (3 searched lrs + the completed final) of 10 minutes each
    assert alone.loc["sepal", "hours"] == pytest.approx(4 * 10 / 60)
    cost = grid_cost(memory, ["vit_b_delta", "sepal", "vit_b", "shufflenet", "hist2st"], **kw)
    assert cost.loc["sepal", "hours"] == pytest.approx(1 * 10 / 60)  # only the completed final's stage 1
    plan = plan_sessions(cost, hours=0.8)
    first = plan.models.iloc[0]
    assert {"vit_b_delta", "sepal"} <= set(first) or {"vit_b_delta", "sepal"}.isdisjoint(first)
    together = [set(ms) for ms in plan.models if "sepal" in ms][0]
    assert "vit_b_delta" in together
    assert plan.iloc[-1].models == ["hist2st"] and not plan.iloc[-1].fits  # 9 + 9 GB > 15 GB
    # each session within the budget, except one holding a single unit longer than it (ViT-B+Δ with
    # SEPAL: 50 minutes), which continues in the next session by resuming
    for _, row in plan[plan.fits].iterrows():
        assert row.hours <= 0.8 + 1e-9 or row.models == ["vit_b_delta", "sepal"]
    assert sorted(sum(plan.models, [])) == sorted(["vit_b_delta", "sepal", "vit_b", "shufflenet", "hist2st"])


def test_runs_that_do_not_fit_the_device_are_told_apart_from_failures(tmp_path, monkeypatch, capsys):
    """A model the memory planner refuses (DoesNotFit) gets status does_not_fit, and so does SEPAL
    when its stage 1 did not fit; the CLI exits 3 when those are the only unfinished runs, 1 when
    any run failed, 0 when all finished."""
    from spared_lib.benchmark import __main__ as cli
    from spared_lib.benchmark import runner
    from spared_lib.training import DoesNotFit

    fake = FakeFit()

    def fit(model_name, adata, **kw):
        if model_name in ("stnet", "vit_b_delta"):
            raise DoesNotFit(f"{model_name} needs 13.3 GiB for gradients and optimiser state alone")
        return fake(model_name, adata, **kw)

    with pytest.warns(UserWarning):
        table = run_benchmark({"toy": DATA["toy"]}, ["shufflenet", "stnet", "sepal"], "raw", tmp_path, lrs=LRS,
                              steps=5, fit_fn=fit, progress=False)
    status = table.groupby("model").status.agg(set)
    assert status["shufflenet"] == {"ok"}
    assert status["stnet"] == status["vit_b_delta"] == status["sepal"] == {"does_not_fit"}
    assert table[table.model == "stnet"].error.str.contains("13.3 GiB").all()
    assert table[table.model == "sepal"].error.str.contains("stage 1.*does not fit").all()

    argv = ["--datasets", "toy", "--models", "shufflenet,stnet,sepal", "--targets", "raw", "--out", str(tmp_path)]
    monkeypatch.setattr(runner, "run_benchmark", lambda **kw: table)
    assert cli.main(argv) == cli.EXIT_DOES_NOT_FIT == 3
    out = capsys.readouterr().out
    assert "stnet: 3 runs did not fit: DoesNotFit: stnet needs 13.3 GiB" in out
    broken = table.copy()
    broken.loc[broken.model == "shufflenet", "status"] = "failed"
    monkeypatch.setattr(runner, "run_benchmark", lambda **kw: broken)
    assert cli.main(argv) == cli.EXIT_FAILED == 1
    done = table[table.model == "shufflenet"]
    monkeypatch.setattr(runner, "run_benchmark", lambda **kw: done)
    assert cli.main(argv) == 0
