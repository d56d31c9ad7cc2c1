"""spared_lib.plotting: one convention for every figure (``ax=``, ``data_label=``, the figure
returned), colour bars of expression with their unit, one gene lookup, the merged training-curve and
metric-vs-size figures, and no overlapping text in the figures it makes."""
from __future__ import annotations

import inspect
import sys
from pathlib import Path

import matplotlib

matplotlib.use("agg")

import anndata as ad  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import scipy.sparse as sp  # noqa: E402

from spared_lib import plotting  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import figcheck  # noqa: E402
from spared_lib.plotting._common import _ax  # noqa: E402

NOT_FIGURES = {"gene_index", "gene_label", "glue", "layer_unit", "slide_image"}
FIGURES = sorted(n for n, f in vars(plotting).items()
                 if callable(f) and not n.startswith("_") and n not in NOT_FIGURES and n != "EXPRESSION_UNIT")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _toy(n_genes=6, seed=0):
    """Two 8 x 8 slides with an image each, log1p/Δ layers, a mask and symbols G0…"""
    rng = np.random.default_rng(seed)
    side = 8
    rows, cols = np.divmod(np.arange(side * side), side)
    xy = np.c_[100 + 50 * cols, 100 + 50 * rows].astype(float)
    n = 2 * side * side
    log1p = rng.gamma(2.0, 1.0, (n, n_genes)).astype(np.float32)
    mask = rng.random((n, n_genes)) > 0.3
    var = pd.DataFrame({"gene_symbol": [f"G{j}" for j in range(n_genes)]},
                       index=[f"ENSG{j:011d}" for j in range(n_genes)])
    obs = pd.DataFrame({"slide_id": pd.Categorical(np.repeat(["A", "B"], side * side)),
                        "split": np.repeat(["train", "test"], side * side),
                        "total_counts": rng.integers(100, 1000, n).astype(float)},
                       index=[f"s{i}" for i in range(n)])
    adata = ad.AnnData(X=sp.csr_matrix(np.round(2 ** log1p - 1).astype(np.float32)), obs=obs, var=var)
    adata.obsm["spatial"] = np.tile(xy, (2, 1))
    adata.layers["log1p"] = log1p
    adata.layers["c_d_log1p"] = log1p
    adata.layers["c_d_deltas"] = log1p - log1p[:side * side].mean(0)
    adata.layers["mask"] = mask
    image = np.full((300, 300, 3), 230, np.uint8)
    adata.uns["spatial"] = {s: {"images": {"hires": image},
                                "scalefactors": {"tissue_hires_scalef": 0.5, "spot_diameter_fullres": 40.0}}
                            for s in ("A", "B")}
    adata.uns["dataset"] = {"key": "toy"}
    return adata


def overlaps(fig, tolerance=0.15):
    """Pairs of drawn labels on top of one another (tools/figcheck.py, also run on the book's figures)."""
    return figcheck.overlapping_labels(fig, tolerance)


def test_the_overlap_check_finds_overlapping_labels():
    fig, (a, b) = plt.subplots(1, 2, figsize=(3, 2))
    a.set_title("a long title that runs into the next panel")
    b.set_title("the next panel's title")
    assert overlaps(fig)
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.set_xticks(range(30), [f"label {i}" for i in range(30)])  # crowded tick labels
    assert overlaps(fig)
    fig, ax = plt.subplots(figsize=(4, 3), layout="constrained")
    ax.set(title="fine", xlabel="x", ylabel="y")
    assert not overlaps(fig)


def _history(n=100, val_every=10, offset=0.0):
    steps = np.arange(1, n + 1)
    h = pd.DataFrame({"step": steps, "train_loss": 2.0 / np.sqrt(steps) + offset, "val_mse": np.nan})
    h.loc[h.step % val_every == 0, "val_mse"] = 1.5 / np.sqrt(h.step[h.step % val_every == 0]) + offset
    return h


