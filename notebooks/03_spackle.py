# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # SpaCKLE: completing missing gene expression with a transformer
#
# **Aim:** understand why spatial-transcriptomics data has missing entries, how the adaptive
# median fills them and where it fails, and how SpaCKLE — a small transformer over a spot's
# neighbourhood — completes them; then reproduce the paper's Fig. 3 (SpaCKLE vs the median vs
# stLearn's SME) on real tissue: the her2st breast-cancer sections of seven patients and a
# Visium slide.
#
# ```{admonition} What you need
# :class: tip
# - **Compute:** the book's build (fast mode) runs on a CPU in about 2 minutes: one her2st patient
#   and a short training run. The defaults below are the paper's schedule (10,000 steps of the
#   paper-size model) on all 28 her2st sections, for a GPU (Colab); on a CPU that takes hours.
# - **Data:** her2st (Andersson et al., 2021: 28 sections of 7 HER2-positive breast-cancer
#   patients, legacy Spatial Transcriptomics); downloaded on first use.
# - **Before:** chapter 2 (preprocessing: the layers `c_d_log1p` and `mask`).
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
# The defaults are the paper's setting on real data (Colab GPU). The book runs this notebook
# with `FAST = True`: one patient (`her2st_C`, four consecutive sections), a smaller model and a
# short run, injected by papermill.

# %% tags=["parameters"]
DATASET = "her2st"        # 28 sections, 7 patients; "her2st_C" etc. is one patient
FAST = False
STEPS = 10000             # SpaCKLE training steps (paper: 10,000)
BATCH_SIZE = 256
D_MODEL = 128
D_FF = 2048
FRACTIONS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
SEEDS = [0, 1, 2]
DEVICE = "auto"
SEED = 0

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from spared_lib import completion, data, plotting, preprocessing, resources

glue = plotting.glue  # the book's numbers in the prose come from the cells (myst-nb)

if FAST:
    # CI shares 2 CPU cores between jobs: one OpenMP thread is faster than two competing ones
    torch.set_num_threads(1)

# %% [markdown]
# ## Data
#
# We load the dataset and run chapter 2's preprocessing. `c_d_log1p` holds log2(TPM + 1) values
# whose zeros were filled by the adaptive median and then batch-corrected; `mask` is True where the
# gene was actually detected. her2st's splits keep whole slides apart: in the 7-patient set,
# patients A, C, D, E and F train, G validates and H tests; in a one-patient set such as
# `her2st_C` the last section tests and the one before it validates.

# %%
if DATASET in data.FIXTURES and data.fixtures_dir() is not None:
    info = data.fixture_dataset(DATASET)  # the same files as the download, already on disk
else:
    info = DATASET  # downloaded into the cache folder on first use
adata = preprocessing.preprocess(data.load_dataset(info))
LABEL = f"{DATASET} (real)"
(adata.obs.groupby("split", observed=True)["slide_id"]
 .agg(lambda v: ", ".join(sorted(map(str, set(v))))).to_frame("slides"))

# %% [markdown]
# ## Why entries are missing
#
# A spot captures only a fraction of the mRNA in the tissue below it, so a gene that is expressed
# can still read zero: a *dropout*. Even after SpaRED keeps only well-detected genes, some entries
# are missing.

# %%
x, m = adata.layers["c_d_log1p"], adata.layers["mask"]
per_gene = 1 - m.mean(axis=0)
glue("missing", f"{1 - m.mean():.1%}", display=False)
glue("missing_min", f"{per_gene.min():.1%}", display=False)
glue("missing_max", f"{per_gene.max():.1%}", display=False)
print(f"{LABEL}: {1 - m.mean():.1%} of the entries are missing; per gene from {per_gene.min():.1%} "
      f"to {per_gene.max():.1%}")

# %% [markdown]
# Here {glue:text}`missing` of the entries are missing (per gene from {glue:text}`missing_min` to
# {glue:text}`missing_max`).
#
# ## The median method and where it fails
#
# The adaptive median (chapter 2) replaces a zero with the median of the same gene over the spot's
# 1-hop neighbourhood — the spot itself and its neighbours — widening to 2, 3, 4 hops while that
# median is zero, and falling back to the slide's median of the non-zero values. It looks at
# **one gene at a time**. We measure it as the paper does: hide a fraction of the *observed*
# entries, complete them, and compare with the hidden truth.

