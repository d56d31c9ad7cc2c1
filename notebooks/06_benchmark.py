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
# **Aim:** run the SpaRED benchmark protocol {cite}`mejia2024spared` — one learning-rate search per
# dataset, then every model trained on raw and on SpaCKLE-completed expression — into one tidy,
# resumable results table; read the results against the train-mean predictor; know what each model
# costs in memory and GPU time; and run the full grid on Colab, a workstation or a cluster.
#
# ```{admonition} What you need
# :class: tip
# - **Compute:** the defaults are the paper's protocol on the her2st sections with H&E (paper-size
#   models, ImageNet weights, 1,000 steps of 256 patches, a 3-point learning-rate grid searched on
#   raw data, SpaCKLE at 10,000 steps) for the first of the grid's Colab sessions: ViT-B+Δ, SEPAL,
#   HisToGene, ShuffleNet and EGGN, estimated at {glue:text}`session1_hours` hours on a free Colab
#   T4 (the arithmetic is below). The other models are the next sessions' (their commands are
#   below); the results table lives on Google Drive, so each session continues the last.
# - **Fast mode** (what the published book runs, on a CPU in a few minutes) checks that the machinery
#   runs — small models, 2 steps — and is shown collapsed, as what it is. The results this chapter
#   discusses come from a real run committed with the book (paper-size models on a CPU,
#   provenance below).
# - **Data:** `DATASETS` below: `her2st_hne` (her2st patient C, sections C2 and C3 train, C4
#   validation: the only her2st sections with H&E), SpaRED registry keys, or a dataset folder.
# - **Before:** chapters 3 (SpaCKLE), 4 (patch models) and 5 (context models).
# ```

# %% tags=["remove-cell"]
# Colab only: install spared_lib from the repository (Colab's own torch and torchvision are kept),
# and keep the results on Google Drive, which survives the session.
import sys

if "google.colab" in sys.modules:
    import subprocess

    REPOSITORY = "https://github.com/spared-book/spared-book"  # = repository.url in _config.yml
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"spared-lib @ git+{REPOSITORY}"],
                   check=True)
    from google.colab import drive

    drive.mount("/content/drive")

# %% [markdown]
# ## Parameters
#
# The defaults are the paper's settings for the first Colab session of one dataset's benchmark
# (`MODELS`: the rest of the grid is the next sessions'). The book runs this notebook with
# `FAST = True` and the small values of `notebooks/fast_params.yml`. `OUT` is the
# results folder; empty means Google Drive on Colab (`MyDrive/spared-book/benchmark`) and
# `results/benchmark` elsewhere.

# %% tags=["parameters"]
DATASETS = "her2st_hne"
MODELS = "vit_b_delta,sepal,histogene,shufflenet,eggn"   # session 1 of the grid on a T4 (see below)
TARGETS = "raw,completed"
LR_LOW = 1e-5
LR_HIGH = 1e-3
N_LRS = 3
STEPS = 1000
SPACKLE_STEPS = None      # None: the library's default, the paper's 10,000
SIZE = "paper"
PRETRAINED = "imagenet"
BATCH_SIZE = 256
MICRO_BATCH = "auto"      # micro-batches that fit the GPU; the effective batch stays BATCH_SIZE
VAL_EVERY = 100
MAX_SPOTS = 0             # > 0: keep that many central spots per slide (a quick look at big slides)
MAX_HOURS = 11.0          # stop starting runs after this long (a Colab session lasts at most 12 h)
DEVICE = "auto"
OUT = ""
SEED = 0
FAST = False

# %%
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from spared_lib import benchmark, plotting
from spared_lib.data import crop_slides
from spared_lib.models import MODELS as REGISTRY
from spared_lib.resources import load_result

glue = plotting.glue  # the numbers in the prose come from the cells (myst-nb); on Colab it shows them

pd.set_option("display.precision", 3)
datasets = [d.strip() for d in DATASETS.split(",")]
targets = benchmark.parse_targets(TARGETS)
models = list(REGISTRY) if MODELS == "all" else [m.strip() for m in MODELS.split(",")]
lrs = benchmark.lr_grid(LR_LOW, LR_HIGH, N_LRS)
if OUT:
    out = Path(OUT)
