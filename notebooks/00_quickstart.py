# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Quickstart: a tissue section in five cells
#
# **Aim:** load a spatial-transcriptomics dataset with `spared_lib` and draw its spots over the H&E
# image — the path every later chapter builds on.
#
# ```{admonition} What you need
# :class: tip
# - **Compute:** CPU only; under 1 GB of RAM.
# - **Time:** under a minute in fast mode; 2–5 minutes on Colab, most of it the download of one
#   SpaRED dataset (a few hundred MB) into the cache folder.
# - **Data:** `DATASET` below. A SpaRED key such as `"10xgenomic_mouse_brain_sagittal_posterior"`
#   (the default) downloads that dataset; `"her2st_hne"` is three consecutive sections of a HER2+
#   breast tumour {cite}`andersson2021her2st` with their full-resolution H&E (the book's own pages
#   use it, read from the repository's test fixtures); `"synthetic"` generates a small Visium-like
#   dataset on the fly, with no network.
# ```
#
# The button with the rocket at the top of the page opens this chapter on Google Colab. The hidden
# cell below installs `spared_lib` there, and only there; Colab's own PyTorch is kept.

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
# The defaults are the full run (a real SpaRED dataset). The book and its tests run the same notebook
# with `DATASET = "her2st_hne"` and `FAST = True`, injected by papermill.

# %% tags=["parameters"]
DATASET = "10xgenomic_mouse_brain_sagittal_posterior"
FAST = False
SEED = 0

# %%
import matplotlib.pyplot as plt

from spared_lib import data, plotting

# %% [markdown]
# ## Load a dataset
#
# `load_dataset` returns every slide of a dataset stitched into one
# [AnnData](https://anndata.readthedocs.io): raw counts in `X`, one row per spot, the slide, patient
# and train/validation/test split of each spot in `obs`, pixel coordinates in `obsm['spatial']` and
# the H&E images in `uns['spatial']`.

# %%
if DATASET == "synthetic":
    info = data.make_synthetic_dataset(data.cache_dir() / "synthetic_quickstart", n_slides=2,
                                       n_spots=600, seed=SEED, overwrite=True)
elif DATASET in data.FIXTURES and data.fixtures_dir() is not None:
    info = data.fixture_dataset(DATASET)  # the same files as the download, already on disk
else:
    info = DATASET  # downloaded into the cache folder on first use
adata = data.load_dataset(info)
adata

# %% [markdown]
# Each spot knows its slide and its split; models train on `train` slides and are evaluated on the
# others, so that no slide is seen both in training and in evaluation.

# %%
adata.obs.groupby(["slide_id", "split"], observed=True).size().rename("spots").to_frame()

# %% [markdown]
# ## Spots over the tissue
#
# A spot captures the RNA of the cells beneath it: 55 µm across on a Visium slide, 100 µm on the
# legacy Spatial Transcriptomics arrays of her2st. Colouring each spot by its total number of counts
# (UMIs) shows where the tissue gave the most RNA.

# %%
adata.obs["total_counts"] = adata.X.sum(axis=1).A1
slide = adata.obs["slide_id"].cat.categories[0]
fig, ax = plt.subplots(figsize=(6, 5), dpi=100)
plotting.spatial_scatter(adata, "total_counts", slide_id=slide, ax=ax, cmap="magma",
                         title=f"{adata.uns['dataset']['key']} — slide {slide}: total counts",
                         colorbar_label="UMIs per spot")
_ = ax.set(xlabel="", ylabel="")

# %% [markdown]
# ## A Visium slide
#
# SpaRED's datasets are 10x Visium slides: 55 µm spots on a hexagonal grid, closer together than
# the 100 µm spots of the legacy Spatial Transcriptomics arrays above. When the repository's
# real-data fixtures are beside it (`../shared/data`, as on the project's CI), the same function
# draws a whole Visium CytAssist slide of mouse tissue (`visium_mouse_cytassist`); on Colab the
# folder is absent and the cell says so.

# %%
if "visium_mouse_cytassist" in data.FIXTURES and data.fixtures_dir() is not None:
    visium = data.load_dataset(data.fixture_dataset("visium_mouse_cytassist"))
    visium.obs["total_counts"] = visium.X.sum(axis=1).A1
    fig, ax = plt.subplots(figsize=(6, 5), dpi=100)
    plotting.spatial_scatter(visium, "total_counts", ax=ax, cmap="magma",
                             title=f"visium_mouse_cytassist (real Visium slide): total counts\n"
                                   f"{visium.n_obs:,} spots", colorbar_label="UMIs per spot")
else:
    print("Fixtures folder not found: skipping the Visium example.")

# %% [markdown]
# ## Exercises
#
# ```{admonition} Exercise 1
# Colour the spots of the first slide by the split they belong to instead of their total counts.
# ```
#
# ````{dropdown} Solution
# ```python
# plotting.spatial_scatter(adata, "split", slide_id=slide)
# ```
# `split` is an `obs` column with categories, so the spots get one colour per category and a legend.
# ````
#
# ```{admonition} Exercise 2
# What fraction of the entries of `adata.X` are zero? Compare it with the raw missing fraction of
# SpaRED's datasets (70–97 %, chapter 1).
# ```
#
# ````{dropdown} Solution
# ```python
# 1 - adata.X.nnz / (adata.n_obs * adata.n_vars)
# ```
# `X` is a sparse matrix, so the number of stored (non-zero) entries is `adata.X.nnz`.
# ````
#
# ## Summary
#
# - A SpaRED dataset is one AnnData: counts in `X`, slides, patients and splits in `obs`, pixel
#   coordinates in `obsm['spatial']`, images in `uns['spatial']`.
# - `spared_lib.plotting.spatial_scatter` draws any gene or `obs` column over the H&E.
# - The next chapters follow the SpaRED paper {cite}`mejia2024spared`: the database (Part I), completing
#   missing expression with SpaCKLE (Part II), predicting expression from histology (Part III) and the
#   benchmark (Part IV).