# %%
rows = []
for frac in (0.1, 0.3, 0.5, 0.7):
    hidden = completion.random_observed_mask(m, frac, seed=SEED)
    visible = m & ~hidden
    filled = completion.median_complete(adata, x, visible)
    mean_fill = completion.train_mean_complete(adata, x, visible)
    rows.append({"masked": frac, "median method MSE": np.mean((filled - x)[hidden] ** 2),
                 "train-mean fill MSE": np.mean((mean_fill - x)[hidden] ** 2),
                 "median fills below the truth": np.mean((filled < x)[hidden])})
median_demo = pd.DataFrame(rows).set_index("masked")
worst, best_frac = median_demo["median method MSE"].idxmax(), median_demo["median method MSE"].idxmin()
glue("med_worst", f"{median_demo.loc[worst, 'median method MSE']:.2f}", display=False)
glue("med_worst_at", f"{worst:.0%}", display=False)
glue("med_best", f"{median_demo.loc[best_frac, 'median method MSE']:.2f}", display=False)
glue("med_best_at", f"{best_frac:.0%}", display=False)
glue("med_below", f"{median_demo.loc[worst, 'median fills below the truth']:.0%}", display=False)
glue("mean_fill", f"{median_demo['train-mean fill MSE'].mean():.2f}", display=False)
glue("med_vs_mean", "above" if (median_demo["median method MSE"] > median_demo["train-mean fill MSE"]).all()
     else "not always above", display=False)
median_demo.rename(index=lambda f: f"{f:.0%}").round(3)

# %% [markdown]
# On this data the median method's error is largest at {glue:text}`med_worst_at` masking
# ({glue:text}`med_worst`) and smallest at {glue:text}`med_best_at` ({glue:text}`med_best`), and it
# is {glue:text}`med_vs_mean` the error of simply filling each gene's training mean (about
# {glue:text}`mean_fill`). That is not the paper's picture, where the median degrades steadily as
# masking grows; it follows from the filter. The window holds the spot's own value, now zero, and
# every other hidden neighbour, so while a window is about half zeros its median is one of the
# *lowest* real values left ({glue:text}`med_below` of the fills lie below the truth at
# {glue:text}`med_worst_at`). When most windows are mostly zeros the filter widens to the slide
# median, which is unbiased: the error drops again, but the completed map loses its spatial
# pattern (the qualitative panel below shows it). The train-mean fill is the baseline every table
# of this chapter carries.
#
# ## SpaCKLE step by step
#
# **1. The neighbourhood matrix E.** For each spot, SpaCKLE stacks its expression with that of its
# 18 nearest spots *of the same slide* (`spared_lib.preprocessing.nearest_in_slide`: two rings on
# Visium's hexagonal grid; on her2st's square grid the 18 nearest reach √5 spacings), a 19 × G
# matrix. Spots at a border or beside a hole of the section (spots that failed the quality
# filter) have fewer neighbours within that radius; their missing tokens are padding, ignored by
# attention. Here {glue:text}`full_tokens` of the spots have all 19 tokens.

# %%
nbr = preprocessing.nearest_in_slide(adata)
n_real = (nbr >= 0).sum(axis=1)
glue("full_tokens", f"{(n_real == nbr.shape[1]).mean():.0%}", display=False)
print(f"neighbourhood index array {nbr.shape}; tokens per spot: {n_real.min()}–{n_real.max()}, "
      f"{(n_real == nbr.shape[1]).mean():.0%} of spots have all {nbr.shape[1]}")

# %%
slide = str(adata.obs.loc[adata.obs["split"].astype(str) == "test", "slide_id"].iloc[0])
on_slide = (adata.obs["slide_id"] == slide).to_numpy()
centre = int(np.flatnonzero(on_slide)[np.argmax(n_real[on_slide])])  # the fullest neighbourhood
flag = np.zeros(adata.n_obs)
flag[nbr[centre][nbr[centre] >= 0]] = 1
flag[centre] = 2
fig = plotting.spatial_scatter(adata[on_slide], color=flag[on_slide], slide_id=slide, cmap="viridis",
                               colorbar=False)
_ = fig.axes[0].set(title=f"A spot (yellow) and its {n_real[centre] - 1} neighbours\n{LABEL}, slide {slide}")