elif FAST:
    out = Path(tempfile.mkdtemp(prefix="spared_benchmark_"))
elif Path("/content/drive/MyDrive").is_dir():  # Google Drive, mounted by the Colab cell above
    out = Path("/content/drive/MyDrive/spared-book/benchmark")
else:
    out = Path("results/benchmark")
print(f"{len(datasets)} dataset(s) × {len(models)} models × {targets} · learning rates {lrs}")

# %% [markdown]
# ## The protocol
#
# The benchmark is the same recipe for every model, so that differences come from the models and
# not from how they were trained:
#
# - **Splits.** Every dataset assigns whole slides to train, validation and test (`obs['split']`,
#   chapter 1). Only 11 of the 26 SpaRED datasets have a test split; the others report validation
#   metrics, and the table's `eval_split` column says which. her2st's three sections with H&E give
#   C2 and C3 to training and C4 to validation.
# - **Learning rate, once per dataset.** The authors "search for the optimal learning rate in every
#   dataset, and then, with this value fixed, explore two training scenarios". `run_benchmark` trains
#   each model once per point of a log grid (`lr_grid`) on the **raw** target, keeps the rate with
#   the lowest **validation** MSE, and reuses it for the completed target, so raw and completed differ
#   in their data only. The test split is never used to choose.
# - **Two targets.** `raw` is `c_d_log1p` (median-completed, batch-corrected log expression);
#   `completed` is `c_t_log1p` (missing entries filled by SpaCKLE trained 10,000 steps, chapter 3).
#   The checkpoint with the lowest validation MSE over `STEPS` steps is kept.
# - **Observed-only metrics.** MSE, MAE, PCC and R² count only entries that were measured
#   (`layers['mask']`): a model is never rewarded for reproducing a filled-in value.
# - **SEPAL on a trained ViT-B+Δ.** SEPAL refines a trained ViT-B+Δ (its stage 1). Each SEPAL run
#   takes the ViT-B+Δ run of the same dataset, target, learning rate and seed — the grid's own, or one
#   trained for it first (stage `stage1`) — and its row names that run (`stage1_run`).
# - **Batch 256, in pieces where needed.** A step sees 256 patches. Where they do not fit the GPU at
#   once, `micro_batch_size='auto'` measures the model's memory per patch before training and splits
#   the step into micro-batches whose gradients add up to the same step. HisToGene and Hist2ST take
#   one whole slide per step, as their authors trained them, or the largest contiguous crop that fits.
#
# One training run is a *cell* of the results table; `run_benchmark` writes each finished cell at once.

# %% [markdown]
# ## Data
#
# `prepare_dataset` loads a dataset, preprocesses it (chapter 2), trains SpaCKLE and completes it
# (chapter 3) and cuts the 224-px patches, caching everything under `<out>/prepared/`. The cache
# matters: a resumed benchmark must train on the same SpaCKLE completion as the runs already in
# the table.

# %%
t0 = time.perf_counter()
data = {}
for name in datasets:
    adata, patches = benchmark.prepare_dataset(name, targets=targets, out_dir=out, seed=SEED,
                                               spackle_steps=SPACKLE_STEPS, device=DEVICE, progress=False)
    if MAX_SPOTS:
        adata, patches = crop_slides(adata, MAX_SPOTS, patches)
    data[name] = (adata, patches)
prep_s = time.perf_counter() - t0
pd.DataFrame({name: {"spots": a.n_obs, "genes": a.n_vars, "slides": a.obs["slide_id"].nunique(),
                     **a.obs["split"].value_counts().to_dict()} for name, (a, _) in data.items()}).T

# %% [markdown]
# Every results table below carries the predictor a model must beat: each gene's mean over the
# training spots (`train_mean_results`). A model that learnt nothing from the image predicts, at
# best, that.

# %%
baseline = benchmark.train_mean_results(data, targets)
baseline[["dataset", "model", "target", "MSE", "PCC-Gene", "R2-Gene", "eval_split"]]

# %% [markdown]
# ## What the grid costs, and how it fits Colab sessions
#
# `count_runs` gives the number of training runs of a grid before any runs: per model, one run per
# learning rate on raw data, one completed run at the chosen rate (the raw final run *is* the
# search run at that rate, so it is not trained twice), and for SEPAL the ViT-B+Δ stage-1 runs the
# grid does not already have. Here for the whole benchmark of the dataset, all ten models:

# %%
# the grid to cost: this notebook's learning rates and steps, or in fast mode the defaults'
grid = (dict(n_lrs=3, steps=1000, batch_size=256) if FAST
        else dict(n_lrs=len(lrs), steps=STEPS, batch_size=BATCH_SIZE))
lr_range = "1e-5:1e-3" if FAST else f"{LR_LOW:g}:{LR_HIGH:g}"
every = list(REGISTRY)
runs = benchmark.count_runs(every, targets, n_lrs=grid["n_lrs"], n_datasets=len(datasets))
print(f"{len(datasets)} dataset(s), {grid['n_lrs']} learning rates, {grid['steps']} steps of "
      f"{grid['batch_size']} patches, targets {targets}")
runs.T

# %% [markdown]
# The time of one run is its work — forward and backward FLOPs per patch at paper size, measured by
# `benchmarks/train_memory.py` — times 256 patches and 1,000 steps, divided by what the GPU sustains;
# SpaCKLE's 10,000 steps come first, once per dataset, for the completed target. The GPU is the
# free Colab one, a T4 with 16 GB. What it sustains is an assumption: NVIDIA measured 1,198
# images/s of mixed-precision ResNet-50 inference on a T4 (DeepLearningExamples, `resnet50v1.5`
# README), about 9.8 TFLOP/s; we assume training sustains half of that. Replace the estimate with
# the `wall_time_s` of your first rows.

# %%
memory = load_result("train_memory")["results"]
gpu = benchmark.COLAB_T4
cost = benchmark.grid_cost(memory, every, targets, n_datasets=len(datasets), gpu=gpu, **grid)
names = {**{m: e.display for m, e in REGISTRY.items()}, "spackle": "SpaCKLE (for completed)", "total": "total"}
vit = cost.loc["vit_b"]
glue("all_hours", f"{cost.loc['total', 'hours']:.0f}", display=False)
glue("t4_tflops", f"{gpu.tflops:.1f}", display=False)
glue("vit_gflop", f"{vit.gflop_per_step / grid['batch_size']:.0f}", display=False)
glue("vit_min", f"{vit.min_per_run:.0f}", display=False)
glue("vit_hours", f"{vit.hours:.1f}", display=False)
glue("too_big", ", ".join(REGISTRY[m].display for m in every if not cost.loc[m, "fits"]) or "none", display=False)
cost.assign(model=cost.index.map(names)).set_index("model").round(2)

# %% [markdown]
# The arithmetic for ViT-B: {glue:text}`vit_gflop` GFLOP per patch × 256 patches × 1,000 steps at
# {glue:text}`t4_tflops` TFLOP/s ≈ {glue:text}`vit_min` minutes per run, and four runs
# ({glue:text}`vit_hours` hours). All ten models are about {glue:text}`all_hours` T4-hours: more
# than one Colab session (at most 12 hours, fewer when the free tier is busy). A model whose weights,
# gradients and Adam state alone exceed the T4's 15 GB cannot train on it at paper size at all —
# {glue:text}`too_big` (the paper, too, reports Hist2ST on two datasets only): it needs a larger GPU
# (an L4 or A100 runtime).
#
# `plan_sessions` packs the models into sessions of at most 8 estimated hours (ViT-B+Δ and SEPAL,
# which refines it, in the same one). **This notebook's defaults are session 1**; the table on Google
# Drive keeps every finished run, and `MAX_HOURS` stops the grid before Colab's limit if the
# estimate was optimistic.

# %%
plan = benchmark.plan_sessions(cost, hours=8)
drive_out = "/content/drive/MyDrive/spared-book/benchmark"
plan["command"] = [f"python -m spared_lib.benchmark --datasets {DATASETS} --models {','.join(ms)} "
                   f"--targets {TARGETS} --lr-grid {lr_range}:{grid['n_lrs']} --out {drive_out} "
                   f"--max-hours 11" for ms in plan.models]
