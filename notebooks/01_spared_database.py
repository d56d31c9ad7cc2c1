# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The SpaRED database
#
# **Aim:** meet the 26 public Visium datasets that SpaRED curates {cite}`mejia2024spared`, see why so
# much of their expression matrix is missing, and load one of them — slides, spots, images and the
# train/validation/test split — as the AnnData every later chapter uses.
#
# ```{admonition} What you need
# :class: tip
# - **Compute:** CPU only; about 1 GB of RAM (fast mode), 2–4 GB for a real dataset.
# - **Time:** about a minute in fast mode (a small synthetic dataset generated on the fly); 3–10
#   minutes on Colab, most of it the download of one SpaRED dataset into the cache folder.
# - **Data:** `DATASET` below: a SpaRED key (the default downloads
#   `10xgenomic_mouse_brain_sagittal_posterior` from 10x Genomics, checksums pinned), or
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
# The defaults are the full run on a real dataset; the book's fast run injects
# `DATASET = "synthetic"` and a smaller `N_SPOTS` with papermill.

# %% tags=["parameters"]
DATASET = "10xgenomic_mouse_brain_sagittal_posterior"
FAST = False
SEED = 0
# spots per slide of the synthetic dataset (used only for the synthetic DATASET)
N_SPOTS = 2000

# %%
import matplotlib.pyplot as plt
import numpy as np

from spared_lib import data, plotting

# %% [markdown]
# ## 26 datasets in one table
#
# SpaRED gathers 26 datasets from ten studies: 10x Genomics' public demonstration slides and
# datasets published on Mendeley Data, GEO, figshare and Zenodo. `spared_lib` keeps them as a
# registry — a table inside the package — with each dataset's organism and tissue, the number of
# genes to predict, the slides of each split, and where its files come from.

# %%
table = data.datasets_table()
table[["abbreviation", "organism", "tissue", "n_genes", "n_slides", "patients", "spots",
       "raw_missing", "processed_missing"]]

# %%
totals = table[["n_slides", "spots", "patients"]].sum()
n_test = int((table["test_slides"] != "").sum())
print(f"{len(table)} datasets, {totals['n_slides']} slides, {totals['spots']:,} spots, "
      f"{totals['patients']} patients; {n_test} datasets have a test split "
      "(the others report on validation).")

# %% [markdown]
# Human and mouse are about evenly represented; brain dominates the tissues (a reproduction of the
# paper's Fig. 1a from the registry):

# %%
fig = plotting.plot_database_overview(table)

# %% [markdown]
# ## What Visium measures, and why entries are missing
#
# A Visium slide carries 4,992 spots, 55 µm across on a 100 µm hexagonal grid. Each spot captures the
# polyadenylated RNA of the 1–10 cells beneath it, and every captured molecule is counted once by its
# unique molecular identifier (UMI). Only a small share of each cell's RNA is captured, so most genes
# in most spots are counted zero times. Some zeros are biology (the gene is off); most are sampling
# (**dropout**). The registry records the fraction of zero entries of each dataset before and after
# SpaRED's gene selection:

# %%
fig = plotting.plot_missing_fraction(table)

# %%
print(f"raw data: {table['raw_missing'].min():.0%}–{table['raw_missing'].max():.0%} zeros "
      f"(median {table['raw_missing'].median():.0%}); after selecting the 32/128 most "
      f"spatially structured, best-detected genes: {table['processed_missing'].min():.0%}–"
      f"{table['processed_missing'].max():.0%} (median {table['processed_missing'].median():.0%}).")

# %% [markdown]
# Even after selection, a large share of the entries of a typical dataset is missing (the median is
# printed above). Chapter 3 fills them in with SpaCKLE.
#
# ## Loading a dataset
#
# `load_dataset` downloads a dataset's files on first use (pinned URLs and sha256 checksums, cached
# in `$SPARED_DATA_DIR` or the user cache folder), reads every slide and stitches them into one
# AnnData. With `DATASET = "synthetic"` it reads a synthetic dataset written in the same Space Ranger
# layout: Visium geometry, spatial domains, gene programs, negative-binomial counts and an H&E-like
# image whose texture follows the expression.

# %%
if DATASET == "synthetic":
    info = data.make_synthetic_dataset(data.cache_dir() / "synthetic_01", n_slides=3,
                                       n_spots=N_SPOTS, seed=SEED, overwrite=True)
else:
    info = data.get_dataset(DATASET)
adata = data.load_dataset(info)
adata

# %%
adata.uns["dataset"]

# %% [markdown]
# Counts are raw integers in a sparse matrix; genes are Ensembl ids with their symbols beside them:

# %%
zero_fraction = 1 - adata.X.nnz / (adata.n_obs * adata.n_vars)
print(f"{adata.n_obs:,} spots x {adata.n_vars:,} genes; {zero_fraction:.1%} of the entries are zero")
adata.var.head()

# %%
fig = plotting.plot_gene_detection(adata)