def _results():
    rng = np.random.default_rng(0)
    models = ["stnet", "shufflenet", "vit_b", "bleep"]
    rows = [{"dataset": d, "model": m, "target": "completed", "MSE": 1 + rng.random(), "PCC-Gene": rng.random(),
             "n_params": 10 ** (5 + k)} for d in ("d1", "d2", "d3") for k, m in enumerate(models)]
    return pd.DataFrame(rows)


def _calls(adata, kw):
    """Each figure of the package, called on toy inputs (a function of no arguments each)."""
    f = _Lookup()
    table = pd.DataFrame({"abbreviation": ["A1", "B2"], "organism": ["human", "mouse"], "tissue": ["x", "y"],
                          "spots": [100, 200], "raw_missing": [0.9, 0.8], "processed_missing": [0.3, 0.2]})
    preds = {"ShuffleNet": np.asarray(adata.layers["log1p"])[64:] + 0.1}
    fractions = [0.1, 0.5]
    qual = {f_: {k: np.asarray(adata.layers["log1p"])[:, 0] for k in ("truth", "masked", "median", "spackle")}
            for f_ in fractions}
    completion = pd.DataFrame({"method": ["spackle", "median"] * 4, "MSE": np.linspace(0.5, 2, 8),
                               "mask_fraction": [0.1, 0.1, 0.5, 0.5] * 2})
    curve = {"running_glob_exp_frac": np.linspace(1, 0.5, 50), "exp_frac": np.linspace(1, 0, 50)}
    calls = {
        "spatial_scatter": lambda: f(adata, "G1", layer="log1p", **kw),
        "plot_database_overview": lambda: f(table, **kw),
        "plot_missing_fraction": lambda: f(table, **kw),
        "plot_split_sizes": lambda: f(adata, **kw),
        "plot_gene_detection": lambda: f(adata, **kw),
        "plot_best_pcc": lambda: f(_results(), **kw),
        "plot_normalised_mse": lambda: f(_results(), **kw),
        "plot_best_model_pie": lambda: f(_results(), **kw),
        "plot_mse_vs_params": lambda: f(_results(), **kw),
        "plot_raw_vs_completed": lambda: f(pd.concat([_results().query("dataset == 'd1'").assign(target=t)
                                                      for t in ("raw", "completed")]),
                                           pd.DataFrame({"model": ["train_mean"] * 2, "target": ["raw", "completed"],
                                                         "MSE": [1.7, 1.8]}), **kw),
        "plot_metric_vs_params": lambda: f(_results().groupby("model")[["MSE", "n_params"]].mean(), **kw),
        "plot_filter_curve": lambda: f(curve, 0.7, 20, **kw),
        "plot_value_distributions": lambda: f(adata, ("log1p", "c_d_log1p"), **kw),
        "plot_moran_ranking": lambda: f(np.linspace(0.9, 0, 40), 10, **kw),
        "plot_pca_by_slide": lambda: f({"before": adata.layers["log1p"], "after": adata.layers["c_d_log1p"]},
                                       adata.obs["slide_id"], **kw),
        "plot_delta_distributions": lambda: f(adata, ("c_d_log1p", "c_d_deltas"), n_genes=4, **kw),
        "plot_patch_gallery": lambda: f(adata, np.zeros((adata.n_obs, 8, 8, 3), np.uint8), n=4, **kw),
        "plot_preprocessing_scaling": lambda: f([{"impl": i, "n_spots": n, "seconds": t * n / 1000,
                                                  "peak_rss_gb": 0.5 + n / 1e5}
                                                 for i, t in (("ours", 0.1), ("spared", 2.0)) for n in (5000, 20000)],
                                                time_target=(20000, 10), **kw),
        "plot_training_curves": lambda: f({"a": _history(), "b": _history(offset=0.2)}, **kw),
        "completion_violin": lambda: f(completion, **kw),
        "mse_vs_masking": lambda: f(completion, **kw),
        "qualitative_panel": lambda: f(adata, "G0", qual, "A", fractions, **kw),
        "reduction_vs_masking": lambda: f(pd.DataFrame({"dataset": ["d1"] * 3 + ["d2"] * 3,
                                                        "mask_fraction": [0.1, 0.3, 0.5] * 2,
                                                        "reduction_vs_median_%": [20.0, 15, 10, 25, 18, 12]}), **kw),
        "training_input_study": lambda: f(pd.DataFrame({
            "variant": ["median input", "zeroed input", "median input", "median method", "train mean"],
            "centre": [False, False, True, False, False], "inference": ["zeroed"] * 5,
            "val": [1.2, 1.4, 0.9, 1.5, 1.6], "test": [1.3, 1.5, 1.0, 1.6, 1.7]}), **kw),
        "plot_per_gene_pcc": lambda: f(pd.DataFrame({"model": ["a", "a", "b", "b"], "gene": list("xyxy"),
                                                     "pcc": [0.1, 0.2, 0.3, 0.4]}), **kw),
        "plot_expression_maps": lambda: f(adata, preds, ["G0", "ENSG00000000002"], np.arange(64, 128),
                                          layer="log1p", **kw),
    }
    return {name: (lambda call=call, name=name: f.use(name, call)) for name, call in calls.items()}