glue("n_sessions", f"{int(plan.fits.sum())}", display=False)
glue("session1_hours", f"{plan.hours.iloc[0]:.1f}", display=False)
with pd.option_context("display.max_colwidth", None):
    display(plan.assign(models=plan.models.map(lambda ms: ", ".join(REGISTRY[m].display for m in ms)))
            [["session", "models", "hours", "fits"]])

# %% [markdown]
# Session 1 is about {glue:text}`session1_hours` hours, and the whole grid {glue:text}`n_sessions`
# sessions on a T4 (plus one on a larger GPU for what does not fit). **To continue next time**, open
# this notebook again with `MODELS` set to the next session's models and run it top to bottom, or
# run that session's command in a terminal cell; every finished run is read from the table on Drive
# and only the missing ones are trained. The commands:

# %%
for cmd in plan.command:
    print(cmd)

# %% [markdown]
# ## Running the benchmark
#
# One call runs the whole grid: for each dataset the learning-rate search of every model on raw
# data, then the final runs. `fit_options` passes settings to the trainer that do not change what a
# run means (how often to validate, progress output).

# %%
settings = dict(targets=targets, lrs=lrs, steps=STEPS, seeds=(SEED,), size=SIZE, pretrained=PRETRAINED,
                batch_size=BATCH_SIZE, micro_batch_size=MICRO_BATCH, device=DEVICE, max_hours=MAX_HOURS,
                progress=not FAST, fit_options={"val_every": VAL_EVERY, "progress": False, "verbose": False})
if SPACKLE_STEPS is not None:
    print(f"SpaCKLE trained {SPACKLE_STEPS} steps (the paper: 10,000)")

# %% [markdown]
# ```{admonition} Fast mode: a machinery check, not results
# :class: warning
# In the published book the next cell runs every model at a small size for 2 steps on CPU. That
# checks that all ten models, both targets, the stage-1 hand-over to SEPAL and the table work end to
# end; the models have not learnt anything, so the output (collapsed) lists what ran, not how well.
# With the defaults the same cell is the real benchmark.
# ```

# %% tags=["hide-output"]
t0 = time.perf_counter()
table = benchmark.run_benchmark(data, models, out=out, **settings)
bench_s = time.perf_counter() - t0
print(f"{len(table)} runs ({(table.status == 'ok').sum()} finished, {(table.status == 'failed').sum()} failed, "
      f"{(table.status == 'does_not_fit').sum()} too large for this device) in {bench_s / 60:.1f} min; "
      f"data preparation took {prep_s / 60:.1f} min")
table[["model", "target", "stage", "lr", "status", "batching", "stage1_run", "wall_time_s", "peak_memory_gb"]]

# %% [markdown]
# The table is tidy: one row per run, with the settings that identify it, every metric, the model's
# trainable parameters, the wall time and peak memory, how the run batched its input, which weights
# it started from and, for SEPAL, which ViT-B+Δ run it refined.
#
# ### Interrupted? Run it again
#
# The same call on the same folder reads `results.csv` and trains only the cells without a
# finished row: none after a complete run, the missing ones after a crash or a Colab
# disconnection. Runs that *failed* (an error inside a model) are retried, and so are runs with
# status `does_not_fit` (the memory planner found the device too small, and its figures are in
# `error`): on a larger device the same call trains them.

# %%
t0 = time.perf_counter()
again = benchmark.run_benchmark(data, models, out=out, **{**settings, "max_hours": None})
print(f"second call: {len(again) - len(table)} new runs, {time.perf_counter() - t0:.1f} s")

# %% [markdown]
# ## Results of a real run
#
# Raw versus completed, and the ranking of models, need trained models. This book's CPU can afford a
# real run of the protocol for the models that train at paper size in minutes there — ShuffleNet
# (a patch model, 0.4 M parameters) and EGGN (a context model: a graph over the spots of a slide, fed
# with exemplars, the most similar training spots of the other slide, found in frozen ResNet-18
# features) — with fewer, smaller steps than the paper, SpaCKLE trained 1,000 steps instead of
# 10,000, and from random initialisation: the machine that made it is offline, so it had no ImageNet
# weights, and EGGN's exemplar features come from a random ResNet-18. The results are committed with
# the library (`load_result("benchmark_her2st")`), with how they were made:

# %%
real = load_result("benchmark_her2st")
prov, rr = real["provenance"], real["results"]
s = rr["settings"]
print(f"commit {prov['commit'][:10]} · {prov['date']} · {prov['machine']['cpu']} ({prov['machine']['cpus']} cores, "
      f"load {prov['load_average_1_5_15_min']}) · command: {prov['command']}")
print(f"{s['dataset']}: {s['spots']} spots × {s['genes']} genes · models {', '.join(s['models'])} · "
      f"{s['steps']} steps of {s['batch_size']} patches · learning rates {s['lrs']} searched on raw · "
      f"pretrained={s['pretrained']} · SpaCKLE {s['spackle_steps']} · {s['total_s'] / 60:.0f} min in all")
real_res = pd.DataFrame(rr["final"])
real_base = pd.DataFrame(rr["train_mean"])
cols = ["model", "target", "lr", "MSE", "PCC-Gene", "R2-Gene", "n_params", "wall_time_s"]
shown = pd.concat([real_res, real_base], ignore_index=True)[cols]
(shown.assign(model=shown.model.map(lambda m: REGISTRY[m].display if m in REGISTRY else "train mean"))
 .style.format({"lr": "{:g}", "MSE": "{:.3f}", "PCC-Gene": "{:.3f}", "R2-Gene": "{:.3f}", "n_params": "{:,.0f}",
                "wall_time_s": "{:.0f}"}, na_rep="—").hide(axis="index"))

# %%
best = real_res.loc[real_res.MSE.idxmin()]
floor = real_base.set_index("target").MSE
gain = real_res.pivot_table(index="model", columns="target", values="MSE")
glue("real_best", REGISTRY[best.model].display, display=False)
glue("real_best_mse", f"{best.MSE:.3f}", display=False)
glue("real_best_target", best.target, display=False)
glue("real_floor", f"{floor[best.target]:.3f}", display=False)
glue("real_steps", f"{s['steps']}", display=False)
beats = (real_res.MSE.to_numpy() < floor.reindex(real_res.target).to_numpy())
glue("real_beat", f"{int(beats.sum())} of {len(real_res)}", display=False)
delta = (gain["completed"] - gain["raw"]).rename(index=lambda m: REGISTRY[m].display)
glue("real_delta", ", ".join(f"{m} {d:+.3f}" for m, d in delta.items()), display=False)
fig = plotting.plot_raw_vs_completed(real_res, real_base, data_label=f"{s['dataset']}: committed CPU run, "
                                     f"{s['steps']} steps of {s['batch_size']}")

# %% [markdown]
# After {glue:text}`real_steps` steps, {glue:text}`real_beat` runs beat the train-mean predictor on
# the validation section; the best is {glue:text}`real_best` trained on the {glue:text}`real_best_target`
# target (MSE {glue:text}`real_best_mse` against the train mean's {glue:text}`real_floor`). Training on
# SpaCKLE-completed instead of raw data changed the validation MSE by {glue:text}`real_delta`
# (completed − raw; negative = completion helped). One dataset, one seed and two models are not the
# paper's 26 datasets: read these as what this protocol gives on her2st, not as a ranking of the
# ten models. The paper's own table is further below; the command that regenerates the full grid
# on a GPU is the one above.

# %% [markdown]
# ### Your run
#
# With the defaults (`FAST = False`), the cell below shows the results of the grid this notebook
# just trained, with the same baseline; in fast mode there are none to show.

# %%
res = benchmark.final_results(table)
if FAST:
    print("Fast mode: the runs above are a machinery check (small models, 2 steps), not results.")
else:
    mine = pd.concat([res, baseline], ignore_index=True)
    display(mine[["dataset", "model", "target", "lr", "MSE", "PCC-Gene", "R2-Gene", "n_params", "stage1_run"]])
    for name in datasets:
        plotting.plot_raw_vs_completed(res[res.dataset == name], baseline[baseline.dataset == name],
                                       data_label=f"{name}: this run")

# %% [markdown]
# ## Memory per model at paper size
#
# `benchmarks/train_memory.py` builds every model at paper size and measures, on a CPU, what one
# training step needs: the weights, what does not shrink with the batch (gradients and Adam's two
# moments), the activations autograd keeps per patch (per spot for the slide models, at the size of
# a her2st section), and one real step at a small batch to check the accounting. From these follows
# the peak of a step at the paper's batch of 256, and the micro-batch that fits a 16 GB GPU.