# %% [markdown]
# Most genes are detected in a few percent of spots; a minority — the ones SpaRED can predict — is
# detected in most of them.
#
# ## Slides with spots over the H&E
#
# `obsm['spatial']` holds each spot's centre in pixels of the full-resolution image; `uns['spatial']`
# holds downscaled copies of the image and the scale factors that map one to the other. Spot size and
# spacing are read from the data, never assumed:

# %%
import pandas as pd

geometry = pd.DataFrame({s: v["scalefactors"] for s, v in adata.uns["spatial"].items()}).T
geometry[["spot_diameter_fullres", "spot_spacing_fullres", "tissue_hires_scalef"]]

# %% [markdown]
# Space Ranger's `spot_diameter_fullres` describes a 65 µm circle (a little larger than the 55 µm
# spot) and the spacing is the 100 µm pitch fitted from the array coordinates, so their ratio is
# about 0.65 on every Visium slide:

# %%
ratio = geometry["spot_diameter_fullres"] / geometry["spot_spacing_fullres"]
print("diameter / spacing per slide:", ratio.round(3).to_dict())

# %%
adata.obs["total_counts"] = np.asarray(adata.X.sum(axis=1)).ravel()
slides = list(adata.obs["slide_id"].cat.categories)
fig, axes = plt.subplots(1, len(slides), figsize=(4.5 * len(slides), 4.5), dpi=100, squeeze=False)
for ax, slide in zip(axes[0], slides):
    plotting.spatial_scatter(adata, "total_counts", slide_id=slide, ax=ax, cmap="magma",
                             title=f"{adata.uns['dataset']['key']} — {slide}: UMIs per spot")
fig.tight_layout()

# %% [markdown]
# ## Train, validation and test slides
#
# SpaRED splits every dataset by slide, so no slide is seen both in training and in evaluation; the
# datasets counted above also keep test slides. The split is a column of `obs`:

# %%
fig = plotting.plot_split_sizes(adata)

# %% [markdown]
# ## A real section with a square grid: her2st
#
# Before Visium, the same lab's Spatial Transcriptomics (ST) arrays had 100 µm spots on a 200 µm
# square grid. The project's test fixtures include three consecutive ST sections of a HER2-positive
# breast tumour {cite}`andersson2021her2st` with full-resolution H&E; the same loader reads them
# (gene symbols mapped to Ensembl ids through the GENCODE table). On Colab the fixtures folder is
# absent and the cell says so.

# %%
fixtures = data.fixtures_dir()
her2st = None
if fixtures is not None and (fixtures / "her2st").is_dir():
    her2st = data.load_dataset(data.fixture_dataset("her2st"))
    print(her2st.uns["dataset"], her2st.n_obs, "spots")
    print(pd.DataFrame({s: v["scalefactors"] for s, v in her2st.uns["spatial"].items()}).T
          [["spot_diameter_fullres", "spot_spacing_fullres"]])
else:
    print("Fixtures folder not found: skipping the her2st example.")

# %%
if her2st is not None:
    her2st.obs["total_counts"] = np.asarray(her2st.X.sum(axis=1)).ravel()
    fig, axes = plt.subplots(1, 3, figsize=(13.5, 4.5), dpi=100)
    for ax, slide in zip(axes, her2st.obs["slide_id"].cat.categories):
        plotting.spatial_scatter(her2st, "total_counts", slide_id=slide, ax=ax, cmap="magma",
                                 title=f"her2st (real) — {slide}: UMIs per spot")
    fig.tight_layout()

# %% [markdown]
# ## Exercises
#
# ```{admonition} Exercise 1
# Which datasets have fewer than 5,000 spots, and how many slides do they have? Use the registry
# table.
# ```
#
# ````{dropdown} Solution
# ```python
# small = table[table["spots"] < 5000]
# small[["abbreviation", "n_slides", "spots"]]
# ```
# `datasets_table()` is an ordinary DataFrame: filter it like any other.
# ````
#
# ```{admonition} Exercise 2
# For each slide of `adata`, compute the fraction of zero entries. Is dropout the same on every
# slide?
# ```
#
# ````{dropdown} Solution
# ```python
# for slide in adata.obs["slide_id"].cat.categories:
#     X = adata[adata.obs["slide_id"] == slide].X
#     print(slide, 1 - X.nnz / (X.shape[0] * X.shape[1]))
# ```
# Slides differ in sequencing depth and RNA quality (a batch effect), so their zero fractions differ
# by a few percent; SpaRED corrects the batch effect later with ComBat (chapter 2).
# ````
#
# ## Summary
#
# - SpaRED is a collection of Visium datasets of human and mouse tissue (totals printed above); the
#   registry `data.datasets_table()` describes them and `data.load_dataset(key)` fetches and reads one.
# - Most of the raw expression matrix is zero, mostly dropout; even after gene selection a sizeable
#   share of the entries is missing.
# - A dataset is one AnnData: counts in `X`, slide/patient/split in `obs`, pixels in
#   `obsm['spatial']`, images and geometry in `uns['spatial']` — read from the data, never assumed.
