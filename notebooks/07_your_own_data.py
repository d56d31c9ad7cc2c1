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
# complete its missing values with SpaCKLE, and explore the result — by changing one parameter,
# `SPACERANGER_DIR`; then train an image → expression model on patches of a real full-resolution
# H&E, yours when you have it.
#
# ```{admonition} What you need
# :class: tip
# - **Compute:** fast mode runs on a CPU in about 4 minutes with under 4 GB of RAM. A full run
#   (SpaCKLE at the library's default schedule, 1,000 model steps on 224-px patches) wants a GPU:
#   about 20–30 minutes on a Colab T4 for one slide of ~3,000 spots.
# - **Data:** one Space Ranger output folder (or a folder holding several): `spatial/` with
#   `tissue_positions.csv` or `tissue_positions_list.csv`, `scalefactors_json.json` and the
#   images, plus `filtered_feature_bc_matrix.h5` or the `filtered_feature_bc_matrix/` folder. Put
#   the full-resolution H&E image in the same folder: patches for an image model are cut from it.
# - **Demonstrated on:** the book's real fixture `visium_mouse_cytassist`, a whole 10x Visium
#   CytAssist mouse slide (2,898 spots), for everything up to completion; it has no
#   full-resolution image, so the image model trains on `her2st_hne`, three consecutive sections of
#   a HER2+ breast tumour with their full-resolution H&E {cite}`andersson2021her2st`. Without the
#   fixtures (on Colab), the default downloads one slide of SpaRED's
#   `10xgenomic_mouse_brain_sagittal_posterior` dataset and treats it as yours, and `her2st_hne`
#   from its authors' repository.
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
# table used for gene lengths and identifiers). Leave it empty to use the demonstration slide:
# the first training slide of `DEMO_DATASET`, a SpaRED dataset downloaded as Space Ranger output.
# `N_GENES` is the number of prediction genes (SpaRED uses 128, or 32 for low-quality data).
# `SPACKLE_STEPS = None` trains SpaCKLE for the library's default number of steps.
# `MODEL_DATA` says where the image model trains: `"auto"` uses your slides when every one of them
# has a full-resolution image, and `her2st_hne` otherwise. `VAL_EVERY = None` validates ten times
# per run.

# %% tags=["parameters"]
SPACERANGER_DIR = ""
DEMO_DATASET = "10xgenomic_mouse_brain_sagittal_posterior"   # SpaRED slide used when SPACERANGER_DIR is empty
ORGANISM = "mouse"
DATASET_NAME = "my_visium"
N_GENES = 128
CELL_MIN_COUNTS = 10
REAL_DATA_PERCENTAGE = 0.7
MAX_SPOTS = 0
SPACKLE_STEPS = None
SPACKLE_BATCH_SIZE = 256
MODEL_DATA = "auto"
MODEL = "shufflenet"
MODEL_SIZE = "paper"
PRETRAINED = "imagenet"
MODEL_STEPS = 1000
VAL_EVERY = None
BATCH_SIZE = 256
DEVICE = "auto"
FAST = False
SEED = 0

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import HTML, display

from spared_lib import benchmark, completion, data, plotting, preprocessing, training, widgets

glue = plotting.glue  # the book's numbers in the prose come from the cells (myst-nb)

spackle_schedule = {} if SPACKLE_STEPS is None else {"steps": SPACKLE_STEPS}


def machinery_check(table: pd.DataFrame, what: str):
    """Fast mode trains for a few steps: show its numbers folded away, as what they are."""
    if not FAST:
        return table
    return HTML(f"<details><summary><b>Machinery check, not a result</b> — {what}</summary>"
                f"{table.to_html(float_format='{:.3f}'.format)}</details>")


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
    demo = data.get_dataset(DEMO_DATASET)
    folder = data.fetch_dataset(demo, data.cache_dir() / demo.key) / demo.train_slides[0]
if not folder.is_dir():
    raise FileNotFoundError(f"SPACERANGER_DIR: {folder} is not a folder")
slide_dirs = [folder] if (folder / "spatial").is_dir() else \
    sorted(p for p in folder.iterdir() if (p / "spatial").is_dir())
if not slide_dirs:
    raise FileNotFoundError(f"{folder}: no Space Ranger output (a folder with spatial/) here or one level below")
[p.name for p in slide_dirs]

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
# To try the pipeline quickly, `MAX_SPOTS` keeps, on each slide, only the spots nearest its centre
# (a disc, so that neighbourhoods stay whole); 0 keeps everything. Fast mode uses it.

# %%
if MAX_SPOTS:
    adata = data.crop_slides(adata, MAX_SPOTS)
print(f"{adata.n_obs} spots on {adata.obs['slide_id'].nunique()} slide(s)")