class _Lookup:
    """``f(...)`` inside a call of :func:`_calls` is the figure being called."""

    current = None

    def __call__(self, *args, **kw):
        return getattr(plotting, self.current)(*args, **kw)

    def use(self, name, call):
        self.current = name
        return call()


def _draw(name, adata, **kw):
    return _calls(adata, kw)[name]()


def test_every_figure_is_covered_here():
    assert set(_calls(_toy(), {})) == set(FIGURES)


@pytest.mark.parametrize("name", FIGURES)
def test_every_figure_takes_ax_and_data_label_and_returns_its_figure(name):
    params = inspect.signature(getattr(plotting, name)).parameters
    assert "ax" in params and params["ax"].default is None, f"{name} must take ax=None"
    assert "data_label" in params, f"{name} must take data_label="
    for old in ("data", "data_name", "axes"):
        assert old not in params, f"{name} still takes {old}="
    adata = _toy()
    fig = _draw(name, adata, data_label="toy data")
    assert isinstance(fig, matplotlib.figure.Figure)
    titles = [a.get_title() for a in fig.axes] + [fig._suptitle.get_text() if fig._suptitle else ""]
    assert any("toy data" in t for t in titles), f"{name}: the data's name is in no title: {titles}"
    assert not overlaps(fig), f"{name}: overlapping labels {overlaps(fig)}"


@pytest.mark.parametrize("name", FIGURES)
def test_every_figure_draws_on_the_axes_it_is_given(name):
    adata = _toy()
    fig = _draw(name, adata, data_label="toy data")
    n_panels = len([a for a in fig.axes if a.get_label() != "<colorbar>"])
    fig2, axes = plt.subplots(1, n_panels)
    out = _draw(name, adata, data_label="toy data", ax=axes if n_panels > 1 else axes)
    assert out is fig2
    drawn = [a for a in np.atleast_1d(axes) if a.has_data() or a.texts or a.images]
    assert len(drawn) == n_panels, f"{name}: drew on {len(drawn)} of the {n_panels} axes given"


def test_wrong_number_of_axes_is_a_clear_error():
    fig, axes = plt.subplots(1, 2)
    with pytest.raises(ValueError, match="3 panels; ax holds 2"):
        _ax(axes, shape=(1, 3))
    with pytest.raises(TypeError, match="one panel"):
        _ax(list(axes))


@pytest.mark.parametrize("name", ["plot_best_pcc", "plot_training_curves", "plot_metric_vs_params",
                                  "completion_violin", "plot_per_gene_pcc", "plot_filter_curve",
                                  "plot_preprocessing_scaling"])
