# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The benchmark: ten models, raw vs SpaCKLE-completed training
#
# **Aim:** run the SpaRED benchmark protocol {cite}`mejia2024spared` — a learning-rate search, then
# training every model on raw and on SpaCKLE-completed expression — collect one tidy results table,
# draw the paper's benchmark figures from it, and learn how to run the full benchmark on a GPU or a
# cluster.
#
# ```{admonition} What you need
# :class: tip
# - **Compute:** fast mode runs on a CPU (under 2 GB of RAM); the full benchmark needs a GPU
#   (one GPU per run; more GPUs run more of the grid at once, see the last section).
# - **Time:** a few minutes in fast mode (synthetic data and the her2st fixture, all ten models at a
#   small size, a handful of steps); the full run is hours per dataset — the last section computes it.
# - **Data:** `DATASETS` below. `"synthetic"` is generated on the fly; `"her2st"` is a real fixture
#   (present on the project's CI); SpaRED keys download the real datasets.
# - **Before:** chapters 3 (SpaCKLE), 4 (patch models) and 5 (context models).
# ```

# %% tags=["remove-cell"]
# Colab only: install spared_lib from the repository (Colab's own torch and torchvision are kept).
import sys

if "google.colab" in sys.modules:
    import subprocess

    REPOSITORY = "https://github.com/spared-book/spared-book"  # = repository.url in _config.yml
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"spared-lib @ git+{REPOSITORY}"],
                   check=True)

# %% [markdown]
# ## Parameters
#
# The defaults are a real benchmark on two SpaRED datasets with the paper's settings (1,000 steps,
# batch 256, ImageNet weights, a 5-point learning-rate grid). The book runs this notebook with
# `FAST = True` and the small values of `notebooks/fast_params.yml`.

# %% tags=["parameters"]
DATASETS = "10xgenomic_mouse_brain_sagittal_posterior,10xgenomic_mouse_brain_coronal"
MODELS = "all"
TARGETS = "raw,completed"
LR_LOW = 1e-5
LR_HIGH = 1e-3
N_LRS = 5
STEPS = 1000
SPACKLE_STEPS = 1000
SIZE = "paper"
PRETRAINED = "imagenet"
BATCH_SIZE = 256
VAL_EVERY = 100
MAX_SPOTS = 0
SYNTHETIC_SPOTS = 600
DEVICE = "auto"
OUT = "results/benchmark"
SEED = 0
FAST = False

# %%
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from spared_lib import benchmark, plotting
from spared_lib.benchmark.prepare import crop_slides, prepare_dataset

pd.set_option("display.precision", 3)
datasets = [d.strip() for d in DATASETS.split(",")]
models = list(benchmark.published.MODEL_LABELS) if MODELS == "all" else MODELS.split(",")
lrs = benchmark.lr_grid(LR_LOW, LR_HIGH, N_LRS)
out = Path(OUT) if OUT else Path(tempfile.mkdtemp(prefix="spared_benchmark_"))
print(f"{len(datasets)} datasets × {len(models)} models × {TARGETS} · learning rates {lrs} · results in {out}")

# %% [markdown]
# ## The protocol
#
# The benchmark is the same recipe for every model, so that differences come from the models and
# not from how they were trained:
#
# - **Splits.** Every dataset assigns whole slides to train, validation and test (`obs['split']`,
#   chapter 1). Only 11 of the 26 SpaRED datasets have a test split; the others report validation
#   metrics, and the table's `eval_split` column says which.
# - **Learning rate.** The authors searched a learning rate per dataset but did not publish the grid
#   or the values. We train each model once per point of a log grid (`lr_grid`) and keep the one with
#   the lowest **validation** MSE; the test split is never used to choose.
# - **Two targets.** With that learning rate, each model is trained on `raw` data (`c_d_log1p`: the
#   median-completed, batch-corrected log expression) and on `completed` data (`c_t_log1p`: missing
#   entries filled by SpaCKLE, chapter 3). The checkpoint with the lowest validation MSE over
#   `STEPS` steps is kept.
# - **Observed-only metrics.** MSE, MAE, PCC and R² are computed only where the gene was actually
#   measured (`layers['mask']`): a model is never rewarded for reproducing a filled-in value.
#
# One training run is a *cell* of the results table; `run_benchmark` writes each finished cell at once.

# %% [markdown]
# ## Data
#
# `prepare_dataset` loads a dataset, preprocesses it (chapter 2), trains SpaCKLE and completes it
# (chapter 3) and cuts the 224-px patches, caching everything under `<out>/prepared/`. The cache
# matters: a resumed benchmark must train on the same SpaCKLE completion as the runs already in
# the table. In fast mode `crop_slides` keeps a contiguous block of `MAX_SPOTS` spots per slide.

