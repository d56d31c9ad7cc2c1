# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Patch models: from an H&E patch to a gene vector
#
# **Aim:** train the four benchmark models that look at one spot's patch at a time — ShuffleNet,
# ViT-B, ViT-B+Δ and ST-Net — with one trainer, score them with SpaRED's metrics on observed
# entries only against the simplest predictor there is (the training mean), and see what three
# design choices change: where the output layer starts, predicting deviations from the mean (Δ),
# and test-time averaging {cite}`mejia2024spared`.
#
# ```{admonition} What you need
# :class: tip
# - **Compute:** fast mode runs on a CPU in about 3 minutes: real H&E from the her2st patient C
#   sections (C2 and C3 train, C4 validation), ShuffleNet at paper size and small ViT/DenseNet
#   variants, 64-px patches, 200 steps of 32 patches each, no pretrained weights. The full run (a
#   SpaRED dataset, ImageNet weights, paper-size networks, 1,000 steps of 256 patches at 224 px)
#   needs a GPU: about 30–60 minutes on a Colab T4, most of it the two ViT-B models (86 M
#   parameters each).
# - **RAM:** 2 GB (fast); the real dataset's patches take 150 KB per spot (≈ 1 GB for 7,000 spots).
# - **Data:** `DATASET` below: a SpaRED key, or `"her2st_hne"` (the her2st sections with H&E,
#   downloaded from the authors' repository the first time, read from `../shared/data` where that
#   folder exists).
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
# The defaults are the full run on a GPU. The book and its tests inject `FAST = True`,
# `DATASET = "her2st_hne"`, `SIZE = "small"`, no pretrained weights, 64-px patches and 200 steps
# of 32 patches with papermill.

# %% tags=["parameters"]
DATASET = "10xgenomic_human_breast_cancer"
FAST = False
SIZE = "paper"
PRETRAINED = "imagenet"
STEPS = 1000
VAL_EVERY = 100
BATCH_SIZE = 256
PATCH_SIZE = 224
TARGET_LAYER = "c_d_log1p"
DEVICE = "auto"
SEED = 0

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from spared_lib import data, plotting, preprocessing
from spared_lib.metrics import compute_metrics, per_gene_metrics
from spared_lib.models import MODELS, PATCH_MODELS, build_model, count_parameters
from spared_lib.preprocessing import IMAGENET_MEAN, IMAGENET_STD, dihedral
from spared_lib.training import fit, normalise, predict, random_dihedral

glue = plotting.glue  # the book's numbers in the prose come from the cells (myst-nb)

torch.manual_seed(SEED)
if FAST:
    # CI shares 2 CPU cores between jobs: one OpenMP thread is much faster than two competing ones
    torch.set_num_threads(1)

# %% [markdown]
# ## Data
#
# A preprocessed dataset (chapter 2) and one patch per spot, aligned with `adata.obs`. Patches
# live outside the AnnData: with `path=...` they are written once to a memory-mapped `.npy` file
# and read lazily during training.

# %%
info = data.resolve_dataset(DATASET)  # the local copy where ../shared/data has it, else the download
adata = preprocessing.preprocess(data.load_dataset(info))
patches = preprocessing.extract_patches(adata, size=PATCH_SIZE)
DATA_NAME = adata.uns["dataset"]["key"]
print(DATA_NAME, adata.shape, "patches", patches.shape, f"{patches.nbytes / 1e6:.0f} MB")
adata.obs.groupby(["slide_id", "split"], observed=True).size().rename("spots").to_frame()

# %% [markdown]
# ## From a patch to a gene vector
#
# A patch model is a function from a `(3, H, W)` image to a vector of G log-expression values. The
# trainer feeds it patches normalised with ImageNet's channel means and standard deviations (what
# the pretrained backbones expect), and during training shows each patch under a random symmetry
# of the square: a histology patch has no "up", so the 4 rotations by 90° and their mirror images
# are equally valid views. Here are the 8 views of one patch:

# %%
spot = int(np.argmax(adata.obs["split"].to_numpy() == "train"))
x = normalise(torch.from_numpy(patches[spot : spot + 1]))
views = dihedral(x)
fig, axes = plt.subplots(1, 8, figsize=(12, 1.8), dpi=100)
for ax, v in zip(axes, views):
    img = v[0].permute(1, 2, 0).numpy() * np.array(IMAGENET_STD) + np.array(IMAGENET_MEAN)
    ax.imshow(np.clip(img, 0, 1))
    ax.axis("off")