# %% [markdown]
# **2. Masking.** In training, observed entries are hidden at random with a per-gene probability
# 0.3 / f, capped at 1, where f is the fraction of spots that observe the gene (the original's
# `masking_method="mask_prob"`). That hides, on average, 30 % of *all* of the gene's entries,
# taken from its observed ones only: a gene observed in half the spots loses 60 % of its observed
# values in a step.

# %%
p_gene = completion.masking_probabilities(m[np.asarray(adata.obs["split"] == "train")])
pd.Series(p_gene, index=adata.var["gene_symbol"]).describe().to_frame("masking probability").T.round(3)

# %% [markdown]
# **3. The model.** A linear layer L_in maps each token's G values to `d_model` = 128 numbers (the
# paper's "fixed transformer dimension d_k = 128"; the original code instead sets it to the number
# of genes: `GeneImputationModel` in BCV-Uniandes/SpaRED `spared/spared/spackle/model.py` passes
# `data_input_size` as `transformer_dim`, so 32 for most SpaRED datasets — we keep the paper's). A
# transformer encoder (2 layers, 1 attention head, feed-forward 2048, as the original) lets every
# token attend to the other tokens of *its own* neighbourhood, and L_out maps back to G genes. The
# loss is the MSE between the reconstruction and E. (The original passed `(batch, 19, G)` to an
# encoder expecting `(19, batch, G)`, so its attention mixed different spots of a batch; ours
# attends across the 19 neighbours, and a test checks that a spot's completion does not depend on
# its batch-mates.)

# %%
print(completion.SpaCKLE(adata.n_vars, d_model=D_MODEL, dim_feedforward=D_FF))

# %% [markdown]
# ## What SpaCKLE sees in training: a fair study
#
# The paper trains on the median-completed matrix: entries missing in the data keep their
# **median-filled values** in the input, only observed entries are masked, and the loss covers the
# whole matrix; at inference the missing entries are **zeroed**
# (BCV-Uniandes/SpaRED `spackle/model.py` `pred_outputs_from_batch`, `denoising/denoising.py`
# `spackle_cleaner`). This library used to zero them in training too, yet kept the loss on every
# entry — so at exactly the entries it later completes, the model was taught to reproduce the
# median filter. Three ways to train, each scored with its own inference rule:
#
# - **(a)**, the paper's: median values visible, loss on all entries; scored with the paper's
#   zeroed inference and, separately, with the median-filled input it trained on (the neighbours'
#   missing entries filled by the median of the *visible* entries, so no hidden value leaks in);
# - **(b)**, the old default: missing entries zeroed, loss on all entries;
# - **(c)**: missing entries zeroed, loss on observed entries only.
#
# Each runs without and with `centre=True` (inputs minus the train-split gene means, so a hidden
# entry reads as "the gene's average"). **Centring is not in the paper**; we show what it changes.
# `benchmarks/completion.py` ran all of them over three seeds on her2st's 7 patients and on the
# CytAssist Visium slide, scoring synthetically hidden observed entries of the **validation**
# spots, which choose the library default; the test spots are reported beside and choose nothing.
# That is more training than a book build can afford, so the committed results are shown here.

# %%
result = resources.load_result("completion")
prov, res = result["provenance"], result["results"]
study_runs = pd.DataFrame(res["study"]["runs"])
study = pd.DataFrame(res["study"]["summary"])
best = res["study"]["winner"]
study_sched = res["runs"].get(res["study"]["schedule"], {}).get("schedule", {})
print(f"committed results: commit {prov['commit'][:10]}, {prov['date']}, on {prov['machine']['cpu']} "
      f"({prov['machine']['cpus']} CPUs), load {prov['load_average_1_5_15_min']}\n"
      f"command: {prov['command']}\nstudy schedule '{res['study']['schedule']}': {study_sched}; "
      f"datasets {res['study']['datasets']}, seeds {res['study']['seeds']}")
study.rename(columns={"val": "val MSE", "test": "test MSE"}).round(4)

# %%
fig = plotting.training_input_study(study, data_label=" + ".join(res["study"]["datasets"]) + " (real, committed run)")