# %%
t0 = time.perf_counter()
data = {}
for name in datasets:
    adata, patches = prepare_dataset(name, targets=TARGETS.split(","), out_dir=out, seed=SEED,
                                     spackle_steps=SPACKLE_STEPS, device=DEVICE, progress=False,
                                     synthetic_kwargs={"n_spots": SYNTHETIC_SPOTS})
    if MAX_SPOTS:
        adata, patches = crop_slides(adata, MAX_SPOTS, patches)
    data[name] = (adata, patches)
prep_s = time.perf_counter() - t0
pd.DataFrame({name: {"spots": a.n_obs, "genes": a.n_vars, "slides": a.obs["slide_id"].nunique(),
                     "test split": "test" in set(a.obs["split"])} for name, (a, _) in data.items()}).T

# %% [markdown]
# ## Running the benchmark
#
# One call runs the whole grid: for each dataset, the learning-rate search of every model and
# target, then the final runs. `fit_options` passes settings to the trainer that do not change what
# a run means (how often to validate, progress bars). In fast mode the grid has a single learning
# rate, so each search run is also its final run (the table marks such rows `reused_from='search'`
# instead of training them twice); the tests of `spared_lib.benchmark` cover the full search.

# %%
settings = dict(targets=TARGETS, lrs=lrs, steps=STEPS, seeds=(SEED,), size=SIZE,
                pretrained=PRETRAINED, batch_size=BATCH_SIZE, device=DEVICE,
                fit_options={"val_every": VAL_EVERY, "progress": False, "verbose": False})
t0 = time.perf_counter()
table = benchmark.run_benchmark(data, models, out=out, **settings)
bench_s = time.perf_counter() - t0
print(f"{len(table)} runs ({(table.status == 'ok').sum()} finished, {(table.status != 'ok').sum()} failed) "
      f"in {bench_s / 60:.1f} min; data preparation took {prep_s / 60:.1f} min")

# %% [markdown]
# The table is tidy: one row per run, with the settings that identify it, every metric, the model's
# trainable parameters, the wall time and the device. Search rows are judged on `best_val_mse`.

# %%
table[["dataset", "model", "target", "stage", "lr", "best_val_mse", "MSE", "PCC-Gene",
       "n_params", "wall_time_s", "status"]].head(8)

# %% [markdown]
# ### Interrupted? Run it again
#
# The same call on the same folder reads `results.csv` and trains only the cells without a
# finished row: none after a complete run, the missing ones after a crash or a Colab
# disconnection. Runs that *failed* (an error inside a model) are retried.

# %%
t0 = time.perf_counter()
again = benchmark.run_benchmark(data, models, out=out, **settings)
print(f"second call: {len(again) - len(table)} new cells, {(table.status != 'ok').sum()} failed runs retried, "
      f"{time.perf_counter() - t0:.1f} s")

# %% [markdown]
# ## Results
#
# `final_results` keeps the final runs (averaged over seeds when there are several): one row per
# dataset, model and target.

# %%
res = benchmark.final_results(table)
res[["dataset", "model", "target", "lr", "MSE", "PCC-Gene", "R2-Gene", "n_params", "eval_split"]]

# %% [markdown]
# How much does training on SpaCKLE-completed data change each model? The difference is computed on
# the same observed entries for both targets.

# %%
gain = res.pivot_table(index=["dataset", "model"], columns="target", values=["MSE", "PCC-Gene"])
if {"raw", "completed"} <= set(res.target):
    gain = pd.DataFrame({"ΔMSE (completed − raw)": gain["MSE"]["completed"] - gain["MSE"]["raw"],
                         "ΔPCC-Gene": gain["PCC-Gene"]["completed"] - gain["PCC-Gene"]["raw"]})
    n_same = int((gain["ΔMSE (completed − raw)"].abs() < 1e-9).sum())
    print(f"{n_same} of {len(gain)} (dataset, model) pairs have identical raw and completed MSE")
gain

# %% [markdown]
# ```{note}
# SpaCKLE can only change a model's training if the loss sees the entries it filled in. Like the
# authors' trainer, `spared_lib.training.fit` computes the training MSE over every entry of the
# target layer (`observed_only_loss=True` reproduces their `robust_loss` option, which restricts it
# to observed entries and makes the two targets train identically). Metrics are observed-only
# either way. Models whose fast-mode runs barely moved from their initialisation can still show
# (nearly) identical numbers for both targets.
# ```

