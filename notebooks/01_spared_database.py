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
# much of their expression matrix is missing, see where their files come from and how each download
# is checked, and load real data — slides, spots, images and the train/validation/test split — as
# the AnnData every later chapter uses: a whole Visium slide, and 28 sections of seven breast-cancer
# patients (her2st) split by patient.
#
# ```{admonition} What you need
# :class: tip
# - **Compute:** CPU only; about 2 GB of RAM.
# - **Time:** 1–3 minutes in fast mode (the real fixtures, read from disk); on Colab add the
#   downloads: one SpaRED dataset from 10x Genomics (a few hundred MB), her2st (about 40 MB) and the
#   CytAssist slide (about 6 MB) from their public GitHub repositories, every file checksum-pinned.
# - **Data:** `DATASET` below: a SpaRED key (the default, `10xgenomic_mouse_brain_sagittal_posterior`),
#   a real fixture (`visium_mouse_cytassist`, what the book's build uses) or `"synthetic"`.
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
# The defaults are the full run on a SpaRED dataset; the book's fast run injects
# `DATASET = "visium_mouse_cytassist"` (a real Visium slide that is already on disk) with papermill.

# %% tags=["parameters"]
DATASET = "10xgenomic_mouse_brain_sagittal_posterior"
FAST = False
SEED = 0
# spots per slide of the synthetic dataset (used only when DATASET = "synthetic")
N_SPOTS = 2000

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from spared_lib import data, plotting

glue = plotting.glue  # the book's numbers in the prose come from the cells (myst-nb)

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
glue("n_datasets", f"{len(table)}", display=False)
glue("n_slides", f"{totals['n_slides']}", display=False)
glue("n_spots", f"{totals['spots']:,}", display=False)
glue("n_patients", f"{totals['patients']}", display=False)
glue("n_test", f"{n_test}", display=False)
glue("n_human", f"{(table['organism'] == 'human').sum()}", display=False)
glue("n_mouse", f"{(table['organism'] == 'mouse').sum()}", display=False)
totals.rename("SpaRED total").to_frame()

# %% [markdown]
# {glue:text}`n_datasets` datasets, {glue:text}`n_slides` slides, {glue:text}`n_spots` spots from
# {glue:text}`n_patients` patients; {glue:text}`n_test` datasets have a test split (the others
# report on validation). {glue:text}`n_human` datasets are human and {glue:text}`n_mouse` mouse, and
# brain dominates the tissues (the paper's Fig. 1a, drawn from the registry):

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
for column, name in (("raw_missing", "raw"), ("processed_missing", "processed")):
    glue(f"{name}_min", f"{table[column].min():.0%}", display=False)
    glue(f"{name}_max", f"{table[column].max():.0%}", display=False)
    glue(f"{name}_median", f"{table[column].median():.0%}", display=False)
table[["raw_missing", "processed_missing"]].describe().loc[["min", "50%", "max"]].rename(index={"50%": "median"})

# %% [markdown]
# Raw data hold {glue:text}`raw_min`–{glue:text}`raw_max` zeros (median {glue:text}`raw_median`).
# After selecting the 32 or 128 most spatially structured, best-detected genes,
# {glue:text}`processed_min`–{glue:text}`processed_max` of the entries are still missing (median
# {glue:text}`processed_median`). Chapter 3 fills them in with SpaCKLE.
#
# ## Where the files come from, and how they are checked
#
# Every download goes through one function, `data.fetch`: a pinned URL, a cache folder
# (`$SPARED_DATA_DIR`, else your user cache), resumable transfers, and a check of every file before it
# is used. Where the registry knows a file's sha256 the file is **pinned**: it must match on download
# and on every later use. The 30 files of the five 10x Genomics datasets carry the hashes that
# squidpy's dataset registry publishes for the same files (and squidpy's mirror is their fallback
# URL); the her2st files are pinned to one commit of the authors' public repository. The other
# sources publish no hashes: their files are **trusted on first use** — the first download is
# checked for what it claims to be (its length, no HTML error page, an HDF5 file that is HDF5, a
# gzip file that decompresses), its sha256 is recorded beside it (`<file>.sha256`), and every later
# use must match that record.