_ = fig.suptitle(f"The 8 symmetries of spot {adata.obs_names[spot]} — {DATA_NAME}")

# %% [markdown]
# The augmentation draws one of them per patch and per step (`random_dihedral`); test-time
# averaging instead predicts all 8 and averages. A freshly built model already maps a batch of
# patches to a `(batch, G)` matrix:

# %%
model = build_model("shufflenet", adata.n_vars, pretrained=None, size=SIZE, image_size=PATCH_SIZE)
batch = {"image": random_dihedral(normalise(torch.from_numpy(patches[:4])))}
with torch.no_grad():
    print("input", tuple(batch["image"].shape), "-> output", tuple(model(batch).shape))

# %% [markdown]
# ## The four models side by side
#
# All four are a torchvision backbone followed by one linear layer to the G genes; what differs is
# the backbone, the training target and two details of ST-Net {cite}`he2020stnet`. Parameter counts
# are for the paper's configuration with 128 genes (built on PyTorch's `meta` device, so nothing is
# allocated) and for the configuration this run uses.

# %%
def describe(name):
    with torch.device("meta"):
        paper = build_model(name, 128, verbose=False)
    run = build_model(name, adata.n_vars, size=SIZE, verbose=False, image_size=PATCH_SIZE)
    return {"model": MODELS[name].display, "backbone": type(paper.backbone).__name__,
            "target": "Δ from train mean" if paper.uses_deltas else "log1p",
            "output bias starts at": "train mean" if paper.init_bias == "mean" else "PyTorch default",
            "optimiser": paper.optimizer, "test-time averaging": paper.test_time_augmentation,
            "params (paper, G=128)": count_parameters(paper), "original": MODELS[name].original_params,
            f"params (this run, {SIZE})": count_parameters(run), "default lr": MODELS[name].lr}


side_by_side = pd.DataFrame([describe(n) for n in PATCH_MODELS]).set_index("model")
side_by_side

# %% [markdown]
# ## Training
#
# `spared_lib.training.fit` runs the benchmark's protocol for any registered model: `STEPS`
# optimiser steps, validation MSE (observed entries only) every `VAL_EVERY` steps, keep the
# checkpoint with the lowest validation MSE, score it on the test split (validation where a
# dataset has none, as here). On a GPU it trains in mixed precision; on several GPUs Lightning runs DDP.

# %%
common = dict(steps=STEPS, patches=patches, batch_size=BATCH_SIZE, pretrained=PRETRAINED, size=SIZE,
              device=DEVICE, seed=SEED, progress=not FAST, verbose=not FAST, val_every=VAL_EVERY)
results = {}
for name in PATCH_MODELS:  # four models: a loop over models, not data
    results[name] = fit(name, adata, TARGET_LAYER, model_kwargs={"image_size": PATCH_SIZE}, **common)

# %% [markdown]
# The predictor every model has to beat is the **training mean**: each gene's mean over the
# training spots, the same for every spot. Its MSE is the variance the models must explain.

# %%
res0 = next(iter(results.values()))
split = np.asarray(adata.obs["split"].astype(str))
y = np.asarray(adata.layers[TARGET_LAYER])
observed = np.asarray(adata.layers["mask"])
train_mean = y[split == "train"].mean(0)  # over all training entries, as the models' output bias
baseline = {s: compute_metrics(y[split == s], np.broadcast_to(train_mean, y[split == s].shape),
                               observed[split == s]) for s in ("val", res0.eval_split)}
glue("level", f"{train_mean.mean():.1f}", display=False)
glue("zero_mse", f"{(y[split == 'val'] ** 2)[observed[split == 'val']].mean():.0f}", display=False)
glue("baseline_val", f"{baseline['val']['MSE']:.3f}", display=False)
fig = plotting.plot_training_curves({MODELS[n].display: r.history for n, r in results.items()},
                                    data_label=DATA_NAME)
_ = fig.axes[0].axhline(baseline["val"]["MSE"], color="k", ls="--", lw=1, label="training mean (validation)")
_ = fig.axes[0].legend(frameon=False, fontsize="small")