# %%
val_runs = study_runs[study_runs["split"] == "val"]
spread = (val_runs.groupby(["variant", "centre", "inference", "seed"])["MSE"].mean()
          .groupby(["variant", "centre", "inference"]).std())
trained = study[study["variant"].str[:2].isin(["a:", "b:", "c:"])]  # the SpaCKLE rows, not the baselines


def study_row(variant_prefix, centre, inference="zeroed"):
    sel = (trained["variant"].str.startswith(variant_prefix) & (trained["centre"].astype(bool) == centre)
           & (trained["inference"] == inference))
    return trained[sel].iloc[0]


win = study_row(best["variant"][:2], bool(best["centre"]), best["inference"])
other_centre = study_row(best["variant"][:2], not best["centre"], best["inference"])
paper_raw = study_row("a:", False)
old_default = study_row("b:", True)
test_best = trained.sort_values("test").iloc[0]
train_mean = study.loc[study["variant"] == "train mean", "val"]
glue("study_winner", best["variant"].split(":")[0], display=False)
glue("study_winner_long", best["variant"].split(": ", 1)[1].replace(" (paper)", ""), display=False)
glue("study_winner_centre", "centred" if best["centre"] else "raw (uncentred)", display=False)
glue("study_winner_val", f"{win['val']:.3f}", display=False)
glue("study_paper_val", f"{paper_raw['val']:.3f}", display=False)
glue("study_old_val", f"{old_default['val']:.3f}", display=False)
glue("study_other_centre", "without" if best["centre"] else "with", display=False)
glue("study_other_centre_val", f"{other_centre['val']:.3f}", display=False)
glue("study_seed_sd", f"{spread.max():.3f}", display=False)
glue("study_mean_val", f"{float(train_mean.iloc[0]):.3f}" if len(train_mean) else "n/a", display=False)
steps_run = int(study_sched.get("steps", 0)) or int(study_runs["best_step"].max())
late = (study_runs[study_runs["variant"].str[:2].isin(["a:", "b:", "c:"])]
        .groupby(["variant", "centre", "seed"])["best_step"].first() >= 0.9 * steps_run)
late_raw = late[~late.index.get_level_values("centre").astype(bool)].mean()
late_centred = late[late.index.get_level_values("centre").astype(bool)].mean()
glue("study_late_raw", f"{late_raw:.0%}", display=False)
glue("study_late_centred", f"{late_centred:.0%}", display=False)
glue("study_steps", f"{steps_run:,}", display=False)
by_centre = trained.pivot_table(index=["variant", "inference"], columns="centre", values="val")
glue("study_centre_all", "every variant gains from it" if (by_centre[True] < by_centre[False]).all()
     else "though not every variant gains from it", display=False)
glue("study_test_agrees",
     "is also the lowest on the test spots" if (test_best[["variant", "centre", "inference"]]
                                                 == win[["variant", "centre", "inference"]]).all()
     else f"is not the lowest on the test spots (there {test_best['variant'].split(':')[0]}, "
          f"{'centred' if test_best['centre'] else 'raw'}, is; the validation spots decide)", display=False)
print(f"winner on the validation spots: {best}")

# %% [markdown]
# On the validation spots, the lowest completion MSE comes from variant
# ({glue:text}`study_winner`) — {glue:text}`study_winner_long` — with
# {glue:text}`study_winner_centre` inputs: {glue:text}`study_winner_val`, against
# {glue:text}`study_paper_val` for the paper's recipe as published (variant a, raw inputs),
# {glue:text}`study_old_val` for the library's old default (b, centred) and
# {glue:text}`study_mean_val` for the train-mean fill. The largest seed-to-seed standard
# deviation of any configuration is {glue:text}`study_seed_sd`. The winner
# {glue:text}`study_test_agrees`. It is now the default of `train_spackle`.
#
# Centring is not in the paper; {glue:text}`study_other_centre` it the winner's MSE is
# {glue:text}`study_other_centre_val`, and {glue:text}`study_centre_all`. With raw inputs (log2-TPM
# values around 10) a masked entry is a 0 among values near 10, and the model has to learn each
# gene's level from the data before a 0 can mean "unknown"; with centred inputs a masked entry
# already reads as the gene's average. The study ran on the CPU schedule
# ({glue:text}`study_steps` steps, see the provenance above); {glue:text}`study_late_raw` of the raw
# runs and {glue:text}`study_late_centred` of the centred ones had their best checkpoint in the last
# tenth of training. Whether the raw variants catch up over the paper's 10,000 steps this book has
# not measured.
#
# ## Training SpaCKLE
#
# Now the model we keep, trained with the library's defaults (the study's winner, the paper's
# 10,000 steps of batch 256 in the full run). `train_spackle` runs through the library's one
# Lightning trainer (`spared_lib.engine`): the weights with the lowest validation MSE are kept,
# and a GPU gets mixed precision.