# %%
everything = data.datasets_table("all")
integrity = (everything.groupby(["collection", "integrity"]).agg(datasets=("n_files", "size"),
                                                                files=("n_files", "sum"))
             .reset_index())
# The her2st datasets share their files: count each file once per group.
urls = {key: {f.url for f in data.get_dataset(key).files} for key in everything.index}
integrity["files"] = [len(set().union(*(urls[k] for k in everything.index[(everything["collection"] == c)
                                                                          & (everything["integrity"] == i)])))
                      for c, i in zip(integrity["collection"], integrity["integrity"])]
spared = everything[everything["collection"] == "SpaRED"]
glue("n_pinned_spared", f"{(spared['integrity'] == 'pinned').sum()}", display=False)
glue("n_tofu", f"{(spared['integrity'] == 'trust on first use').sum()}", display=False)
glue("n_files_tofu", f"{integrity.loc[(integrity['collection'] == 'SpaRED') & (integrity['integrity'] == 'trust on first use'), 'files'].sum()}",
     display=False)
integrity

# %%
everything.loc[everything["integrity"] == "trust on first use", ["abbreviation", "n_files", "source"]]

# %% [markdown]
# Of SpaRED's 26 datasets {glue:text}`n_pinned_spared` are pinned (the 10x Genomics ones) and
# {glue:text}`n_tofu` are trusted on first use ({glue:text}`n_files_tofu` distinct files: the datasets
# listed above, some of which share one archive). Behind
# a proxy or with a local mirror, set `SPARED_DATA_MIRROR` to its base URL: every registry URL
# `https://<server>/<path>` is then fetched from `$SPARED_DATA_MIRROR/<server>/<path>`, with the same
# checks.
#
# ## Loading a dataset
#
# `load_dataset` downloads a dataset's files on first use, reads every slide and stitches them into
# one AnnData. `data.resolve_dataset` picks the local copy of a fixture where the repository's
# `shared/data` folder is beside it (the book's build) and the registry download otherwise (Colab);
# the files are the same bytes. With `DATASET = "synthetic"` it reads a synthetic dataset written in
# the same Space Ranger layout (Visium geometry, spatial domains, negative-binomial counts and an
# H&E-like image), for machines without a network.

# %%
if DATASET == "synthetic":
    info = data.make_synthetic_dataset(data.cache_dir() / "synthetic_01", n_slides=3,
                                       n_spots=N_SPOTS, seed=SEED, overwrite=True)
else:
    info = data.resolve_dataset(DATASET)
adata = data.load_dataset(info)
name = adata.uns["dataset"]["key"]
adata

# %%
adata.uns["dataset"]

# %% [markdown]
# Counts are raw integers in a sparse matrix; genes are Ensembl ids with their symbols beside them:

# %%
zero_fraction = 1 - adata.X.nnz / (adata.n_obs * adata.n_vars)
glue("zero_fraction", f"{zero_fraction:.1%}", display=False)
glue("adata_shape", f"{adata.n_obs:,} spots × {adata.n_vars:,} genes", display=False)
adata.var.head()

# %%
fig = plotting.plot_gene_detection(adata)

# %% [markdown]
# The dataset has {glue:text}`adata_shape`; {glue:text}`zero_fraction` of the entries are zero. Most genes are
# detected in a few percent of spots; a minority — the ones SpaRED can predict — is detected in most
# of them.
#
# ## Slides with spots over the H&E
#
# `obsm['spatial']` holds each spot's centre in pixels of the full-resolution image; `uns['spatial']`
# holds downscaled copies of the image and the scale factors that map one to the other. Spot size and
# spacing are read from the data, never assumed:

# %%
geometry = pd.DataFrame({s: v["scalefactors"] for s, v in adata.uns["spatial"].items()}).T
geometry["diameter / spacing"] = geometry["spot_diameter_fullres"] / geometry["spot_spacing_fullres"]
ratio = geometry["diameter / spacing"]
glue("ratio", f"{ratio.min():.2f}" + (f"–{ratio.max():.2f}" if ratio.max() - ratio.min() > 0.005 else ""),
     display=False)