# %%
mem = load_result("train_memory")
mp = mem["provenance"]
rows = pd.DataFrame([r for r in mem["results"]["models"] if "error" not in r]).set_index("model")
usable = 0.75 * gpu.memory_gb  # the share training.memory plans with
fit_gpu = ((usable - rows.weights_gb - rows.fixed_gb) / rows.act_gb_per_sample).clip(lower=0)
mem_table = pd.DataFrame({
    "model": rows.display, "params": rows.params, "weights GB": rows.weights_gb, "grads + Adam + step GB": rows.fixed_gb,
    "activations GB per patch/spot": rows.act_gb_per_sample,
    "peak of one step (fp32) GB": rows.peak_256_gb, "at": rows.peak_256_batch,
    "measured step GB": rows.get("step_peak_gb"), "predicted step GB": rows.get("step_model_gb"),
    "fp32 micro-batch on a T4": fit_gpu.where(rows.batching == "spot").round().astype("Int64"),
})
print(f"measured on {mp['machine']['cpu']} ({mp['date']}, commit {mp['commit'][:10]}): fp32 on CPU. "
      "GPU figures need a GPU, and none was lent when this table was made.")
mem_table.set_index("model").round(3)

# %% [markdown]
# Read the table with its limits in mind. The activations are counted in fp32; on a GPU, mixed
# precision stores most of them in 16 bits, so a T4 fits roughly twice the micro-batch of the last
# column, and cuDNN workspaces and the allocator add their own share — which is why `'auto'`
# measures on the device it will train on rather than reading this table. No GPU was available
# to this book's build: `python benchmarks/train_memory.py --devices cuda` measures the same columns
# on one. The measured step (resident memory of the whole process, Python and libraries included)
# stays below the predicted one because the prediction keeps every activation alive until the last
# one, while backward frees them as it goes.

# %% [markdown]
# ## The published benchmark, for context
#
# The authors published the per-dataset MSE and PCC of the ten models on their project page; the
# table ships with `spared_lib` (`load_published_results`, cited in its docstring). Hist2ST was run
# on only two datasets and HisToGene on 25 of 26.

# %%
pub = benchmark.load_published_results()
print(benchmark.CITATION)
pub.pivot_table(index="abbreviation", columns="model", values="MSE").round(3).head(8)

# %% [markdown]
# The paper's figures from the published numbers: **Fig. 4a** — each model's MSE divided by the best
# MSE on the same dataset (1 = the best model), with mean ± sd above each violin, and the share of
# datasets each model wins; **Fig. 4b** — the mean normalised MSE against the number of trainable
# parameters of the original configurations (`spared_lib.models.MODELS`).

# %%
fig = plotting.plot_normalised_mse(pub, data_label="published SpaRED results (26 datasets)")
fig.set_size_inches(9, 4)

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.4), dpi=100, layout="constrained",
                               gridspec_kw={"width_ratios": [1, 1.4]})
plotting.plot_best_model_pie(pub, ax=ax1, data_label="published SpaRED results")
fig = plotting.plot_mse_vs_params(pub, ax=ax2, data_label="published SpaRED results")  # shown once, at the end

# %%
best_pub = benchmark.best_per_dataset(pub, "MSE").model.value_counts()
mean_norm = benchmark.normalised_mse(pub).groupby("model").MSE_norm.mean().sort_values()
glue("pub_best", REGISTRY[mean_norm.index[0]].display, display=False)
glue("pub_best_norm", f"{mean_norm.iloc[0]:.3f}", display=False)
glue("pub_most_wins", ", ".join(REGISTRY[m].display for m in best_pub[best_pub == best_pub.max()].index),
     display=False)
glue("pub_wins", f"{best_pub.max()}", display=False)

# %% [markdown]
# In the published table the lowest mean normalised MSE is {glue:text}`pub_best`'s
# ({glue:text}`pub_best_norm`), and {glue:text}`pub_most_wins` wins the most datasets
# ({glue:text}`pub_wins` of 26). Where we ran a SpaRED dataset ourselves, `compare_with_published`
# puts our numbers next to theirs (our PCC is `PCC-Gene`, the per-gene correlation the authors
# report as PCC); her2st is not one of the 26.