def test_a_table_figure_asks_for_its_data(name):
    with pytest.raises(ValueError, match="data_label="):
        _draw(name, _toy())


def test_an_anndata_figure_names_its_dataset_by_default():
    fig = plotting.plot_split_sizes(_toy())
    assert "toy" in fig.axes[0].get_title()
    fig = plotting.spatial_scatter(_toy(), "G1", layer="log1p")
    assert fig.axes[0].get_title().splitlines() == ["A — G1", "toy"]


def test_gene_lookup_by_id_or_symbol():
    adata = _toy()
    assert plotting.gene_index(adata, "G3") == 3
    assert plotting.gene_index(adata, "ENSG00000000002") == 2
    assert plotting.gene_label(adata, 2) == "G2 (ENSG00000000002)"
    with pytest.raises(KeyError, match="TP53"):
        plotting.gene_index(adata, "TP53")
    # the map of a symbol draws that gene's column of the layer, on the chosen slide only
    fig = plotting.spatial_scatter(adata, "G4", slide_id="B", layer="log1p")
    values = fig.axes[0].collections[-1].get_array()
    np.testing.assert_allclose(values, adata.layers["log1p"][64:, 4])


@pytest.mark.parametrize("layer, unit", [("log1p", "log2(TPM+1)"), ("c_d_log1p", "log2(TPM+1)"),
                                         ("c_d_deltas", "Δ log2(TPM+1)"), (None, "counts")])
def test_expression_colour_bars_carry_the_unit(layer, unit):
    fig = plotting.spatial_scatter(_toy(), "G1", layer=layer)
    bars = [a for a in fig.axes if a.get_label() == "<colorbar>"]
    assert len(bars) == 1 and bars[0].get_ylabel() == unit
    fig = plotting.spatial_scatter(_toy(), "total_counts")
    assert fig.axes[-1].get_ylabel() == "total_counts"


def test_expression_maps_one_colour_bar_per_gene_row_in_log_units():
    adata = _toy()
    fig = _draw("plot_expression_maps", adata, data_label="toy")
    bars = [a for a in fig.axes if a.get_label() == "<colorbar>"]
    assert [b.get_ylabel() for b in bars] == ["log2(TPM+1)"] * 2
    panels = [a for a in fig.axes if a.get_label() != "<colorbar>"]
    assert [p.get_title() for p in panels] == ["G0: truth (observed)", "G0: ShuffleNet",
                                               "G2: truth (observed)", "G2: ShuffleNet"]
    # the truth panel draws only the observed spots of the test slide
    assert len(panels[0].collections[-1].get_offsets()) == adata.layers["mask"][64:, 0].sum()


def test_qualitative_panel_has_one_scale_with_its_unit():
    fig = _draw("qualitative_panel", _toy(), data_label="toy")
    bars = [a for a in fig.axes if a.get_label() == "<colorbar>"]
    assert len(bars) == 1 and bars[0].get_ylabel() == "log2(TPM+1)"
    limits = {a.collections[-1].get_clim() for a in fig.axes if a.get_label() != "<colorbar>"}
    assert len(limits) == 1


def test_training_curves_show_validation_points_and_the_smoothed_loss():
    h = _history(n=100, val_every=10)
    fig = plotting.plot_training_curves({"run": h}, data_label="toy", smooth=5, title="SpaCKLE training")
    ax = fig.axes[0]
    train, val = ax.lines
    np.testing.assert_allclose(val.get_xdata(), np.arange(10, 101, 10))
    np.testing.assert_allclose(val.get_ydata(), h.val_mse.dropna())
    np.testing.assert_allclose(train.get_ydata()[4], h.train_loss[:5].mean())
    assert ax.get_title().splitlines() == ["SpaCKLE training", "toy"] and ax.get_yscale() == "log"
    # a FitResult history has rows with validation only (train_loss NaN): they are skipped, not drawn as gaps
    h2 = pd.concat([h, pd.DataFrame({"step": [100], "train_loss": [np.nan], "val_mse": [0.1]})])
    fig = plotting.plot_training_curves({"run": h2}, data_label="toy", smooth=1)
    assert np.isfinite(fig.axes[0].lines[0].get_ydata()).all()
    with pytest.raises(ValueError, match="lack columns"):
        plotting.plot_training_curves({"run": h.drop(columns="val_mse")}, data_label="toy")