geometry[["spot_diameter_fullres", "spot_spacing_fullres", "diameter / spacing"]]

# %% [markdown]
# The spacing is the 100 µm pitch, fitted from the array coordinates. Space Ranger's
# `spot_diameter_fullres` describes a 65 µm circle on standard Visium slides, a ratio of 0.65; here
# the ratio is {glue:text}`ratio` — a CytAssist run writes a slightly larger circle — which is why
# the library reads both numbers from each slide instead of assuming one.

# %%
adata.obs["total_counts"] = np.asarray(adata.X.sum(axis=1)).ravel()
slides = list(adata.obs["slide_id"].cat.categories)
fig, axes = plt.subplots(1, len(slides), figsize=(5 * len(slides), 4.5), dpi=100, squeeze=False,
                         layout="constrained")
for ax, slide in zip(axes[0], slides):
    where = name if slide == name else f"{name} — {slide}"  # a one-slide dataset is named after its slide
    plotting.spatial_scatter(adata, "total_counts", slide_id=slide, ax=ax, cmap="magma",
                             title=f"{where}\nUMIs per spot", colorbar_label="UMIs per spot")

# %% [markdown]
# ## Train, validation and test slides
#
# SpaRED splits every dataset by slide, so no slide is seen both in training and in evaluation. The
# split is a column of `obs` (a single-slide dataset such as the CytAssist slide has only `train`;
# chapter 7 shows how to split one):

# %%
fig = plotting.plot_split_sizes(adata)

# %% [markdown]
# ## Real data beyond the 26: her2st, 28 sections of seven patients
#
# Before Visium, the same lab's Spatial Transcriptomics (ST) arrays had 100 µm spots on a 200 µm
# square grid. her2st {cite}`andersson2021her2st` holds sections of HER2-positive breast tumours
# from several patients; the registry's `her2st` entry takes 28 of them, from seven patients (A, C,
# D, E, F, G, H), and splits them **by patient** — SpaRED's *inter-patient* task: a model must
# generalise to a person it has never seen. Three sections (C2–C4) come with their full-resolution
# H&E; the others are counts and spot positions only. The loader maps the gene symbols to Ensembl ids
# through the GENCODE table.

# %%
her2st = data.load_dataset(data.resolve_dataset("her2st"))
her2st.obs["total_counts"] = np.asarray(her2st.X.sum(axis=1)).ravel()
sections = (her2st.obs.groupby(["patient", "split"], observed=True)
            .agg(sections=("slide_id", "nunique"), spots=("slide_id", "size")).reset_index())
pitch = pd.Series({s: v["scalefactors"]["spot_spacing_fullres"] for s, v in her2st.uns["spatial"].items()})
patient_of = her2st.obs.groupby("slide_id", observed=True)["patient"].first().astype(str)
sections["grid pitch (px)"] = sections["patient"].astype(str).map(pitch.groupby(patient_of[pitch.index].to_numpy()).median().round())
glue("her2st_sections", f"{her2st.obs['slide_id'].nunique()}", display=False)
glue("her2st_patients", f"{her2st.obs['patient'].nunique()}", display=False)
glue("her2st_spots", f"{her2st.n_obs:,}", display=False)
glue("her2st_genes", f"{her2st.n_vars:,}", display=False)
glue("her2st_train", ", ".join(sections.loc[sections["split"] == "train", "patient"].astype(str)), display=False)
glue("her2st_val", ", ".join(sections.loc[sections["split"] == "val", "patient"].astype(str)), display=False)
glue("her2st_test", ", ".join(sections.loc[sections["split"] == "test", "patient"].astype(str)), display=False)
glue("pitch_a", f"{pitch[pitch.index.str.startswith('A')].median():.0f}", display=False)
glue("pitch_other", f"{pitch[~pitch.index.str.startswith('A')].median():.0f}", display=False)
sections