# %%
size = dict(d_model=D_MODEL, dim_feedforward=D_FF, batch_size=BATCH_SIZE, device=DEVICE, seed=SEED,
            progress=not FAST)
model, history = completion.train_spackle(adata, steps=STEPS, **size)
fig = plotting.plot_training_curves({"SpaCKLE": history}, data_label=LABEL)

# %%
meta = model.meta
glue("best_val", f"{meta['best_val_mse']:.3f}", display=False)
glue("best_step", f"{meta['best_step']:,}", display=False)
glue("steps", f"{meta['steps']:,}", display=False)
glue("train_s", f"{meta['train_time_s']:.0f} s on {meta['device']}", display=False)
print(f"options: train_input={meta['train_input']!r}, loss={meta['loss']!r}, centre={meta['centre']}, "
      f"inference={meta['inference']!r}\nbest validation MSE {meta['best_val_mse']:.4f} at step "
      f"{meta['best_step']} of {meta['steps']} ({meta['train_time_s']:.0f} s on {meta['device']})")

# %% [markdown]
# The best validation MSE, {glue:text}`best_val`, came at step {glue:text}`best_step` of
# {glue:text}`steps` ({glue:text}`train_s`).
#
# `complete` fills every missing entry of `c_d_log1p` and writes `c_t_log1p` (and `c_t_deltas`),
# the targets the prediction chapters train on. Observed values are never changed.

# %%
completion.complete(adata, model)
assert np.array_equal(adata.layers["c_t_log1p"][m], x[m])
pd.DataFrame({"median fill (c_d_log1p)": x[~m][:5], "SpaCKLE (c_t_log1p)": adata.layers["c_t_log1p"][~m][:5]})

# %% [markdown]
# ## Fig. 3 on this chapter's data
#
# stLearn's SME imputation weights the spots within three spacings by spatial adjacency ×
# morphological similarity × expression correlation and fills zeros with the weighted mean of the
# top three (we rewrote it from its published algorithm). her2st's counts-only sections have no
# image, so here its morphology term is dropped (weight 1); the benchmark script uses image
# features where every slide has one. For each masking fraction and seed we hide that fraction of
# the observed entries, complete them with the three methods, and score the hidden entries of the
# test slides.

# %%
rows, panels = [], {}
for frac in FRACTIONS:
    for seed in SEEDS:
        for method in ("spackle", "median", "sme", "mean"):
            r = completion.evaluate_completion(adata, method, frac, seed=seed, model=model, split="test",
                                               return_completion=seed == SEEDS[0])
            rows.append({k: r[k] for k in ("method", "mask_fraction", "seed", "MSE", "PCC-Gene")})
            if seed == SEEDS[0]:
                panels.setdefault(frac, {})[method] = r
here = pd.DataFrame(rows)
table = here.groupby(["mask_fraction", "method"])["MSE"].mean().unstack()
table["reduction vs median (%)"] = 100 * (1 - table["spackle"] / table["median"])
table["reduction vs train mean (%)"] = 100 * (1 - table["spackle"] / table["mean"])
red_here = table["reduction vs median (%)"]
glue("here_vs_mean", f"{table['reduction vs train mean (%)'].mean():.0f} %", display=False)
glue("here_red_min", f"{red_here.min():.0f} %", display=False)
glue("here_red_max", f"{red_here.max():.0f} %", display=False)
glue("here_ahead", "at every fraction" if (table["spackle"] < table["median"]).all()
     else f"at {int((table['spackle'] < table['median']).sum())} of {len(table)} fractions", display=False)
table.round(4)

# %% [markdown]
# On this chapter's data SpaCKLE is ahead of the median method {glue:text}`here_ahead`, lowering
# its MSE by {glue:text}`here_red_min` to {glue:text}`here_red_max` depending on the masking, and
# the train-mean fill's by {glue:text}`here_vs_mean` on average. The qualitative panel shows one
# gene on a test slide as masking grows.

