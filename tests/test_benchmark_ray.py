"""The Ray path of the benchmark on a local 2-CPU Ray instance (tiny grid, injected fit)."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

ray = pytest.importorskip("ray", reason="Ray Tune is not installed (pip install 'ray[tune]')")
pytest.importorskip("ray.tune")

from spared_lib.benchmark import run_benchmark  # noqa: E402
from spared_lib.metrics import METRICS  # noqa: E402

from test_benchmark import DATA, FakeFit  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    # the fake fit lives in a test module: let Ray's workers import it
    tests_dir = str(Path(__file__).resolve().parent)
    path = os.pathsep.join([tests_dir, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield
    ray.shutdown()


def test_ray_tune_trials_match_sequential_run_and_resume(tmp_path, local_ray):
    models = ["shufflenet", "stnet"]
    lrs = [1e-4, 1e-3]
    data = {"toy": DATA["toy"]}
    seq = run_benchmark(data, models, "raw", tmp_path / "seq", lrs=lrs, steps=3, seeds=(0, 1),
                        fit_fn=FakeFit(), progress=False)
    par = run_benchmark(data, models, "raw", tmp_path / "ray", lrs=lrs, steps=3, seeds=(0, 1), fit_fn=FakeFit(),
                        backend="ray", cpus_per_trial=1, progress=False)
    cols = ["dataset", "model", "target", "stage", "lr", "seed", "steps", "best_val_mse", *METRICS, "status"]
    key = ["stage", "model", "lr", "seed"]
    pd.testing.assert_frame_equal(seq[cols].sort_values(key).reset_index(drop=True),
                                  par[cols].sort_values(key).reset_index(drop=True))
    assert len(par) == 2 * 2 + 2 * 2  # search + finals; seed 0 final reused, seed 1 trained as a trial
    assert (tmp_path / "ray" / "ray").is_dir()  # Tune's trial logs live under <out>/ray

    # the table the Ray driver wrote is the same resumable table: nothing is left to run
    counting = FakeFit()
    again = run_benchmark(data, models, "raw", tmp_path / "ray", lrs=lrs, steps=3, seeds=(0, 1), fit_fn=counting,
                          progress=False)
    assert counting.calls == []
    pd.testing.assert_frame_equal(again, par)
