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
# entries only, and see what predicting deviations from the mean (Δ) and test-time averaging
# change {cite}`mejia2024spared`.
#
# ```{admonition} What you need
# :class: tip
# - **Compute:** fast mode runs on a CPU in about 3 minutes (synthetic data, small networks,
#   64-px patches, a few dozen steps). The full run (a real SpaRED dataset, ImageNet weights,
#   paper-size networks, 1,000 steps each) needs a GPU: about 30–60 minutes on a Colab T4, most of
#   it the two ViT-B models (86 M parameters each, ≈ 6 GB of GPU memory at batch 256 in mixed precision).
# - **RAM:** 2 GB (fast); the real dataset's patches take 150 KB per spot (≈ 1 GB for 7,000 spots).
# - **Data:** `DATASET` below: a SpaRED key (downloaded and preprocessed as in chapters 1–2), or
#   `"synthetic"` (no network).
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
# `DATASET = "synthetic"`, `SIZE = "small"`, no pretrained weights, 64-px patches and a few steps
# with papermill.

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
N_SPOTS = 300
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
from spared_lib.training import fit, predict
from spared_lib.preprocessing import dihedral
from spared_lib.training.data import normalise, random_dihedral

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
if DATASET == "synthetic":
    info = data.make_synthetic_dataset(data.cache_dir() / "synthetic_patch_models", n_slides=3,
                                       n_spots=N_SPOTS, seed=SEED, overwrite=True)
else:
    info = DATASET
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
    img = v[0].permute(1, 2, 0).numpy() * np.array([0.229, 0.224, 0.225]) + np.array([0.485, 0.456, 0.406])
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
            "optimiser": paper.optimizer, "test-time averaging": paper.test_time_augmentation,
            "params (paper, G=128)": count_parameters(paper), "original": MODELS[name].original_params,
            f"params (this run, {SIZE})": count_parameters(run), "default lr": MODELS[name].lr}


side_by_side = pd.DataFrame([describe(n) for n in PATCH_MODELS]).set_index("model")
side_by_side

# %% [markdown]
# ST-Net's output layer starts at **zero weights with the bias at the training mean** of each
# gene, so before any step it predicts the mean expression everywhere — the baseline every model
# has to beat. ViT-B+Δ gets the same head start differently: it predicts Δ = expression − training
# mean (`layers['c_d_deltas']`), and the trainer adds `var['c_d_log1p_avg_exp']` back before
# scoring.
#
# ## Training
#
# `spared_lib.training.fit` runs the benchmark's protocol for any registered model: `STEPS`
# optimiser steps, validation MSE (observed entries only) every `VAL_EVERY` steps, keep the
# checkpoint with the lowest validation MSE, score it on the test split (validation where a
# dataset has none). On a GPU it trains in mixed precision; on several GPUs Lightning runs DDP.

# %%
results = {}
for name in PATCH_MODELS:  # four models: a loop over models, not data
    results[name] = fit(name, adata, TARGET_LAYER, steps=STEPS, patches=patches, batch_size=BATCH_SIZE,
                        pretrained=PRETRAINED, size=SIZE, device=DEVICE, seed=SEED, progress=not FAST,
                        val_every=VAL_EVERY, model_kwargs={"image_size": PATCH_SIZE})

# %%
fig = plotting.plot_training_curves({MODELS[n].display: r.history for n, r in results.items()}, data_label=DATA_NAME)

# %% [markdown]
# ## Metrics
#
# `compute_metrics` scores only the entries that were measured (`layers['mask']`): the median- or
# SpaCKLE-filled values are never treated as truth. PCC-Gene correlates each gene across spots,
# PCC-Patch each spot across genes; R² likewise; Global sums the four and subtracts MSE and MAE.
# The first row is the predictor every model should beat: the training mean of each gene.

# %%
res0 = next(iter(results.values()))
eval_idx = res0.eval_index
y_true = np.asarray(adata.layers[TARGET_LAYER])[eval_idx]
mask = np.asarray(adata.layers["mask"])[eval_idx]
train_mean = np.asarray(adata.var[f"{TARGET_LAYER}_avg_exp"])
rows = {"training mean": compute_metrics(y_true, np.broadcast_to(train_mean, y_true.shape), mask)}
rows.update({MODELS[n].display: r.metrics for n, r in results.items()})
table = pd.DataFrame(rows).T
table["params"] = [np.nan] + [r.n_params for r in results.values()]
table["train s"] = [np.nan] + [r.wall_time_s for r in results.values()]
print(f"{res0.eval_split} split of {DATA_NAME}: {len(eval_idx)} spots, "
      f"{mask.mean():.0%} of entries observed")
table.round(3)

# %% [markdown]
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
# The three genes the best model predicts best (highest per-gene PCC), on one evaluation slide.
# The truth panel shows observed entries only; missing spots are left blank.