# %%
cmp = benchmark.compare_with_published(res)
cmp if len(cmp) else print("No SpaRED dataset in this run (her2st is not one of the 26): nothing to compare.")

# %% [markdown]
# ## Running the full benchmark
#
# The command line runs the same code as this chapter. **One GPU** (a Colab GPU, a workstation),
# sequentially, resuming after any interruption — the paper's protocol is its default:
#
# ```bash
# python -m spared_lib.benchmark --datasets 10xgenomic_mouse_brain_coronal --models all \
#     --targets raw,completed --out results/
# ```
#
# **Many GPUs: Ray for the grid.** Each run is one [Ray Tune](https://docs.ray.io/en/latest/tune/)
# trial with one GPU (`--gpus-per-trial 1`), so a machine with 8 GPUs trains 8 runs at a time and a
# cluster spreads them over its nodes. Start Ray on the machines, then point the benchmark at it
# (`--out` on storage every node sees, so that SEPAL finds its stage-1 checkpoints):
#
# ```bash
# ray start --head --num-gpus 8                       # head node
# ray start --address <head-ip>:6379 --num-gpus 8     # each worker node
# python -m spared_lib.benchmark --datasets all --models all --targets raw,completed \
#     --out /shared/results/ --ray --address auto --gpus-per-trial 1 --cpus-per-trial 8
# ```
#
# The driver writes each trial's row to `results.csv` the moment it ends; re-running the command
# resumes. Without `--address`, `--ray` starts a local Ray instance on the current machine.
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
# is too slow on one GPU. The full SpaRED grid — 26 datasets — is
# {glue:text}`full_runs` runs, about {glue:text}`full_hours` T4-hours by the estimate above.

# %%
full = benchmark.grid_cost(memory, every, targets, n_lrs=5, n_datasets=26, steps=1000, batch_size=256, gpu=gpu)
glue("full_runs", f"{int(full.loc['total', 'runs']):,}", display=False)
glue("full_hours", f"{full.loc['total', 'hours']:,.0f}", display=False)
print(f"26 datasets, 5 learning rates: {int(full.loc['total', 'runs']):,} runs ≈ "
      f"{full.loc['total', 'hours']:,.0f} T4-hours ≈ {full.loc['total', 'hours'] / 8 / 24:.1f} days on 8 GPUs")

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
# The paper searches the learning rate once, on raw data. Run a search per target instead
# (`search_target=None`, into a new folder): how many runs does it cost, and does any model choose a
# different learning rate for the completed target?
# ```
#
# ````{dropdown} Solution
# ```python
# each = benchmark.run_benchmark(data, models, out=Path(tempfile.mkdtemp()),
#                                **{**settings, "search_target": None})
# print(benchmark.count_runs(models, targets, n_lrs=len(lrs), search_target=None).loc["total", "runs"])
# chosen = benchmark.final_results(each).pivot_table(index="model", columns="target", values="lr")
# chosen[chosen.raw != chosen.completed]
# ```
# Both targets are searched, so the grid costs `models × 2 × lrs` runs instead of
# `models × (lrs + 1)`. Where a model picks another rate for the completed target, its raw vs
# completed comparison mixes two changes — the data and the learning rate — which is why the paper
# fixes the rate first.
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
# - The protocol: one learning-rate search per dataset on raw data, then final runs on raw and on
#   SpaCKLE-completed targets at that rate, scored on observed entries of the test (or validation)
#   split, always beside the train-mean predictor.
# - `run_benchmark` (or `python -m spared_lib.benchmark`) writes one tidy row per run as soon as it
#   ends, so an interrupted benchmark — a Colab session that ended — resumes without recomputing
#   anything; `MAX_HOURS` / `--max-hours` stops it in time.
# - SEPAL refines the ViT-B+Δ run of the same settings; micro-batches keep the batch of 256 on a GPU
#   that cannot hold it; the slide models see whole slides where they fit.
# - `count_runs` and `grid_cost` say what a grid costs before it runs; `--ray` spreads it over many
#   GPUs, Lightning DDP (`fit(..., devices=N)`) speeds up one large run.