# %% [markdown]
# ### The paper's figures from our runs
#
# **Fig. 1b** — for each dataset, the best PCC over all models when training on raw (red) and on
# SpaCKLE-completed (blue) data.

# %%
label = " + ".join(datasets) + (" (fast mode: tiny models, few steps)" if FAST else "")
fig = plotting.plot_best_pcc(res, data_label=label)

# %% [markdown]
# **Fig. 4a** — each model's MSE divided by the best MSE on the same dataset (1 = the best model),
# with mean ± sd above each violin, and the share of datasets each model wins.

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4), dpi=100, gridspec_kw={"width_ratios": [2.2, 1]})
plotting.plot_normalised_mse(res, ax=ax1, data_label=label)
plotting.plot_best_model_pie(res, ax=ax2, data_label=label)
fig.tight_layout()

# %% [markdown]
# **Fig. 4b** — mean normalised MSE against the number of trainable parameters of the models *as
# trained here* (`size='small'` in fast mode, so far fewer than the originals).

# %%
fig = plotting.plot_mse_vs_params(res, data_label=label)

# %% [markdown]
# With a few training steps on tiny slides these figures show the machinery, not the science: the
# models have barely moved from their initialisation. The full run below reproduces the paper's
# setting.
#
# ## The published benchmark, for context
#
# The authors published the per-dataset MSE and PCC of the ten models on their project page; the
# table ships with `spared_lib` (`load_published_results`, cited in its docstring). Hist2ST was run
# on only two datasets and HisToGene on 25 of 26.

# %%
pub = benchmark.load_published_results()
print(benchmark.published.CITATION)
pub.pivot_table(index="abbreviation", columns="model", values="MSE").round(3).head(8)

# %% [markdown]
# The same figure functions draw the paper's Fig. 4 from the published numbers. The parameter
# counts of Fig. 4b are those of the original configurations (`spared_lib.models.MODELS`).

# %%
fig, axes = plt.subplots(1, 3, figsize=(17, 4.2), dpi=100, gridspec_kw={"width_ratios": [2.2, 1, 1.3]})
plotting.plot_normalised_mse(pub, ax=axes[0], data_label="published SpaRED results (26 datasets)")
plotting.plot_best_model_pie(pub, ax=axes[1], data_label="published SpaRED results")
plotting.plot_mse_vs_params(pub, ax=axes[2], data_label="published SpaRED results")
fig.tight_layout()

# %%
best_pub = benchmark.best_per_dataset(pub, "MSE").model.value_counts()
mean_norm = benchmark.normalised_mse(pub).groupby("model").MSE_norm.mean().sort_values()
print(f"lowest mean normalised MSE: {mean_norm.index[0]} ({mean_norm.iloc[0]:.3f}); "
      f"most wins: {', '.join(best_pub[best_pub == best_pub.max()].index)} ({best_pub.max()} of 26 datasets)")

# %% [markdown]
# Where we ran a SpaRED dataset ourselves, `compare_with_published` puts our numbers next to
# theirs (our PCC is `PCC-Gene`, the per-gene correlation the authors report as PCC).

# %%
cmp = benchmark.compare_with_published(res)
cmp if len(cmp) else print("No SpaRED dataset in this run (synthetic data and fixtures only): nothing to compare.")

# %% [markdown]
# ## Running the full benchmark
#
# The command line runs the same code as this chapter. **One GPU** (a Colab GPU, a workstation),
# sequentially, resuming after any interruption:
#
# ```bash
# python -m spared_lib.benchmark --datasets 10xgenomic_mouse_brain_coronal --models all \
#     --targets raw,completed --out results/ --lr-grid 1e-5:1e-3:5 --steps 1000
# ```
#
# **Many GPUs: Ray for the grid.** Each run is one [Ray Tune](https://docs.ray.io/en/latest/tune/)
# trial with one GPU (`--gpus-per-trial 1`), so a machine with 8 GPUs trains 8 runs at a time and a
# cluster spreads them over its nodes. Start Ray on the machines, then point the benchmark at it:
#
# ```bash
# ray start --head --num-gpus 8                       # head node
# ray start --address <head-ip>:6379 --num-gpus 8     # each worker node
# python -m spared_lib.benchmark --datasets all --models all --targets raw,completed \
#     --out results/ --ray --address auto --gpus-per-trial 1 --cpus-per-trial 8
# ```
#
# The driver writes each trial's row to `results/results.csv` the moment it ends; re-running the
# command resumes. Without `--address`, `--ray` starts a local Ray instance on the current machine.
#
# **One big model on several GPUs: Lightning DDP.** To train a single large run faster (e.g. ViT-B
# on the largest dataset), give the trainer several devices; Lightning runs distributed data
# parallel. Run it as a script (`python train.py`), not in a notebook, where DDP cannot spawn
# processes:
#
# ```python
# from spared_lib.training import fit
# result = fit("vit_b", adata, "c_t_log1p", steps=1000, lr=1e-4, patches=patches, devices=4)
# ```
#
# Use one or the other: Ray for many independent runs (the benchmark grid), DDP for one run that
# is too slow on one GPU.
#
# ### How long?
#
# The number of runs follows from the grid; the time per run is the one number you must measure.
# The estimate below uses an *assumed* `GPU_MINUTES_PER_RUN` (1,000 steps at batch 256 plus
# evaluation on one modern GPU); replace it with the median `wall_time_s` of your first rows.