# %% [markdown]
# Check the basics before anything else: the number of spots per slide, the counts per spot, and
# which images Space Ranger left. The full-resolution H&E is the one an image model needs (see
# below); the `hires` and `lowres` PNGs are downsampled copies for display.

# %%
slides = list(adata.obs["slide_id"].cat.categories)
summary = pd.DataFrame({
    "spots": adata.obs.groupby("slide_id", observed=True).size(),
    "median UMIs per spot": adata.obs.assign(n=np.asarray(adata.X.sum(1)).ravel())
    .groupby("slide_id", observed=True)["n"].median(),
    "full-res image": [adata.uns["spatial"][s]["fullres_path"] is not None for s in slides],
    "stored images": [", ".join(adata.uns["spatial"][s]["images"]) for s in slides],
})
summary

# %% [markdown]
# ## Hold out part of the data
#
# Models must be evaluated on spots they never saw. With three or more slides, `assign_splits`
# holds out whole slides (the last for test, the one before for validation), as SpaRED does. With
# one or two slides it holds out bands of the tissue instead: neighbouring spots look alike, so a
# random spot split would leak. The bottom 15 % of each slide (by image row) is the test set and
# the 15 % above it the validation set.

# %%
adata = data.assign_splits(adata)
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
spackle, history = completion.train_spackle(adata, batch_size=SPACKLE_BATCH_SIZE, seed=SEED, device=DEVICE,
                                            progress=False, **spackle_schedule)
adata = completion.complete(adata, spackle, device=DEVICE)
print(f"SpaCKLE: {int(history['step'].max())} steps, best validation MSE "
      f"{history['val_mse'].min():.3f}")

# %% [markdown]
# How good is it *on your data*? Hide 30 % of the observed values of the held-out spots and compare
# SpaCKLE's guesses with the adaptive median's and with each gene's train-split mean (lower MSE is
# better). Fast mode trains SpaCKLE for
# a few steps only: where that is too few to beat both baselines, the table is folded away as the
# machinery check it is.

# %%
scores = pd.DataFrame({
    method: completion.evaluate_completion(adata, method, mask_fraction=0.3, seed=SEED, model=spackle)
    for method in ("mean", "median", "spackle")
}).T[["MSE", "PCC-Gene"]]
scores.index = ["train mean (baseline)", "median", "spackle"]
spackle_better = scores.loc["spackle", "MSE"] < scores.loc[["median", "train mean (baseline)"], "MSE"].min()
glue("spackle_steps", f"{int(history['step'].max()):,}", display=False)
for row, key in (("spackle", "spackle"), ("median", "median"), ("train mean (baseline)", "mean")):
    glue(f"{key}_mse", f"{scores.loc[row, 'MSE']:.2f}", display=False)
glue("spackle_verdict", "beats both" if spackle_better else "does not beat both yet", display=False)
glue("spackle_pcc", f"{scores.loc['spackle', 'PCC-Gene']:.2f}", display=False)
glue("median_pcc", f"{scores.loc['median', 'PCC-Gene']:.2f}", display=False)
scores if spackle_better or not FAST else machinery_check(
    scores, f"SpaCKLE after {int(history['step'].max())} steps against the median and the train mean, "
            f"on {DATASET_NAME}'s held-out spots")

# %% [markdown]
# After {glue:text}`spackle_steps` steps SpaCKLE's MSE on the hidden entries is
# {glue:text}`spackle_mse`, against {glue:text}`median_mse` for the median and
# {glue:text}`mean_mse` for each gene's train mean: it {glue:text}`spackle_verdict` baselines. Its
# per-gene correlation with the hidden values is {glue:text}`spackle_pcc`, the median's
# {glue:text}`median_pcc` (the train mean's is 0: it fills every spot alike). A completion is
# worth using where it beats the train mean on error *and* follows the spot-to-spot variation; a
# full run trains long enough for this table to tell you which to use on your data.

# %% [markdown]
# The same gene three ways on one slide: what Visium measured (zeros where it missed), the median
# completion, and SpaCKLE's. Only the missing entries differ between the last two.

# %%
gene = str(top.index[0])
sources = widgets.expression_sources(adata)
fig, axes = plt.subplots(1, len(sources), figsize=(4.4 * len(sources), 4.4), dpi=90, layout="constrained")
for ax, label in zip(axes, sources):
    widgets.expression_map(adata, gene, label, sources=sources, slide_id=slides[0], ax=ax)
_ = fig.suptitle(f"{DATASET_NAME} ({folder.name}): {top.loc[gene, 'gene_symbol']}, "
                 "measured and completed")

# %% [markdown]
# Explore the rest yourself: choose a gene and a source, or a spot. In a live notebook the controls
# redraw the figure; in the online book they are inert and the figure shows the initial choice.

