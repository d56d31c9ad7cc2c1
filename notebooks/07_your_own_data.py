# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Bring your own Visium data
#
# **Aim:** run the whole SpaRED pipeline on *your* Space Ranger output — read it, preprocess it,
# complete its missing values with SpaCKLE, train an image → expression model, and explore the
# maps — by changing one parameter, `SPACERANGER_DIR`.
#
# ```{admonition} What you need
# :class: tip
# - **Compute:** fast mode runs on a CPU in about 2–3 minutes with under 4 GB of RAM. A full run
#   (1,000 SpaCKLE steps, 1,000 model steps on 224-px patches) wants a GPU: about 10–20 minutes
#   on a Colab T4 for one slide of ~3,000 spots.
# - **Data:** one Space Ranger output folder (or a folder holding several): `spatial/` with
#   `tissue_positions.csv` or `tissue_positions_list.csv`, `scalefactors_json.json` and the
#   images, plus `filtered_feature_bc_matrix.h5` or the `filtered_feature_bc_matrix/` folder. Put
#   the full-resolution H&E image in the same folder for sharp patches.
# - **Demonstrated on:** the book's real fixture `visium_mouse_cytassist`, a whole 10x Visium
#   CytAssist mouse slide (2,898 spots). Without the fixtures (on Colab), the default downloads one
#   slide of SpaRED's `10xgenomic_mouse_brain_sagittal_posterior` dataset and treats it as yours.
# ```
#
# Everything below is what chapters 1–5 did on SpaRED's datasets; here each step is one call,
# and the text says what to check on your own data.

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
# Set `SPACERANGER_DIR` to your folder and `ORGANISM` to `"human"` or `"mouse"` (it picks the gene
# table used for gene lengths and identifiers). Leave it empty to use the demonstration slide.
# `N_GENES` is the number of prediction genes (SpaRED uses 128, or 32 for low-quality data).

# %% tags=["parameters"]
SPACERANGER_DIR = ""
ORGANISM = "mouse"
DATASET_NAME = "my_visium"
N_GENES = 128
CELL_MIN_COUNTS = 10
REAL_DATA_PERCENTAGE = 0.7
MAX_SPOTS = 0
SPACKLE_STEPS = 1000
SPACKLE_BATCH_SIZE = 256
MODEL = "shufflenet"
MODEL_SIZE = "paper"
PRETRAINED = "imagenet"
MODEL_STEPS = 1000
BATCH_SIZE = 256
DEVICE = "auto"
FAST = False
SEED = 0

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from spared_lib import completion, data, preprocessing, training, widgets

# %% [markdown]
# ## Find the Space Ranger folder
#
# A Space Ranger folder is recognised by its `spatial/` subfolder. `SPACERANGER_DIR` may be one
# such folder (one slide) or a folder whose subfolders are slides.

# %%
if SPACERANGER_DIR:
    folder = Path(SPACERANGER_DIR).expanduser()
elif data.fixtures_dir() is not None:
    folder = data.fixtures_dir() / "visium_mouse_cytassist"
else:  # Colab: one real slide from SpaRED, a Space Ranger folder like yours
    demo = data.get_dataset("10xgenomic_mouse_brain_sagittal_posterior")
    folder = data.fetch_dataset(demo, data.cache_dir() / demo.key) / demo.train_slides[0]
if not folder.is_dir():
    raise FileNotFoundError(f"SPACERANGER_DIR: {folder} is not a folder")
slide_dirs = [folder] if (folder / "spatial").is_dir() else \
    sorted(p for p in folder.iterdir() if (p / "spatial").is_dir())
if not slide_dirs:
    raise FileNotFoundError(f"{folder}: no Space Ranger output (a folder with spatial/) here or one level below")
[str(p) for p in slide_dirs]

# %% [markdown]
# ## Read it
#
# A `DatasetInfo` describes your data the way SpaRED's registry describes
# its 26 datasets: organism, number of genes, ComBat batches (the slides) and which slides are for
# training. `load_dataset` reads every slide — counts, positions, scale factors, images — into one
# AnnData, checking that counts and positions match.