# %% [markdown]
# ## Where the output starts: an ablation
#
# The targets are log2(TPM + 1) values, {glue:text}`level` on average here. A regression head
# initialised the PyTorch way predicts values near 0, so before its first step its validation MSE
# is about the mean squared target, {glue:text}`zero_mse` here, two orders of magnitude above the
# training mean's {glue:text}`baseline_val`: before learning anything about the tissue, such a
# model spends its first steps only climbing to the data's level, and a learning-rate search would
# favour high rates for that reason alone. The originals handle it in different ways:
#
# - **ST-Net** sets its output layer's weights to zero and its bias to the training mean of each
#   gene, so it starts as the mean predictor (bryanhe/ST-Net, `stnet/cmd/run_spatial.py`).
# - **HisToGene** and **Hist2ST** train on natural-log library-size-normalised expression, values of
#   about 0–5, for hundreds of epochs (maxpmx/HisToGene and biomed-AI/Hist2ST, `dataset.py`).
# - **EGN** and **EGGN** min–max scale each gene to [0, 1] (Yan98/EGN, `v1/dataset.py`).
# - The **Δ** models (ViT-B+Δ, SEPAL) predict deviations from the training mean, already centred.
#
# `spared_lib` follows ST-Net for every non-Δ model: the output bias starts at the training mean of
# the target over all training entries (`init_bias="mean"`, the default), the weights as PyTorch
# initialises them (ST-Net keeps its zero weights). `init_bias=None` gives the plain start. The same
# ShuffleNet, trained both ways:

# %%
plain = fit("shufflenet", adata, TARGET_LAYER, model_kwargs={"image_size": PATCH_SIZE, "init_bias": None},
            **common)
ablation = {"bias at the training mean": results["shufflenet"], "plain init (init_bias=None)": plain}
fig = plotting.plot_training_curves({k: r.history for k, r in ablation.items()}, data_label=DATA_NAME,
                                    title="ShuffleNet: output initialisation")
_ = fig.axes[0].axhline(baseline["val"]["MSE"], color="k", ls="--", lw=1, label="training mean (validation)")
_ = fig.axes[0].legend(frameon=False, fontsize="small")
first_val = {k: r.history["val_mse"].dropna().iloc[0] for k, r in ablation.items()}
best_val = {k: r.best_val_mse for k, r in ablation.items()}
pd.DataFrame({"first validation MSE": first_val, "best validation MSE": best_val,
              "training mean": baseline["val"]["MSE"]}).round(3)

# %%
mean_run, plain_run = ablation.values()
glue("abl_first_mean", f"{first_val['bias at the training mean']:.2f}", display=False)
glue("abl_first_plain", f"{first_val['plain init (init_bias=None)']:.1f}", display=False)
glue("abl_best_mean", f"{mean_run.best_val_mse:.3f}", display=False)
glue("abl_best_plain", f"{plain_run.best_val_mse:.3f}", display=False)
glue("abl_plain_verdict", "got below" if plain_run.best_val_mse < baseline["val"]["MSE"] else "never got down to",
     display=False)
glue("abl_mean_verdict", "below" if mean_run.best_val_mse < baseline["val"]["MSE"] else "above", display=False)
glue("abl_first_step", f"{int(mean_run.history['step'][mean_run.history['val_mse'].notna()].iloc[0])}",
     display=False)

# %% [markdown]
# At the first validation (step {glue:text}`abl_first_step`) the model that starts at the mean
# has a validation MSE of {glue:text}`abl_first_mean`, the plain one {glue:text}`abl_first_plain`.
# Over the whole run the plain model {glue:text}`abl_plain_verdict` the training mean's
# {glue:text}`baseline_val` (best {glue:text}`abl_best_plain`), while the one that started there
# ended {glue:text}`abl_mean_verdict` it (best {glue:text}`abl_best_mean`). The head start costs
# nothing and takes no information from the validation data: it is the training mean, the number
# the model is scored against.
#
# ## Metrics
#
# `compute_metrics` scores only the entries that were measured (`layers['mask']`): the median- or
# SpaCKLE-filled values are never treated as truth. PCC-Gene correlates each gene across spots,
# PCC-Patch each spot across genes; R² likewise; Global sums the four and subtracts MSE and MAE.
# The first row is the training-mean predictor.