# %%
widgets.explore_expression(adata, gene=gene)

# %% [markdown]
# ## Can a model read this slide's H&E?
#
# The benchmark's models (chapters 4–6) see a 224 × 224 patch of one spot diameter around each
# spot, cut from the **full-resolution** image (Visium: ~0.3–0.5 µm per pixel, a 55 µm spot is
# 100–200 pixels across). Space Ranger's `hires` and `lowres` PNGs are 2,000 and 600 pixels wide
# for the whole capture area: there a spot is a few pixels, and a patch cut from them is those few
# pixels blown up to 224 — a blur without a cell in it.

# %%
scalefactors = adata.uns["spatial"][slides[0]]["scalefactors"]
image, scale = plotting.slide_image(adata, slides[0])
spot_px = scalefactors["spot_diameter_fullres"] * scale
has_fullres = all(adata.uns["spatial"][s]["fullres_path"] is not None for s in slides)
print(f"{DATASET_NAME}: full-resolution image {'found' if has_fullres else 'missing'}; "
      f"a spot is {spot_px:.1f} pixels across in the best stored image ({image.shape[1]} px wide)")

# %%
on_slide = np.flatnonzero(adata.obs["slide_id"].to_numpy() == slides[0])
xy = adata.obsm["spatial"][on_slide]
spot = int(on_slide[np.argmin(np.hypot(*(xy - xy.mean(0)).T))])  # the spot nearest the slide's centre
context, caption = widgets.spot_patch(adata, spot, context=6.0)
# source="hires": the best stored PNG, which is what a patch of this slide would be cut from
blown_up = preprocessing.extract_patches(adata[[spot]], size=224, source="hires")[0] if not has_fullres else None
fig, axes = plt.subplots(1, 2, figsize=(7, 3.6), dpi=100, layout="constrained")
axes[0].imshow(context)
axes[0].set_title(f"{DATASET_NAME}: 6 spot diameters\nof the stored image ({context.shape[0]} px)", fontsize=9)
if blown_up is not None:
    axes[1].imshow(blown_up)
    axes[1].set_title(f"{DATASET_NAME}: the 224-px patch of one spot\n"
                      f"({spot_px:.1f} px enlarged {224 / spot_px:.0f}×)", fontsize=9)
for ax in axes:
    ax.set_axis_off()

# %% [markdown]
# `visium_mouse_cytassist` came with the `lowres` PNG and CytAssist's detected-tissue image only,
# so its patches are the flat pink square on the right: nothing a model could learn morphology
# from. With your own data, copy the microscope's full-resolution H&E (the TIFF given to Space
# Ranger with `--image`) into the slide's folder and the patches come from it. Until then, the image
# model trains on `her2st_hne`, whose full-resolution H&E is about 0.7 µm per pixel (a spot is
# ≈145 pixels across).

# %%
if MODEL_DATA == "auto":
    MODEL_DATA = DATASET_NAME if has_fullres else "her2st_hne"
if MODEL_DATA == DATASET_NAME:
    images = adata
else:
    # the fixture's files where the book is built; the same files downloaded elsewhere (Colab)
    images_info = (data.fixture_dataset(MODEL_DATA)
                   if MODEL_DATA in data.FIXTURES and data.fixtures_dir() is not None
                   else data.get_dataset(MODEL_DATA))
    images = preprocessing.preprocess(data.load_dataset(images_info), images_info)
    images_spackle, _ = completion.train_spackle(images, batch_size=SPACKLE_BATCH_SIZE, seed=SEED,
                                                 device=DEVICE, progress=False, **spackle_schedule)
    images = completion.complete(images, images_spackle, device=DEVICE)
images.obs.groupby(["slide_id", "split"], observed=True).size().rename("spots").to_frame()

# %% [markdown]
# ## Train a model that reads expression from the H&E
#
# Patches of one spot diameter are cut around every spot from the full-resolution image and
# resized to 224 × 224 pixels; they are written to a file in the cache folder, never into the
# AnnData. Then one of the benchmark's models (chapter 4) learns to predict the SpaCKLE-completed
# expression from them.

# %%
patch_file = data.cache_dir() / MODEL_DATA / "patches.npy"
patches = preprocessing.extract_patches(images, path=patch_file, source="fullres")
print(f"{patches.shape[0]} patches of {patches.shape[1]} px, {patches.nbytes / 2**20:.0f} MiB "
      f"in the cache folder (data.cache_dir())")

# %%
result = training.fit(MODEL, images, target_layer="c_t_log1p", steps=MODEL_STEPS, patches=patches,
                      batch_size=BATCH_SIZE, seed=SEED, pretrained=PRETRAINED, size=MODEL_SIZE,
                      val_every=VAL_EVERY, device=DEVICE, progress=False, verbose=False)