# %%
info = data.DatasetInfo(
    key=DATASET_NAME, organism=ORGANISM, n_genes=N_GENES, combat_key="slide_id",
    cell_min_counts=CELL_MIN_COUNTS, train_slides=tuple(p.name for p in slide_dirs), val_slides=(),
    grid="hex", layout="visium", root=str(slide_dirs[0].parent),
)
adata = data.load_dataset(info)
adata

# %% [markdown]
# To try the pipeline quickly, `MAX_SPOTS` keeps only the spots nearest each slide's centre (a
# disc, so that neighbourhoods stay whole); 0 keeps everything. Fast mode uses it.

# %%
if MAX_SPOTS and adata.n_obs > MAX_SPOTS:
    xy = pd.DataFrame(adata.obsm["spatial"], index=adata.obs_names, columns=["x", "y"])
    by_slide = xy.groupby(adata.obs["slide_id"], observed=True)
    dist = np.hypot(xy["x"] - by_slide["x"].transform("median"), xy["y"] - by_slide["y"].transform("median"))
    rank = dist.groupby(adata.obs["slide_id"], observed=True).rank(method="first")
    adata = adata[(rank <= MAX_SPOTS // adata.obs["slide_id"].nunique()).to_numpy()].copy()
print(f"{adata.n_obs} spots")

# %% [markdown]
# Check the basics before anything else: the number of spots per slide, the counts per spot, and
# whether a full-resolution image was found (without one, patches are cut from the downsampled
# `hires`/`lowres` PNG and are blurry).

# %%
summary = pd.DataFrame({
    "spots": adata.obs.groupby("slide_id", observed=True).size(),
    "median UMIs per spot": adata.obs.assign(n=np.asarray(adata.X.sum(1)).ravel())
    .groupby("slide_id", observed=True)["n"].median(),
    "full-res image": [adata.uns["spatial"][s]["fullres_path"] is not None for s in adata.obs["slide_id"].cat.categories],
    "stored images": [", ".join(adata.uns["spatial"][s]["images"]) for s in adata.obs["slide_id"].cat.categories],
})
summary

# %% [markdown]
# ## Hold out part of the data
#
# Models must be evaluated on spots they never saw. With three or more slides, hold out whole
# slides (the last for test, the one before for validation), as SpaRED does. With one or two
# slides, hold out bands of the tissue instead: neighbouring spots look alike, so a random
# spot split would leak. Here the bottom 15 % of each slide (by image row) is the test set and
# the 15 % above it the validation set.

# %%
slides = list(adata.obs["slide_id"].cat.categories)
if len(slides) >= 3:
    adata.obs["split"] = adata.obs["slide_id"].map(
        {s: "test" if s == slides[-1] else "val" if s == slides[-2] else "train" for s in slides}).astype(str)
else:
    y = pd.Series(adata.obsm["spatial"][:, 1], index=adata.obs_names)
    rank = y.groupby(adata.obs["slide_id"], observed=True).rank(pct=True)
    adata.obs["split"] = np.select([rank > 0.85, rank > 0.70], ["test", "val"], "train")
adata.obs["split"] = adata.obs["split"].astype("category")
adata.obs.groupby(["slide_id", "split"], observed=True).size().rename("spots").to_frame()

# %% [markdown]
# ## How sparse is your data?
#
# SpaRED's gene filter keeps the genes seen in the most spots, as long as the kept genes are, on
# average, observed in at least `REAL_DATA_PERCENTAGE` (70 %) of the spots. Sparse data — few UMIs
# per spot, or a probe-based CytAssist run — may leave fewer genes than `N_GENES`. Count the genes
# each threshold keeps (after dropping genes missing from the gene table) before choosing.

# %%
def genes_kept(threshold):
    kept = preprocessing.filter_spots_and_genes(adata, CELL_MIN_COUNTS, real_data_percentage=threshold)
    return int(np.isfinite(preprocessing.gene_lengths(kept.var_names, ORGANISM)).sum())


thresholds = sorted({REAL_DATA_PERCENTAGE, 0.6, 0.5, 0.4, 0.3}, reverse=True)
kept = pd.Series({t: genes_kept(t) for t in thresholds}, name="genes kept")
kept.index.name = "threshold"
kept.to_frame().T

# %% [markdown]
# Use SpaRED's threshold when it leaves at least `N_GENES` genes, and otherwise the highest one
# that does, saying so.

# %%
usable = [t for t in thresholds if t <= REAL_DATA_PERCENTAGE and kept[t] >= N_GENES]
if not usable:
    raise ValueError(f"fewer than N_GENES={N_GENES} genes pass even at threshold {thresholds[-1]}; "
                     "lower N_GENES (SpaRED uses 32 for its sparsest datasets)")
threshold = usable[0]
if threshold != REAL_DATA_PERCENTAGE:
    print(f"Only {kept[REAL_DATA_PERCENTAGE]} genes pass SpaRED's threshold {REAL_DATA_PERCENTAGE}; "
          f"using {threshold} ({kept[threshold]} genes) to select {N_GENES}.")
else:
    print(f"SpaRED's threshold {threshold} keeps {kept[threshold]} genes: enough for {N_GENES}.")

# %% [markdown]
# ## Preprocess with the SpaRED protocol
#
# One call runs chapter 2: spot and gene filters, TPM, log2, adaptive median completion, Moran's I
# gene selection, ComBat across slides (a single slide is left as it is), Δ layers and the mask of
# observed entries.

# %%
adata = preprocessing.preprocess(adata, info, real_data_percentage=threshold)
missing_raw = 1 - adata.layers["mask"].mean()
print(f"{adata.n_obs} spots x {adata.n_vars} genes kept; "
      f"{missing_raw:.1%} of the entries of the selected genes are missing (zero)")

# %%
top = adata.var.sort_values("d_log1p_moran", ascending=False).head(10)
top[["gene_symbol", "d_log1p_moran"]].rename(columns={"d_log1p_moran": "Moran's I"})

# %% [markdown]
# ## Complete the missing values with SpaCKLE
#
# SpaCKLE (chapter 3) learns, on your own data, to fill a spot's missing values from its 18
# nearest neighbours. It needs no labels: it hides observed values and learns to recover them.

# %%
spackle, history = completion.train_spackle(adata, steps=SPACKLE_STEPS, batch_size=SPACKLE_BATCH_SIZE,
                                            seed=SEED, device=DEVICE, progress=False)
adata = completion.complete(adata, spackle, device=DEVICE)
history.dropna(subset=["val_mse"]).tail(3)

# %% [markdown]
# How good is it *on your data*? Hide 30 % of the observed values of the held-out spots and compare
# SpaCKLE's guesses with the adaptive median's (lower MSE is better).

# %%
scores = pd.DataFrame({
    method: completion.evaluate_completion(adata, method, mask_fraction=0.3, seed=SEED, model=spackle)
    for method in ("median", "spackle")
}).T[["MSE", "PCC-Gene"]]
scores

# %% [markdown]
# ## Train a model that reads expression from the H&E
#
# Patches of one spot diameter are cut around every spot and resized to 224 × 224 pixels; they are
# written to a file in the cache folder, never into the AnnData. Then one of the benchmark's
# models (chapter 4) learns to predict the SpaCKLE-completed expression from them.

# %%
patch_file = data.cache_dir() / DATASET_NAME / "patches.npy"
patches = preprocessing.extract_patches(adata, path=patch_file)
print(f"{patches.shape[0]} patches of {patches.shape[1]} px, {patches.nbytes / 2**20:.0f} MiB in {patch_file}")

# %%
result = training.fit(MODEL, adata, target_layer="c_t_log1p", steps=MODEL_STEPS, patches=patches,
                      batch_size=BATCH_SIZE, seed=SEED, pretrained=PRETRAINED, size=MODEL_SIZE,
                      device=DEVICE, progress=False, verbose=False)
pd.Series(result.metrics, name=f"{MODEL} on the {result.eval_split} spots").to_frame()

# %% [markdown]
# ## Look at the maps
#
# The same gene four ways on the held-out band: what Visium measured (zeros where it missed),
# the median completion, SpaCKLE's completion, and the model's prediction from the image alone.

# %%
prediction = training.predict(result.model, adata, patches)
sources = widgets.expression_sources(adata, predictions={MODEL: prediction})
gene = str(top.index[0])
fig, axes = plt.subplots(1, len(sources), figsize=(4.2 * len(sources), 4), dpi=90)
for ax, label in zip(axes, sources):
    widgets.expression_map(adata, gene, label, sources=sources, slide_id=slides[0], ax=ax)
fig.suptitle(f"{DATASET_NAME} ({folder.name}) — {top.loc[gene, 'gene_symbol']}", y=1.02)
fig.tight_layout()

# %% [markdown]
# Explore the rest yourself: choose a gene and a source, or a spot. In a live notebook the controls
# redraw the figure; in the online book they are inert and the figure shows the initial choice.

# %%
widgets.explore_expression(adata, predictions={MODEL: prediction}, gene=gene)

# %%
first_test = int(np.flatnonzero((adata.obs["split"] == "test").to_numpy()
                                & (adata.obs["slide_id"] == slides[0]).to_numpy())[0])
within_slide = int(np.flatnonzero((adata.obs["slide_id"] == slides[0]).to_numpy()).tolist().index(first_test))
widgets.explore_spot(adata, predictions={MODEL: prediction}, patches=patches, spot=within_slide)

# %% [markdown]
# ## Save your work
#
# The processed AnnData holds every layer (raw, median, SpaCKLE); the SpaCKLE model and the
# model checkpoint can be reused on new slides of the same kind.

# %%
out = data.cache_dir() / DATASET_NAME
adata.write_h5ad(out / f"{DATASET_NAME}_processed.h5ad")
print(f"saved to {out}; best model checkpoint: {result.checkpoint_path}")

# %% [markdown]
# ## Exercises
#
# ```{admonition} Exercise 1
# Which gene did SpaCKLE change the most? For each gene, average the absolute difference between
# SpaCKLE's completion (`c_t_log1p`) and the median completion (`c_d_log1p`) over the missing
# entries, and draw the top gene with `widgets.explore_expression`.
# ```
#
# ````{dropdown} Solution
# ```python
# missing = ~adata.layers["mask"]
# diff = np.abs(adata.layers["c_t_log1p"] - adata.layers["c_d_log1p"])
# per_gene = pd.Series((diff * missing).sum(0) / missing.sum(0).clip(1), index=adata.var_names)
# most = per_gene.idxmax()
# print(adata.var.loc[most, "gene_symbol"], per_gene.max())
# widgets.explore_expression(adata, gene=most, source="SpaCKLE (c_t_log1p)")
# ```
# Only missing entries can differ: SpaCKLE keeps every observed value as measured.
# ````
#
# ```{admonition} Exercise 2
# Does completion help the image model on your data? Train the same model on the median-completed
# target (`c_d_log1p`) and compare its metrics with the run above.
# ```
#
# ````{dropdown} Solution
# ```python
# raw = training.fit(MODEL, adata, target_layer="c_d_log1p", steps=MODEL_STEPS, patches=patches,
#                    batch_size=BATCH_SIZE, seed=SEED, pretrained=PRETRAINED, size=MODEL_SIZE,
#                    device=DEVICE, progress=False, verbose=False)
# pd.DataFrame({"median (c_d_log1p)": raw.metrics, "SpaCKLE (c_t_log1p)": result.metrics})
# ```
# Both are scored on the observed entries of the same held-out spots, so the comparison is fair.
# With the fast-mode settings (a few steps) the difference is noise; compare full runs, and
# several seeds, before drawing a conclusion — chapter 6 does this for SpaRED's 26 datasets.
# ````
#
# ```{admonition} Exercise 3
# How much of the raw data was missing before gene selection? Compute the fraction of zero
# entries of the raw counts of all genes (`data.load_dataset(info).X`) and compare it with the
# fraction printed after preprocessing.
# ```
#
# ````{dropdown} Solution
# ```python
# raw = data.load_dataset(info)
# 1 - raw.X.nnz / (raw.n_obs * raw.n_vars)
# ```
# Most genes are zero in most spots; the SpaRED gene filter keeps genes seen in most spots, which
# is why the processed data is far less sparse.
# ````
#
# ## Summary
#
# - A Space Ranger folder becomes a SpaRED-style dataset with a `DatasetInfo` and `load_dataset`;
#   the rest of the pipeline does not care whether the data came from SpaRED or from you.
# - With few slides, hold out bands of tissue rather than random spots.
# - `preprocess`, `train_spackle` + `complete`, `extract_patches` and `fit` are the whole pipeline;
#   `spared_lib.widgets` explores the result, with a static figure wherever no kernel runs.
# - For a real result, run with `FAST = False` on a GPU and use the full-resolution H&E image.