def test_metric_vs_params_points_labels_and_spearman():
    table = pd.DataFrame({"MSE": [3.0, 2.0, 1.0, 1.5], "n_params": [1e4, 1e5, 1e6, 1e7]},
                         index=["stnet", "bleep", "vit_b", "custom"])
    fig = plotting.plot_metric_vs_params(table, data_label="toy")
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.collections[0].get_offsets(), table[["n_params", "MSE"]].to_numpy())
    assert [t.get_text() for t in ax.texts] == ["ST-Net", "BLEEP", "ViT-B", "custom"]
    assert "ρ = -0.80" in ax.get_title() and ax.get_xscale() == "log"


def test_labels_of_nearby_points_do_not_overlap():
    """ViT-B and ViT-B+Δ have the same size and nearly the same error (the paper's Fig. 4b):
    their labels must still be readable."""
    table = pd.DataFrame({"MSE": [1.05, 1.052, 1.06, 1.10, 1.09], "n_params": [8.6e7, 8.6e7, 8.62e7, 1.3e8, 7e6]},
                         index=["vit_b", "vit_b_delta", "sepal", "egn", "stnet"])
    fig = plotting.plot_metric_vs_params(table, data_label="toy")
    assert not overlaps(fig), overlaps(fig)
    ax = fig.axes[0]
    frame = ax.get_window_extent()
    for t in ax.texts:  # every label inside the axes, next to its own point
        box = t.get_window_extent()
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1, t.get_text()


def test_maps_show_the_spots_not_the_whole_capture_area():
    adata = _toy()
    keep = np.flatnonzero(np.asarray(adata.obsm["spatial"])[:, 0] < 200)  # a corner of slide A
    fig = plotting.spatial_scatter(adata[keep], "G1", layer="log1p", slide_id="A")
    ax = fig.axes[0]
    xy = np.asarray(adata.obsm["spatial"])[keep][adata.obs["slide_id"].to_numpy()[keep] == "A"] * 0.5
    (x0, x1), (y1, y0) = ax.get_xlim(), ax.get_ylim()
    assert x0 <= xy[:, 0].min() and xy[:, 0].max() <= x1 and y0 <= xy[:, 1].min() and xy[:, 1].max() <= y1
    assert x1 - x0 < 150  # the image is 300 px wide: the corner is shown, not the whole image
    fig = plotting.spatial_scatter(adata[keep], "G1", layer="log1p", slide_id="A", crop=False)
    assert fig.axes[0].get_xlim() == (-0.5, 299.5)


def test_overlap_check_reads_each_line_of_a_title():
    """Two-line titles side by side: only lines on the same row can collide."""
    def two_titles(left, right):
        fig, axes = plt.subplots(1, 2, figsize=(5, 2.5))  # no layout engine: titles may collide
        for ax, title in zip(axes, (left, right)):
            ax.set_title(title)
            ax.set_axis_off()
        return fig

    long_a, long_b = "a rather long line of a title that runs on", "another long line of a title here"
    assert overlaps(two_titles(f"short\n{long_a}", f"short\n{long_b}")) == [(long_a, long_b)]
    # the long lines on different rows: the boxes of the whole titles meet, their lines do not
    assert overlaps(two_titles(f"short\n{long_a}", f"{long_b}\nshort")) == []


def test_glue_without_myst_nb_prints_the_value(monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "myst_nb", None)  # as on Colab, where myst-nb is not installed
    plotting.glue("n_spots", 123)
    plotting.glue("hidden", 4, display=False)
    assert capsys.readouterr().out == "n_spots: 123\n"