# %%
eval_idx = res0.eval_index
y_true, mask = y[eval_idx], observed[eval_idx]
rows = {"training mean": baseline[res0.eval_split]}
rows.update({MODELS[n].display: r.metrics for n, r in results.items()})
table = pd.DataFrame(rows).T
table["params"] = [np.nan] + [r.n_params for r in results.values()]
table["train s"] = [np.nan] + [r.wall_time_s for r in results.values()]
n_beat = int((table["MSE"].iloc[1:] < table.loc["training mean", "MSE"]).sum())
glue("eval_split", res0.eval_split, display=False)
glue("n_eval", f"{len(eval_idx):,}", display=False)
glue("observed", f"{mask.mean():.0%}", display=False)
glue("n_beat", {0: "None", 1: "One", 2: "Two", 3: "Three", 4: "All four"}[n_beat], display=False)
glue("shufflenet_mse", f"{results['shufflenet'].metrics['MSE']:.3f}", display=False)
glue("shufflenet_pcc", f"{results['shufflenet'].metrics['PCC-Gene']:.3f}", display=False)
glue("baseline_eval", f"{baseline[res0.eval_split]['MSE']:.3f}", display=False)
table.round(3)

# %% [markdown]
# The table scores the {glue:text}`eval_split` split of this dataset ({glue:text}`n_eval` spots,
# {glue:text}`observed` of the entries observed). {glue:text}`n_beat` of the four models end below
# the training mean's MSE of {glue:text}`baseline_eval`; ShuffleNet, for example, reaches
# {glue:text}`shufflenet_mse` with a mean per-gene correlation (PCC-Gene) of
# {glue:text}`shufflenet_pcc`, where the mean predictor has none. That is what this run can say:
# whether a model learned something from the tissue beyond the mean. It does not rank the four:
# with `FAST = True` they are small variants trained for a few minutes from random weights on
# three sections, and their order changes with the seed. The paper's ranking needs the full run.
#
# Per-gene correlations show how uneven a model is: a few strongly patterned genes carry most of
# the mean PCC.

# %%
per_gene = pd.concat([
    pd.DataFrame({"model": MODELS[n].display, "gene": adata.var_names,
                  "pcc": per_gene_metrics(y_true, r.predictions, mask)["pcc"]})
    for n, r in results.items()])
fig = plotting.plot_per_gene_pcc(per_gene, data_label=DATA_NAME)

# %% [markdown]
# ## Predicted and true expression maps
#
# The three genes ShuffleNet predicts best (highest per-gene PCC), on the evaluation section, next
# to what the four models predict. The truth panel shows observed entries only; missing spots are
# left blank.

# %%
gene_pcc = per_gene[per_gene["model"] == MODELS["shufflenet"].display].set_index("gene")["pcc"]
genes = list(gene_pcc.nlargest(3).index)
fig = plotting.plot_expression_maps(adata, {MODELS[n].display: results[n].predictions for n in PATCH_MODELS},
                                    genes, eval_idx, layer=TARGET_LAYER, data_label=DATA_NAME)

# %% [markdown]
# ## What Δ and test-time averaging change
#
# **Δ.** ViT-B and ViT-B+Δ share everything but the target: ViT-B+Δ predicts Δ = expression −
# training mean (`layers['c_d_deltas']`) and the trainer adds `var['c_d_log1p_avg_exp']` back
# before scoring.

# %%
vit, vit_delta = MODELS["vit_b"].display, MODELS["vit_b_delta"].display
delta = table.loc[[vit, vit_delta], ["MSE", "PCC-Gene", "PCC-Patch", "Global"]]
glue("delta_mse_change", f"{delta.loc[vit_delta, 'MSE'] - delta.loc[vit, 'MSE']:+.3f}", display=False)
delta.round(3)

# %% [markdown]
# Here Δ changes the MSE by {glue:text}`delta_mse_change`. That the two hardly differ is no
# accident: with its output bias at the training mean μ, ViT-B predicts `W·f + b` with `b = μ` at
# the start, and ViT-B+Δ predicts `W·f + b′ + μ` with `b′` near 0. The loss is the same function of
# the weights in both, so the two train alike, up to the small random start of `b′`. In the paper
# ViT-B started at zero, and there Δ was what set the two apart.
#
# **Test-time averaging.** ST-Net averages its prediction over the 8 symmetries of each patch. The
# same trained ST-Net, scored with and without averaging:

# %%
stnet = results["stnet"].model
tta = {}
for on in (False, True):
    pred = predict(stnet, adata, patches, eval_idx, batch_size=BATCH_SIZE, device=DEVICE, tta=on)
    tta["with TTA" if on else "single view"] = compute_metrics(y_true, pred, mask)
tta = pd.DataFrame(tta).T[["MSE", "MAE", "PCC-Gene", "PCC-Patch", "Global"]]
glue("tta_mse_change", f"{tta.loc['with TTA', 'MSE'] - tta.loc['single view', 'MSE']:+.4f}", display=False)
tta.round(4)

# %% [markdown]
# Averaging changes ST-Net's MSE by {glue:text}`tta_mse_change` on this split, at 8 times the
# inference cost. In the paper, ViT-B+Δ had the best average normalised MSE over SpaRED and ST-Net
# was most often the best model of a dataset; run the chapter on Colab with the defaults to train
# the models the paper compared.
#
# ## Exercises
#
# ```{admonition} Exercise 1
# **Does the mean predictor have a PCC?** Predicting the training mean gives every gene a constant prediction. What do `compute_metrics` and `scipy.stats.pearsonr` return for it, and why is the choice in `spared_lib.metrics` the useful one?
# ```
#
# ````{dropdown} Solution
# A constant has no variance, so Pearson's r is 0/0: scipy returns NaN with a warning. Averaging NaN
# into PCC-Gene would hide every other gene's score, so `compute_metrics` defines PCC = 0 for a
# constant *prediction* (no linear association) and still scores R² (about 0 for the mean). Genes
# whose observed *truth* is constant, or with fewer than two observed spots, have no PCC or R² for
# any model: they are left out of the means and counted in `n_genes_excluded`.
#
# ```python
# m = compute_metrics(y_true, np.broadcast_to(train_mean, y_true.shape), mask)
# m["PCC-Gene"], m["R2-Gene"], m["n_genes_excluded"]
# ```
# ````
#
# ```{admonition} Exercise 2
# **Raw against SpaCKLE-completed targets.** Train SpaCKLE (chapter 3), complete the dataset with it, train ShuffleNet on the completed `c_t_log1p` and compare its metrics with the `c_d_log1p` run above. Which entries are scored in both cases?
# ```
#
# ````{dropdown} Solution
# ```python
# from spared_lib import completion
#
# spackle, _ = completion.train_spackle(adata, steps=STEPS, device=DEVICE, progress=False)
# completion.complete(adata, spackle, device=DEVICE)   # adds layers c_t_log1p, c_t_deltas
# r = fit("shufflenet", adata, "c_t_log1p", model_kwargs={"image_size": PATCH_SIZE}, **common)
# pd.DataFrame({"c_d_log1p": results["shufflenet"].metrics, "c_t_log1p": r.metrics})
# ```
#
# Both runs are scored on the same observed entries (`layers['mask']`, where TPM was non-zero):
# completion only changes what the model *trains* on, since the loss covers every entry of the
# target. The paper found completed targets improve every dataset's best PCC.
# ````
#
# ```{admonition} Exercise 3
# **Averaging for everyone.** Test-time averaging is a property of ST-Net, but `predict` accepts `tta=True` for any model. Does it help ShuffleNet?
# ```
#
# ````{dropdown} Solution
# ```python
# m = results["shufflenet"].model
# pd.DataFrame({on: compute_metrics(y_true, predict(m, adata, patches, eval_idx, tta=on), mask)
#               for on in (False, True)}).T
# ```
#
# Averaging over views the model was trained to treat alike mostly smooths its errors, so MSE
# usually drops slightly, at 8× the inference cost.
# ````
#
# ## Summary
#
# - A patch model is a torchvision backbone plus a linear layer to the genes; `build_model` builds
#   all four benchmark patch models, with ImageNet weights (`pretrained="imagenet"`), one of our own
#   checkpoints (a path) or random initialisation (`None`), and logs which (INFO, `spared_lib.models`).
# - Every non-Δ model's output bias starts at the training mean of its target, as ST-Net's does;
#   without it a model first spends its steps reaching the data's level.
# - `fit` trains any registered model with the paper's protocol (fixed steps, best validation MSE
#   checkpoint, test metrics) on a CPU, a GPU or several; `predict` runs a trained model on any
#   aligned patch array.
# - Metrics use observed entries only and are read against the training mean; genes or spots
#   without a defined correlation are excluded and counted, never silently NaN.