steps_run = int(result.extra.get("steps", MODEL_STEPS))
metrics = pd.DataFrame({
    f"{MODEL} ({steps_run} steps)": result.metrics,
    "train mean (baseline)": benchmark.train_mean_metrics(images, "c_t_log1p", result.eval_split),
}).T[["MSE", "PCC-Gene", "PCC-Patch", "R2-Gene"]]
metrics.index.name = f"{MODEL_DATA}, {result.eval_split} spots"
model_row, mean_row = metrics.iloc[0], metrics.iloc[1]
beats = bool(model_row["MSE"] < mean_row["MSE"] and model_row["PCC-Gene"] > 0)
glue("model_steps", f"{steps_run:,}", display=False)
glue("model_verdict", "beats" if beats else "does not beat yet", display=False)
glue("model_mse", f"{model_row['MSE']:.3f}", display=False)
glue("model_mean_mse", f"{mean_row['MSE']:.3f}", display=False)
glue("model_pcc", f"{model_row['PCC-Gene']:.2f}", display=False)
metrics if beats or not FAST else machinery_check(metrics, f"{MODEL} after {steps_run} steps on {MODEL_DATA}")

# %% [markdown]
# After {glue:text}`model_steps` steps the model {glue:text}`model_verdict` the train-mean baseline
# on the held-out spots: MSE {glue:text}`model_mse` against {glue:text}`model_mean_mse`, and a PCC-Gene of
# {glue:text}`model_pcc` (the baseline's is 0: it predicts the same value for every spot). A
# model that beats it has learnt something from the image about each spot beyond the average spot.

# %% [markdown]
# ## Look at the maps
#
# The same gene on the held-out slide: the SpaCKLE-completed expression the model was trained on,
# and the model's prediction from the image alone.

# %%
prediction = training.predict(result.model, images, patches)
image_sources = widgets.expression_sources(images, predictions={MODEL: prediction},
                                           layers={"SpaCKLE (c_t_log1p)": "c_t_log1p"})
held_out = str(images.obs.loc[images.obs["split"].astype(str) == result.eval_split, "slide_id"].iloc[0])
image_gene = str(images.var.sort_values("d_log1p_moran", ascending=False).index[0])
fig, axes = plt.subplots(1, len(image_sources), figsize=(4.6 * len(image_sources), 4.6), dpi=90,
                         layout="constrained")
for ax, label in zip(axes, image_sources):
    widgets.expression_map(images, image_gene, label, sources=image_sources, slide_id=held_out, ax=ax)

# %%
widgets.explore_spot(images, predictions={MODEL: prediction}, layers={"SpaCKLE (c_t_log1p)": "c_t_log1p"},
                     patches=patches, slide_id=held_out, spot=0)

# %% [markdown]
# ## Save your work
#
# The processed AnnData holds every layer (raw, median, SpaCKLE); the SpaCKLE model and the
# model checkpoint can be reused on new slides of the same kind.

# %%
out = data.cache_dir() / DATASET_NAME
out.mkdir(parents=True, exist_ok=True)
adata.write_h5ad(out / f"{DATASET_NAME}_processed.h5ad")
print(f"{DATASET_NAME}_processed.h5ad written to the cache folder (data.cache_dir() / {DATASET_NAME!r}); "
      f"the model's best checkpoint is result.checkpoint_path")

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
# Does completion help the image model? Train the same model on the median-completed target
# (`c_d_log1p`) and compare its metrics with the run above.
# ```
#
# ````{dropdown} Solution
# ```python
# median = training.fit(MODEL, images, target_layer="c_d_log1p", steps=MODEL_STEPS, patches=patches,
#                       batch_size=BATCH_SIZE, seed=SEED, pretrained=PRETRAINED, size=MODEL_SIZE,
#                       device=DEVICE, progress=False, verbose=False)
# pd.DataFrame({"median (c_d_log1p)": median.metrics, "SpaCKLE (c_t_log1p)": result.metrics})
# ```
# Both are scored on the observed entries of the same held-out spots, so the comparison is fair.
# One run on three sections is noise-prone: compare several seeds before drawing a conclusion —
# chapter 6 does this for SpaRED's 26 datasets.
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
# - With few slides, hold out bands of tissue rather than random spots (`data.assign_splits`).
# - `preprocess`, `train_spackle` + `complete`, `extract_patches` and `fit` are the whole pipeline;
#   `spared_lib.widgets` explores the result, with a static figure wherever no kernel runs.
# - An image model needs the full-resolution H&E: Space Ranger's PNGs are too coarse for patches.
# - For a real result, run with `FAST = False` on a GPU.