# %%
gene_i = int(np.argmax(adata.var["d_log1p_moran"].to_numpy()))
show = [f for f in FRACTIONS if f in (FRACTIONS[0], 0.3, 0.5, FRACTIONS[-1])]
qual = {}
for frac in show:
    r = panels[frac]
    hidden = r["spackle"]["hidden"][:, gene_i]
    qual[frac] = {"truth": np.where(m[:, gene_i], x[:, gene_i], np.nan),
                  "masked": np.where(m[:, gene_i] & ~hidden, x[:, gene_i], np.nan),
                  "median": r["median"]["completed"][:, gene_i],
                  "spackle": r["spackle"]["completed"][:, gene_i]}
fig = plotting.qualitative_panel(adata, adata.var_names[gene_i], qual, slide, show, data_label=LABEL)
top = show[-1]
on = (adata.obs["slide_id"] == slide).to_numpy()
hid = panels[top]["spackle"]["hidden"][on, gene_i]
sd = {k: float(np.std(qual[top][k][on][hid])) for k in ("truth", "median", "spackle")}
glue("q_gene", adata.var["gene_symbol"].iloc[gene_i], display=False)
glue("q_frac", f"{top:.0%}", display=False)
glue("q_sd_truth", f"{sd['truth']:.2f}", display=False)
glue("q_sd_median", f"{sd['median']:.2f}", display=False)
glue("q_sd_spackle", f"{sd['spackle']:.2f}", display=False)
glue("q_flatter", "flatter than" if sd["median"] < sd["spackle"] else "no flatter than", display=False)
glue("q_smoother", "Both vary less than the truth: neither can predict a spot's own noise."
     if max(sd["median"], sd["spackle"]) < sd["truth"] else "", display=False)

# %% [markdown]
# At {glue:text}`q_frac` masking the hidden entries of {glue:text}`q_gene` on this slide vary with a
# standard deviation of {glue:text}`q_sd_truth` in the truth; the median method's fills vary by
# {glue:text}`q_sd_median` and SpaCKLE's by {glue:text}`q_sd_spackle`, so the median's map is
# {glue:text}`q_flatter` SpaCKLE's. {glue:text}`q_smoother`
#
# ## Fig. 3 on every real dataset
#
# The paper's Fig. 3 pools SpaRED's datasets. Ours pools the real data at hand:
# `benchmarks/completion.py` ran SpaCKLE (the library default), the median method and SME on each
# her2st patient (consecutive sections: last one test), on her2st across its 7 patients (patient
# H tests) and on the CytAssist Visium slide (spatial bands), at 10–70 % masking, three seeds each;
# the table is committed with its provenance (printed above). Its `schedule` column says which
# training schedule made each row: `cpu` (a smaller model, fewer steps, sized for the whole table
# to run in under an hour on a 2-core CPU; the committed table took {glue:text}`tab_minutes`
# minutes at load {glue:text}`tab_load`) and, where it has been run on a GPU, `paper` (10,000
# steps, batch 256, d_model 128).

# %%
runs = pd.DataFrame(res["table_runs"])
reds = pd.DataFrame(res["reductions"])
avg = res["averages"]
sched = "paper" if "paper" in avg else next(iter(avg))
a = avg[sched]
datasets = pd.DataFrame(res["datasets"])
per_frac = pd.Series(a["reduction_vs_median_per_fraction_%"]).rename(index=float)
glue("tab_sched", sched, display=False)
glue("tab_red_paper", f"{a['reduction_vs_median_at_paper_fraction_%']:.1f} %", display=False)
glue("tab_red_all", f"{a['reduction_vs_median_all_fractions_%']:.1f} %", display=False)
glue("tab_red_sme", f"{a['reduction_vs_sme_all_fractions_%']:.1f} %", display=False)
glue("tab_red_mean", f"{a['reduction_vs_train_mean_all_fractions_%']:.1f} %", display=False)
glue("tab_behind", "in no dataset at any fraction" if not a["cells_behind_median"]
     else f"in {len(a['cells_behind_median'])} dataset × fraction cells", display=False)