# %%
GPU_MINUTES_PER_RUN = 10  # an assumption, not a measurement: measure yours
n_datasets, n_models, n_targets, n_lrs = 26, 10, 2, 5
runs = n_datasets * n_models * n_targets * n_lrs  # finals reuse the search run at the chosen lr
hours = runs * GPU_MINUTES_PER_RUN / 60
print(f"full SpaRED benchmark: {runs} runs ≈ {hours:.0f} GPU-hours; on 8 GPUs with Ray ≈ {hours / 8:.0f} h; "
      f"one dataset ≈ {n_models * n_targets * n_lrs * GPU_MINUTES_PER_RUN / 60:.0f} GPU-hours")
print(f"this chapter's run: {len(table)} runs, median {table.wall_time_s.median():.1f} s per run on "
      f"{table.device.iloc[0]}")

# %% [markdown]
# ## Exercises
#
# ```{admonition} Exercise 1
# Interrupt the benchmark and resume it: wrap `spared_lib.training.fit` in a function that raises
# `KeyboardInterrupt` on its third call, run a fresh benchmark into a new folder with it (`fit_fn=`),
# then run again with the real `fit`. How many runs does the second call train?
# ```
#
# ````{dropdown} Solution
# ```python
# from spared_lib.training import fit
# calls = []
# def flaky_fit(*args, **kw):
#     calls.append(1)
#     if len(calls) == 3:
#         raise KeyboardInterrupt
#     return fit(*args, **kw)
# folder = Path(tempfile.mkdtemp())
# try:
#     benchmark.run_benchmark(data, models[:2], out=folder, fit_fn=flaky_fit, **settings)
# except KeyboardInterrupt:
#     print("interrupted after", len(benchmark.ResultsStore(folder / "results.csv")), "runs")
# resumed = benchmark.run_benchmark(data, models[:2], out=folder, **settings)
# ```
# The two runs finished before the interrupt are in `results.csv`; the second call trains only the
# remaining ones, and the final table is the one an uninterrupted run gives.
# ````
#
# ```{admonition} Exercise 2
# The paper searched one learning rate per dataset and reused it for both targets. Run that protocol
# with `search_target="raw"` (into a new folder) and count the runs of each stage.
# ```
#
# ````{dropdown} Solution
# ```python
# paper = benchmark.run_benchmark(data, models, out=Path(tempfile.mkdtemp()),
#                                 search_target="raw", **settings)
# paper.groupby(["stage", "target"]).size()
# ```
# The search now runs on `raw` only; `completed` gets one final run per model at the raw learning
# rate, so the grid costs `models × (lrs + 1)` runs per dataset instead of `models × 2 × lrs`.
# ````
#
# ```{admonition} Exercise 3
# From the published table, which dataset gains most from using the best model instead of the
# median model (ratio of the median MSE to the best MSE)?
# ```
#
# ````{dropdown} Solution
# ```python
# ratio = pub.groupby("abbreviation").MSE.agg(lambda s: s.median() / s.min()).sort_values()
# ratio.tail(3)
# ```
# ````
#
# ## Summary
#
# - The benchmark protocol: a learning-rate search on validation MSE, then final runs on raw and on
#   SpaCKLE-completed targets, scored on observed entries of the test (or validation) split.
# - `run_benchmark` (or `python -m spared_lib.benchmark`) writes one tidy row per run as soon as it
#   ends, so an interrupted benchmark resumes without recomputing anything.
# - `--ray` runs the same cells as Ray Tune trials with one GPU each, on one machine or a cluster;
#   Lightning DDP (`fit(..., devices=N)`) is for one large run.
# - `spared_lib.plotting` draws the paper's Fig. 1b, 4a and 4b from our results or from the published
#   table, which ships with the library for comparison.