# %%
best = table.drop(index="training mean")["MSE"].idxmin()
best_name = next(n for n in PATCH_MODELS if MODELS[n].display == best)
gene_pcc = per_gene[per_gene["model"] == best].set_index("gene")["pcc"]
genes = list(gene_pcc.nlargest(3).index)
fig = plotting.plot_expression_maps(adata, {MODELS[n].display: results[n].predictions for n in PATCH_MODELS},
                                    genes, eval_idx, layer=TARGET_LAYER, data_label=DATA_NAME)

# %% [markdown]
# ## What Δ and test-time averaging change
#
# **Δ.** ViT-B and ViT-B+Δ share everything but the target. The table compares them directly.

# %%
delta = table.loc[[MODELS["vit_b"].display, MODELS["vit_b_delta"].display],
                  ["MSE", "PCC-Gene", "PCC-Patch", "Global"]]
delta

# %% [markdown]
# **Test-time averaging.** ST-Net averages its prediction over the 8 symmetries of each patch. The
# same trained ST-Net, scored with and without averaging:

# %%
stnet = results["stnet"].model
tta = {}
for on in (False, True):
    pred = predict(stnet, adata, patches, eval_idx, batch_size=BATCH_SIZE, device=DEVICE, tta=on)
    tta["with TTA" if on else "single view"] = compute_metrics(y_true, pred, mask)
tta = pd.DataFrame(tta).T[["MSE", "MAE", "PCC-Gene", "PCC-Patch", "Global"]]
print(f"ST-Net on {DATA_NAME}: TTA changes MSE by "
      f"{tta.loc['with TTA', 'MSE'] - tta.loc['single view', 'MSE']:+.4f}")
tta.round(4)

# %% [markdown]
# In the paper, ViT-B+Δ had the best average normalised MSE over SpaRED and ST-Net was most often
# the best model of a dataset; with `FAST = True` (synthetic data, random weights, a few dozen
# steps) the ranking above says little — run the chapter on Colab with the defaults to see the
# real one.
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
# constant *prediction* (no linear association) and still scores R² (0 for the exact mean). Genes
# whose observed *truth* is constant, or with fewer than two observed spots, have no PCC or R² for
# any model: they are left out of the means and counted in `n_genes_excluded`.
#
#     m = compute_metrics(y_true, np.broadcast_to(train_mean, y_true.shape), mask)
#     m["PCC-Gene"], m["R2-Gene"], m["n_genes_excluded"]
# ````
#
# ```{admonition} Exercise 2
# **Raw against SpaCKLE-completed targets.** Train ShuffleNet on `c_t_log1p` (chapter 3 adds it with `spared_lib.completion.complete`) and compare its test metrics with the `c_d_log1p` run above. Which entries are scored in both cases?
# ```
#
# ````{dropdown} Solution
#     from spared_lib import completion
#     completion.complete(adata)          # adds layers c_t_log1p, c_t_deltas
#     r = fit("shufflenet", adata, "c_t_log1p", steps=STEPS, patches=patches, size=SIZE,
#             pretrained=PRETRAINED, batch_size=BATCH_SIZE, model_kwargs={"image_size": PATCH_SIZE})
#     pd.DataFrame({"c_d_log1p": results["shufflenet"].metrics, "c_t_log1p": r.metrics})
#
# Both runs are scored on the same observed entries (`layers['mask']`, where TPM was non-zero):
# completion only changes what the model *trains* on. The paper found completed targets improve
# every dataset's best PCC.
# ````
#
# ```{admonition} Exercise 3
# **Averaging for everyone.** Test-time averaging is a property of ST-Net, but `predict` accepts `tta=True` for any model. Does it help ShuffleNet?
# ```
#
# ````{dropdown} Solution
#     m = results["shufflenet"].model
#     pd.DataFrame({on: compute_metrics(y_true, predict(m, adata, patches, eval_idx, tta=on), mask)
#                   for on in (False, True)}).T
#
# Averaging over views the model was trained to treat alike mostly smooths its errors, so MSE
# usually drops slightly, at 8× the inference cost.
# ````
#
# ## Summary
#
# - A patch model is a torchvision backbone plus a linear layer to the genes; `build_model` builds
#   all four benchmark patch models, with ImageNet weights (`pretrained="imagenet"`), a local state
#   dict or random initialisation, always saying which.
# - `fit` trains any registered model with the paper's protocol (fixed steps, best validation MSE
#   checkpoint, test metrics) on a CPU, a GPU or several; `predict` runs a trained model on any
#   aligned patch array.
# - Metrics use observed entries only; genes or spots without a defined correlation are excluded
#   and counted, never silently NaN.
# - Δ models predict the deviation from the training mean; ST-Net starts from the mean and averages
#   over the 8 symmetries at test time.