glue("tab_goal", "meets" if a["reduction_vs_median_at_paper_fraction_%"] >= 85 else "falls short of", display=False)
glue("tab_max_at", f"{per_frac.idxmax():.0%}", display=False)
glue("tab_min_at", f"{per_frac.idxmin():.0%}", display=False)
glue("tab_n", f"{runs['dataset'].nunique()}", display=False)
glue("tab_minutes", f"{res['runs']['cpu']['table_s'] / 60:.0f}" if "cpu" in res["runs"] else "n/a", display=False)
glue("tab_load", f"{res['table_provenance']['load_average_1_5_15_min'][0]:.1f} on "
     f"{res['table_provenance']['machine']['cpus']} cores", display=False)
print(f"schedules in the table: {sorted(runs['schedule'].unique())}; {runs['dataset'].nunique()} datasets, "
      f"seeds {sorted(int(v) for v in runs['seed'].unique())}; SpaCKLE options {res['spackle_options']}")
datasets[["dataset", "schedule", "spots", "genes", "slides", "patients", "missing", "test_slides",
          "sme_morphology"]].round(3)

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), dpi=100, layout="constrained")
at30 = runs[(runs["mask_fraction"] == 0.3) & (runs["schedule"] == sched)]
plotting.completion_violin(at30, data_label=f"{runs['dataset'].nunique()} real datasets x seeds, 30 % masked",
                           ax=axes[0])
_ = plotting.reduction_vs_masking(reds[reds["schedule"] == sched],
                                  data_label=f"real datasets, '{sched}' schedule", ax=axes[1])

# %%
one = "her2st" if "her2st" in set(runs["dataset"]) else str(runs["dataset"].iloc[0])
fig = plotting.mse_vs_masking(runs[(runs["dataset"] == one) & (runs["schedule"] == sched)],
                              methods=("spackle", "median", "mean"),
                              data_label=f"{one} (real), test slides, seeds {sorted(int(v) for v in runs['seed'].unique())}")

# %%
wide = (reds[reds["schedule"] == sched].pivot(index="dataset", columns="mask_fraction",
                                              values="reduction_vs_median_%"))
wide.columns = [f"{c:.0%}" for c in wide.columns]
wide.round(1)

# %% [markdown]
# Over the {glue:text}`tab_n` real datasets and the {glue:text}`tab_sched` schedule, SpaCKLE lowers
# the median method's completion MSE by {glue:text}`tab_red_paper` on average at the paper's 30 %
# masking (paper, over SpaRED: 82.5 %; our goal was 85 %, which this run
# {glue:text}`tab_goal`) and by {glue:text}`tab_red_all` averaged over 10–70 %; it is behind the
# median {glue:text}`tab_behind`. The margin is largest at {glue:text}`tab_max_at` and smallest at
# {glue:text}`tab_min_at` masking, following the median method's own error (see above) rather
# than growing with the masking as in the paper. Against the train-mean fill, which knows nothing
# about the spot, SpaCKLE's reduction is {glue:text}`tab_red_mean`: a large part of the
# reduction against the median measures the median method's weakness on hidden observed
# entries, not SpaCKLE's strength. SME's error is the largest by far (SpaCKLE's MSE is
# {glue:text}`tab_red_sme` below it), as in the paper: its top three weights include the spot
# itself, whose missing value is zero, so its fills are pulled towards zero.
#
# ## How fast is it?
#
# The same run timed SpaCKLE's training step on this CPU (one thread) at the paper's size and at
# the CPU schedule's: through the engine (`train_spackle`: gathering neighbourhoods on the
# device, masking, Lightning's loop), as a bare step of the same model on a fixed batch, the same
# without dropout, and against the arithmetic limit (the step's matmul FLOPs over the measured
# matmul throughput).

# %%
tm = res["timing"]
speed = pd.DataFrame({s_: {"engine step (ms)": 1e3 * tm[s_]["engine_step_s"],
                           "bare step (ms)": 1e3 * tm[s_]["bare_step_s"],
                           "bare, no dropout (ms)": 1e3 * tm[s_]["bare_step_no_dropout_s"],
                           "arithmetic limit (ms)": 1e3 * tm[s_]["limit_s"],
                           "GFLOP per step": tm[s_]["flops_per_step"] / 1e9} for s_ in ("paper", "cpu")}).T