# %% [markdown]
# {glue:text}`her2st_sections` sections, {glue:text}`her2st_spots` spots and
# {glue:text}`her2st_genes` genes shared by all sections. Patients {glue:text}`her2st_train` train,
# {glue:text}`her2st_val` validates and {glue:text}`her2st_test` tests (the last two patients in the
# repository's order, three sections each; chosen before looking at any result). The grid pitch, read
# from each section, is {glue:text}`pitch_a` px for patient A and {glue:text}`pitch_other` px for the
# others: patient A's pixel coordinates refer to smaller images — one more reason to read spacing from
# the data.

# %%
fig, ax = plt.subplots(figsize=(12, 3.8), dpi=100, layout="constrained")
fig = plotting.plot_split_sizes(her2st, ax=ax, data_label="her2st (28 sections, 7 patients)")

# %% [markdown]
# One section of each patient, coloured by UMIs per spot (the counts-only sections are drawn without
# an image; section C2 over its H&E):

# %%
first = her2st.obs.groupby("patient", observed=True)["slide_id"].first().astype(str).to_dict()
first["C"] = "C2"  # the patient's section with H&E
fig, axes = plt.subplots(2, 4, figsize=(15, 7.5), dpi=100, layout="constrained")
axes[-1, -1].set_axis_off()  # seven patients, eight panels
for ax, (patient, slide) in zip(axes.ravel(), first.items()):
    split = her2st.obs.loc[her2st.obs["slide_id"] == slide, "split"].iloc[0]
    plotting.spatial_scatter(her2st, "total_counts", slide_id=slide, ax=ax, cmap="magma",
                             title=f"her2st {slide}\npatient {patient} ({split})",
                             colorbar_label="UMIs per spot")

# %% [markdown]
# The registry also holds each patient as a dataset of its own, `her2st_A` … `her2st_H`
# (*intra-patient*: consecutive sections of one tumour; the last section tests, the one before
# validates), and `her2st_hne`, the three sections with H&E (C2 and C3 train, C4 validates), which
# the image models of chapters 4–7 use:

# %%
data.datasets_table("her2st")[["n_slides", "patients", "spots", "combat_key", "train_slides",
                               "val_slides", "test_slides", "integrity"]]

# %% [markdown]
# ## Exercises
#
# ```{admonition} Exercise 1
# Which SpaRED datasets have fewer than 5,000 spots, and how many slides do they have? Use the
# registry table.
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
# For each her2st section, compute the fraction of zero entries. Is dropout the same in every
# patient?
# ```
#
# ````{dropdown} Solution
# ```python
# per_spot = pd.Series(np.diff(her2st.X.indptr), index=her2st.obs_names)  # non-zeros of each spot
# nonzero = per_spot.groupby(her2st.obs["slide_id"], observed=True).sum()
# spots = her2st.obs["slide_id"].value_counts()[nonzero.index]
# zeros = 1 - nonzero / (spots * her2st.n_vars)
# zeros.groupby(patient_of[zeros.index].to_numpy()).agg(["min", "max"])
# ```
# Sections differ in sequencing depth and RNA quality (a batch effect), patients more than the
# sections of one patient; SpaRED corrects it with ComBat (chapter 2), by patient for an
# inter-patient dataset (`combat_key` in the table above).
# ````
#
# ## Summary
#
# - SpaRED is a collection of Visium datasets of human and mouse tissue (totals above); the
#   registry `data.datasets_table()` describes them and `data.load_dataset(key)` fetches and reads one.
# - Every download is pinned by a sha256 where the source publishes one (the 10x files, her2st, the
#   book's fixtures) and trusted on first use otherwise; `SPARED_DATA_MIRROR` redirects them all.
# - Most of the raw expression matrix is zero, mostly dropout; even after gene selection a sizeable
#   share of the entries is missing.
# - A dataset is one AnnData: counts in `X`, slide/patient/split in `obs`, pixels in
#   `obsm['spatial']`, images and geometry in `uns['spatial']` — read from the data, never assumed.
# - her2st adds real multi-patient data: 28 sections of seven patients split by patient, one dataset
#   per patient, and three sections with H&E.
