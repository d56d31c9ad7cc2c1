"""spared_lib.widgets: the explorers draw the values they are asked for, react to their controls,
and leave a static PNG in an executed notebook."""
from __future__ import annotations

import base64

import matplotlib

matplotlib.use("agg")

import anndata as ad  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from spared_lib import widgets  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _toy(n_per_slide=(30, 20), n_genes=5, seed=0):
    """Two slides on a small grid with an image each, raw / median / SpaCKLE layers and a mask."""
    rng = np.random.default_rng(seed)
    n = sum(n_per_slide)
    slide = np.repeat(["A", "B"], n_per_slide)
    rows = np.concatenate([np.arange(k) // 6 for k in n_per_slide])
    cols = np.concatenate([np.arange(k) % 6 for k in n_per_slide])
    xy = np.c_[100 + 40 * cols, 100 + 40 * rows].astype(float)  # full-res pixels
    log1p = rng.gamma(2.0, 1.0, (n, n_genes)).astype(np.float32)
    mask = rng.random((n, n_genes)) > 0.4
    log1p[~mask] = 0
    var = pd.DataFrame({"gene_symbol": [f"G{j}" for j in range(n_genes)],
                        "d_log1p_moran": np.linspace(0.1, 0.9, n_genes)},
                       index=[f"ENSG{j:011d}" for j in range(n_genes)])
    obs = pd.DataFrame({"slide_id": pd.Categorical(slide), "split": "train"},
                       index=[f"s{i}" for i in range(n)])
    adata = ad.AnnData(X=log1p.copy(), obs=obs, var=var)
    adata.obsm["spatial"] = xy
    adata.layers["log1p"] = log1p
    adata.layers["c_d_log1p"] = np.where(mask, log1p, 1.5).astype(np.float32)
    adata.layers["c_t_log1p"] = np.where(mask, log1p, 2.5).astype(np.float32)
    adata.layers["mask"] = mask
    image = np.zeros((200, 200, 3), np.uint8)
    image[..., 0] = np.arange(200, dtype=np.uint8)[None, :]  # red = column: crops are checkable
    image[..., 1] = np.arange(200, dtype=np.uint8)[:, None]  # green = row
    adata.uns["spatial"] = {s: {"images": {"lowres": image},
                                "scalefactors": {"tissue_lowres_scalef": 0.5, "spot_diameter_fullres": 20.0}}
                            for s in ("A", "B")}
    adata.uns["dataset"] = {"key": "toy"}
    return adata


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_sources_keep_present_layers_in_order_and_check_predictions():
    adata = _toy()
    del adata.layers["c_t_log1p"]
    pred = np.ones((adata.n_obs, adata.n_vars))
    sources = widgets.expression_sources(adata, predictions={"shufflenet": pred})
    assert list(sources) == ["raw (log1p)", "median (c_d_log1p)", "prediction: shufflenet"]
    with pytest.raises(ValueError, match=r"predictions\['bad'\] has shape \(3, 5\)"):
        widgets.expression_sources(adata, predictions={"bad": np.ones((3, 5))})
    with pytest.raises(KeyError, match="nope"):
        widgets.expression_sources(adata, layers={"x": "nope"})


def test_gene_index_accepts_ids_and_symbols_and_names_a_missing_gene():
    adata = _toy()
    assert widgets.gene_index(adata, "G3") == 3
    assert widgets.gene_index(adata, "ENSG00000000002") == 2
    with pytest.raises(KeyError, match="'TP53'"):
        widgets.gene_index(adata, "TP53")


def test_expression_map_draws_the_chosen_layer_of_the_chosen_slide():
    adata = _toy()
    sources = widgets.expression_sources(adata)
    fig = widgets.expression_map(adata, "G1", "SpaCKLE (c_t_log1p)", sources=sources, slide_id="B")
    ax = fig.axes[0]
    drawn = ax.collections[0]
    sel = np.flatnonzero(adata.obs["slide_id"] == "B")
    np.testing.assert_allclose(drawn.get_array(), adata.layers["c_t_log1p"][sel, 1])
    # Spots land on the image at its scale (full-res × 0.5).
    np.testing.assert_allclose(drawn.get_offsets(), adata.obsm["spatial"][sel] * 0.5)
    assert "toy" in ax.get_title() and "G1" in ax.get_title() and "B" in ax.get_title()
    # One colour scale for all sources: 1st–99th percentile over raw, median and SpaCKLE.
    every = np.concatenate([adata.layers[k][sel, 1] for k in ("log1p", "c_d_log1p", "c_t_log1p")])
    np.testing.assert_allclose(drawn.get_clim(), np.percentile(every, [1, 99]))


def test_crop_pads_off_image_with_white():
    image = np.arange(5 * 6 * 3, dtype=np.uint8).reshape(5, 6, 3)
    out = widgets.crop(image, (0, 0), 2)  # centre at the top-left corner
    assert out.shape == (4, 4, 3)
    assert (out[:2] == 255).all() and (out[:, :2] == 255).all()
    np.testing.assert_array_equal(out[2:, 2:], image[:2, :2])
    np.testing.assert_array_equal(widgets.crop(image, (3, 2), 2), image[0:4, 1:5])


def test_spot_view_shows_the_given_patch_and_the_spot_profile_with_missing_entries_hollow():
    adata = _toy()
    patches = np.random.default_rng(1).integers(0, 255, (adata.n_obs, 8, 8, 3), dtype=np.uint8)
    spot = 7
    fig = widgets.spot_view(adata, spot, patches=patches, genes=["G0", "G4", "G2"])
    ax_map, ax_patch, ax_prof = fig.axes[:3]
    np.testing.assert_array_equal(ax_patch.images[0].get_array(), patches[spot])
    genes = [0, 4, 2]
    observed = adata.layers["mask"][spot, genes]
    filled = ax_prof.collections[0::2]  # per source: observed, then missing
    hollow = ax_prof.collections[1::2]
    for k, layer in enumerate(["log1p", "c_d_log1p", "c_t_log1p"]):
        np.testing.assert_allclose(filled[k].get_offsets()[:, 0], adata.layers[layer][spot, genes][observed])
        np.testing.assert_allclose(hollow[k].get_offsets()[:, 0], adata.layers[layer][spot, genes][~observed])
    # The spot is circled where it lies on the slide image.
    np.testing.assert_allclose(ax_map.collections[-1].get_offsets()[0], adata.obsm["spatial"][spot] * 0.5)


def test_spot_patch_without_patches_crops_the_stored_image_around_the_spot():
    adata = _toy()
    spot = 9
    patch, caption = widgets.spot_patch(adata, spot, context=3.0)
    half = int(np.ceil(3.0 * 20.0 * 0.5 / 2))  # 3 spot diameters at the image's scale
    x, y = adata.obsm["spatial"][spot] * 0.5
    assert patch.shape == (2 * half, 2 * half, 3) and "stored image" in caption
    # red encodes the column and green the row: the crop's centre is the spot.
    assert patch[half, half, 0] == int(x) and patch[half, half, 1] == int(y)


def test_explorer_redraws_on_control_changes():
    adata = _toy()
    explorer = widgets.explore_expression(adata, gene="G2")
    assert explorer.state == {"slide": "A", "gene": "ENSG00000000002", "source": "SpaCKLE (c_t_log1p)"}
    updates = []

    class Handle:  # IPython's DisplayHandle.update(obj, **kwargs)
        def update(self, obj, metadata=None):
            updates.append(obj.data)
            titles.append(metadata["book_titles"])

    titles = []

    explorer._handle = Handle()
    controls = explorer.controls
    assert [c.description for c in controls.children] == ["slide", "gene", "source"]
    explorer.widgets["source"].value = "raw (log1p)"  # what a reader's click does
    assert explorer.state["source"] == "raw (log1p)"
    assert len(updates) == 1 and updates[0].startswith(PNG_MAGIC)
    explorer.set(slide="B")
    assert explorer.widgets["slide"].value == "B" and len(updates) == 2
    assert titles[0][0].startswith("toy — A\n") and titles[1][0].startswith("toy — B\n")
    with pytest.raises(KeyError, match="colour"):
        explorer.set(colour="red")


def test_spot_explorer_keeps_the_spot_slider_within_the_slide():
    adata = _toy(n_per_slide=(30, 20))
    explorer = widgets.explore_spot(adata, spot=25)
    _ = explorer.controls
    assert explorer.widgets["spot"].max == 29
    explorer.set(slide="B")
    assert explorer.state["spot"] == 19 and explorer.widgets["spot"].max == 19
    with pytest.raises(IndexError, match="slide 'B' has 20 spots"):
        widgets.explore_spot(adata, slide_id="B", spot=20)
    assert explorer.png().startswith(PNG_MAGIC)


def test_explorer_leaves_a_static_png_in_an_executed_notebook(tmp_path):
    """What the built book shows without a kernel: a PNG of the initial state, plus the controls."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    path = tmp_path / "toy.h5ad"
    _toy().write_h5ad(path)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import anndata as ad\nfrom spared_lib import widgets\n"
        f"widgets.explore_expression(ad.read_h5ad({str(path)!r}))")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    outputs = nb.cells[0].outputs
    kinds = [sorted(o.get("data", {})) for o in outputs]
    assert any("application/vnd.jupyter.widget-view+json" in k for k in kinds), kinds
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) == 1, kinds
    assert base64.b64decode(pngs[0]["data"]["image/png"]).startswith(PNG_MAGIC)
    # the figure's titles travel with it, so the check of the built book sees which data it shows
    assert pngs[0]["metadata"]["book_titles"][0].startswith("toy — A\n"), pngs[0]["metadata"]
    assert not [o for o in outputs if o.output_type == "error"]


def test_explorers_on_a_real_visium_slide(fixtures):
    """The real CytAssist mouse slide (2,898 spots, a 600-px low-res image) through both explorers."""
    from spared_lib.data.readers import read_visium

    adata = read_visium(fixtures / "visium_mouse_cytassist", library_id="cytassist")
    adata.obs["slide_id"] = pd.Categorical(["cytassist"] * adata.n_obs)
    top = np.argsort(-np.asarray(adata.X.sum(axis=0)).ravel())[:8]
    adata = adata[:, top].copy()
    counts = adata.X.toarray()
    adata.layers["log1p"] = np.log2(counts / counts.sum(1, keepdims=True).clip(1) * 1e6 + 1)
    adata.layers["mask"] = counts > 0
    symbol = str(adata.var["gene_symbol"].iloc[0])
    fig = widgets.expression_map(adata, symbol, "raw (log1p)")
    np.testing.assert_allclose(fig.axes[0].collections[0].get_array(), adata.layers["log1p"][:, 0], rtol=1e-6)
    assert fig.axes[0].images, "the H&E image is drawn under the spots"
    explorer = widgets.explore_spot(adata, spot=100)
    assert explorer.png().startswith(PNG_MAGIC)