p_ = tm["paper"]
glue("t_engine", f"{p_['engine_step_s']:.2f} s", display=False)
glue("t_limit", f"{p_['limit_s']:.2f} s", display=False)
glue("t_gflops", f"{tm['matmul_gflops']:.0f}", display=False)
glue("t_loop", f"{100 * (p_['engine_step_s'] - p_['bare_step_s']) / p_['engine_step_s']:.0f} %", display=False)
glue("t_dropout", f"{100 * (p_['bare_step_s'] - p_['bare_step_no_dropout_s']) / p_['engine_step_s']:.0f} %",
     display=False)
glue("t_complete", f"{tm['complete_1000_spots_s']:.2f} s", display=False)
glue("t_load", f"{tm['provenance']['load_average_1_5_15_min'][0]:.1f}", display=False)
speed.round(1)

# %% [markdown]
# At the paper's size a step takes {glue:text}`t_engine` here (load {glue:text}`t_load` on 2
# cores), against an arithmetic limit of {glue:text}`t_limit` at the measured
# {glue:text}`t_gflops` GFLOP/s. The loop around the step costs {glue:text}`t_loop` of it; dropout's
# random numbers cost {glue:text}`t_dropout` (the original's dropout of 0.1, kept), and the rest is
# the step's other elementwise work (layer norms, softmax, Adam). Completing 1,000 spots with a
# paper-size model takes {glue:text}`t_complete`: completion computes the last encoder layer for
# the centre token only (`SpaCKLE.forward_centre`), which halves its cost.
#
# ## Exercises
#
# ```{admonition} Exercise 1
# Retrain SpaCKLE with `n_heads=4` (pass it to `train_spackle`). Does the validation MSE change?
# ```
#
# ````{dropdown} Solution
# ```python
# m4, h4 = completion.train_spackle(adata, steps=STEPS, n_heads=4, **size)
# print(m4.meta["best_val_mse"], model.meta["best_val_mse"])
# ```
# More heads split the same `d_model` into smaller subspaces; compare the difference with the
# seed-to-seed spread of the study above before calling it an improvement.
# ````
#
# ```{admonition} Exercise 2
# Train the paper's recipe as published (`train_input="median"`, `loss="all"`, `centre=False`)
# and complete the same hidden entries with `inference="zeroed"` and `inference="median"`
# (`completion.evaluate_completion(adata, "spackle", 0.3, model=..., inference=...)`). Which rule
# suits a model trained with median-filled inputs?
# ```
#
# ````{dropdown} Solution
# ```python
# paper, _ = completion.train_spackle(adata, steps=STEPS, train_input="median", loss="all",
#                                     centre=False, **size)
# for rule in ("zeroed", "median"):
#     r = completion.evaluate_completion(adata, "spackle", 0.3, model=paper, inference=rule, split="test")
#     print(rule, r["MSE"])
# ```
# The committed study above has the answer over three seeds and two datasets: compare the two
# rows of variant (a).
# ````
#
# ```{admonition} Exercise 3
# Give SME no morphology and, separately, drop the spot itself from its top neighbours
# (`completion.sme_complete(..., include_self=False)`). Which change helps SME more?
# ```
#
# ````{dropdown} Solution
# ```python
# hidden = completion.random_observed_mask(m, 0.3, seed=0)
# vis = m & ~hidden
# for kw in ({}, {"include_self": False}):
#     filled = completion.sme_complete(adata, x, vis, **kw)
#     print(kw, np.mean((filled - x)[hidden] ** 2))
# ```
# Dropping the spot itself removes the pull towards zero and lowers the MSE by far the most.
# ````
#
# ## Summary
#
# - Missing entries (dropouts) are common; the median method fills them gene by gene, biased low
#   when its window holds the spot's own zero, flat when it falls back to the slide median.
# - SpaCKLE reads the whole expression profile of a spot and its 18 same-slide neighbours with a
#   transformer whose attention runs across those neighbours, trained by hiding observed entries.
# - What the model sees in training matters: the library's default is the winner of a fair study
#   scored on validation slides, and centring (not in the paper) is part of that choice.
# - `complete` writes `c_t_log1p`, the targets of the next chapters; `benchmarks/completion.py`
#   repeats Fig. 3 on every real dataset and commits the table shown here.
