"""Tests of spared_lib.preprocessing: each step against hand computations, plain loops written
from SPEC §2, reference libraries (squidpy, scanpy, pyComBat) and invariants."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import anndata as ad

from spared_lib import preprocessing as pp
from spared_lib.data import gene_table, visium_array

warnings.filterwarnings("ignore", category=FutureWarning)


# --------------------------------------------------------------------------- small data
def hex_slides(n_slides=2, radius=6.5, n_genes=60, seed=0, organism="human", zero_frac=0.5):
    """Slides cut from the Visium array as irregular discs, log-normal values with many zeros."""
    rng = np.random.default_rng(seed)
    rc, xy = visium_array()
    obs, coords, blocks = [], [], []
    for s in range(n_slides):
        centre = np.array([40.0 + 10 * s, 30.0 + 7 * s])
        d = np.hypot((rc[:, 1] - centre[0]) / 2, rc[:, 0] - centre[1])
        keep = d < radius + rng.uniform(-1, 1, len(d))
        n = int(keep.sum())
        jitter = rng.normal(0, 0.8, (n, 2))  # real pixel coordinates are not a perfect lattice
        coords.append(xy[keep] * 0.5 + jitter + 1000 * s)  # slides overlap after the shift? no: 1000 px apart
        obs.append(pd.DataFrame({"slide_id": f"S{s}", "array_row": rc[keep, 0], "array_col": rc[keep, 1],
                                 "split": ["train", "val", "test"][s % 3], "patient": "P"}))
        blocks.append(n)
    obs = pd.concat(obs, ignore_index=True)
    obs.index = [f"spot{i}" for i in range(len(obs))]
    obs["slide_id"] = obs["slide_id"].astype("category")
    n = len(obs)
    # gene-wise dropout rates around zero_frac, so the expression-fraction filter has work to do
    vals = rng.lognormal(1, 0.7, (n, n_genes)) * (rng.random((n, n_genes)) > zero_frac * rng.uniform(0.2, 1.8, n_genes))
    genes = gene_table(organism)
    genes = genes[genes["biotype"] == "protein_coding"].index[:n_genes]
    a = ad.AnnData(X=sp.csr_matrix(np.round(vals * 3).astype(np.float32)), obs=obs,
                   var=pd.DataFrame(index=genes), obsm={"spatial": np.vstack(coords)})
    a.uns["dataset"] = dict(organism=organism, n_genes=8, combat_key="slide_id", cell_min_counts=1, grid="hex")
    return a


# --------------------------------------------------------------------------- references from the spec
def knn_lists(coords, k):
    """Directed k-NN lists (sklearn, like squidpy's generic graph)."""
    from sklearn.neighbors import NearestNeighbors

    _, ind = NearestNeighbors(n_neighbors=k).fit(coords).kneighbors()
    return [list(r) for r in ind]


def khop_sets(nbrs, n_hops):
    """Breadth-first k-hop sets: the spot plus all spots within 1..k edges."""
    out = []
    for i in range(len(nbrs)):
        seen, frontier, per_k = {i}, {i}, []
        for _ in range(n_hops):
            frontier = {j for f in frontier for j in nbrs[f]} - seen
            seen |= frontier
            per_k.append(sorted(seen))
        out.append(per_k)
    return out


def adaptive_median_loop(X, slides, coords, n_hops=4, k=6, nbr_lists=None):
    """SPEC §2 step 6 as a plain loop over slides, spots and genes."""
    out = X.copy()
    for s in np.unique(slides):
        rows = np.flatnonzero(slides == s)
        nbrs = knn_lists(coords[rows], k) if nbr_lists is None else nbr_lists[s]
        hoods = khop_sets(nbrs, n_hops)
        for g in range(X.shape[1]):
            col = X[rows, g]
            nz = col[col != 0]
            fallback = np.median(nz) if nz.size else 0.0
            for i in range(len(rows)):
                if col[i] != 0:
                    continue
                value = fallback
                for hood in hoods[i]:
                    m = np.median(col[hood])
                    if m != 0:
                        value = m
                        break
                out[rows[i], g] = value
    return out


# --------------------------------------------------------------------------- config
def test_resolve_config_sources():
    from spared_lib.data import fixture_dataset

    a = hex_slides(n_genes=10)
    cfg = pp.resolve_config(None, a)
    assert (cfg.organism, cfg.n_genes, cfg.cell_min_counts, cfg.grid) == ("human", 8, 1, "hex")
    assert pp.resolve_config({"organism": "mouse", "n_genes": 32, "combat_key": "None"}).combat_key is None
    try:
        info = fixture_dataset("her2st")
    except FileNotFoundError:
        pytest.skip("real fixtures absent")
    cfg = pp.resolve_config(info, n_genes=16)
    assert (cfg.grid, cfg.n_genes, cfg.real_data_percentage) == ("square", 16, 0.7)
    with pytest.raises(ValueError, match="organism"):
        pp.resolve_config({"organism": "fly", "n_genes": 32})
    with pytest.raises(ValueError, match="no dataset description"):
        pp.resolve_config(None, ad.AnnData(np.zeros((2, 2))))


# --------------------------------------------------------------------------- filter
def test_filter_matches_hand_computation():
    # 2 slides x 3 spots, 4 genes; spot totals 0 / 5 / 12 with cell_min_counts=4.
    X = np.array([
        [0, 0, 0, 0],      # total 0: dropped by the spot filter
        [1, 2, 2, 0],      # slide A
        [4, 0, 3, 5],      # slide A
        [3, 3, 0, 0],      # slide B
        [2, 0, 0, 9],      # slide B
        [5, 1, 1, 0],      # slide B
    ], dtype=np.float32)
    obs = pd.DataFrame({"slide_id": pd.Categorical(list("AAABBB"))}, index=[f"s{i}" for i in range(6)])
    a = ad.AnnData(sp.csr_matrix(X), obs=obs, var=pd.DataFrame(index=list("wxyz")))
    f = pp.filter_spots_and_genes(a, cell_min_counts=4, gene_min_counts=5, real_data_percentage=0.6)
    # spots 1..5 pass; gene totals 15, 6, 6, 14 > 5: all pass the count filter
    # exp_frac: w min(2/2, 3/3)=1; x min(1/2, 2/3)=.5; y min(2/2, 1/3)=1/3; z min(1/2, 1/3)=1/3
    # glob: w 1, x .6, y .6, z .4; order w, x, y, z (stable ties) -> running mean 1, .8, .733, .65
    assert list(f.var_names) == list("wxyz")
    np.testing.assert_allclose(f.var["exp_frac"], [1, .5, 1 / 3, 1 / 3])
    np.testing.assert_allclose(f.var["glob_exp_frac"], [1, .6, .6, .4])
    assert f.n_obs == 5
    f = pp.filter_spots_and_genes(a, cell_min_counts=4, gene_min_counts=5, real_data_percentage=0.7)
    assert list(f.var_names) == list("wxy")  # 0.65 < 0.7 drops z
    f = pp.filter_spots_and_genes(a, cell_min_counts=4, gene_min_counts=6, real_data_percentage=0.7)
    assert list(f.var_names) == ["w", "z"]  # x and y have exactly 6 counts: the bound is strict
    with pytest.raises(ValueError, match="no spot"):
        pp.filter_spots_and_genes(a, cell_min_counts=100)


def test_real_data_prefix_is_longest_qualifying_prefix():
    rng = np.random.default_rng(1)
    e, g = rng.random(200), rng.random(200)
    kept = pp.real_data_prefix(e, g, 0.55)
    order = np.argsort(-e, kind="stable")
    best = max(n for n in range(1, 201) if g[order[:n]].mean() >= 0.55)
    assert list(kept) == list(order[:best])


# --------------------------------------------------------------------------- TPM / log
def test_tpm_and_log1p_formulas():
    a = hex_slides(n_genes=12)
    a.var_names = list(a.var_names[:-1]) + ["ENSG_NOT_A_GENE"]
    t = pp.tpm(a, organism="human")
    assert t.n_vars == 11 and "ENSG_NOT_A_GENE" not in t.var_names
    C = a[:, t.var_names].X.toarray().astype(np.float64)
    L = gene_table("human")["length"].reindex(t.var_names).to_numpy()
    expect = C / L
    expect = expect / expect.sum(1, keepdims=True) * 1e6
    np.testing.assert_allclose(t.layers["tpm"], np.nan_to_num(expect), rtol=1e-12)
    sums = t.layers["tpm"].sum(1)
    np.testing.assert_allclose(sums[C.sum(1) > 0], 1e6)
    pp.log1p(t)
    np.testing.assert_allclose(t.layers["log1p"], np.log2(1 + t.layers["tpm"]), rtol=1e-12)
    np.testing.assert_array_equal(t.layers["counts"], C)


# --------------------------------------------------------------------------- neighbours
def test_neighbors_hex_lattice_sizes_and_slides():
    rc, xy = visium_array()
    obs = pd.DataFrame({"array_row": rc[:, 0], "array_col": rc[:, 1],
                        "slide_id": pd.Categorical(np.where(rc[:, 1] < 64, "L", "R"))})
    obs.index = obs.index.astype(str)
    a = ad.AnnData(obs=obs, obsm={"spatial": xy})
    for method in ("original", "lattice"):
        adj = pp.spatial_neighbors(a, grid="hex", method=method)
        r, c = adj.nonzero()
        assert (obs["slide_id"].to_numpy()[r] == obs["slide_id"].to_numpy()[c]).all()  # never across slides
        hoods = pp.khop_adjacencies(adj, 4)
        interior = (rc[:, 0] > 8) & (rc[:, 0] < 70) & (np.abs(rc[:, 1] - 32) < 16)
        for k, N in enumerate(hoods):
            sizes = np.asarray(N.sum(1)).ravel()
            assert set(sizes[interior]) == {[7, 19, 37, 61][k]}
    adj = pp.spatial_neighbors(a, grid="hex")
    assert set(np.diff(adj.indptr)) == {6}  # 6-NN: every spot, border included, has 6 out-edges
    idx = pp.khop_index(a, 2)
    assert idx.shape[1] >= 19 and (idx[:, 0] == np.arange(a.n_obs)).all()
    sizes = np.asarray(pp.khop_adjacencies(adj, 2)[-1].sum(1)).ravel()
    np.testing.assert_array_equal((idx >= 0).sum(1), sizes)


def test_neighbors_square_grid_has_8():
    r, c = np.meshgrid(np.arange(10), np.arange(12), indexing="ij")
    obs = pd.DataFrame({"array_row": r.ravel(), "array_col": c.ravel(), "slide_id": "a"})
    obs.index = obs.index.astype(str)
    a = ad.AnnData(obs=obs, obsm={"spatial": np.c_[c.ravel(), r.ravel()] * 300.0})
    inner = (r.ravel() > 0) & (r.ravel() < 9) & (c.ravel() > 0) & (c.ravel() < 11)
    for method in ("original", "lattice"):
        deg = np.diff(pp.spatial_neighbors(a, grid="square", method=method).indptr)
        assert set(deg[inner]) == {8}
    lat = pp.spatial_neighbors(a, grid="square", method="lattice")
    assert set(np.diff(lat.indptr)[~inner]) <= {3, 5}


# --------------------------------------------------------------------------- adaptive median
def test_adaptive_median_matches_spec_loop_synthetic():
    a = hex_slides(n_slides=2, n_genes=12, zero_frac=0.6)
    X = np.log2(1 + a.X.toarray().astype(np.float64))
    X[:, 3] = 0.0  # an all-zero gene: stays 0
    X[a.obs["slide_id"].to_numpy() == "S1", 5] = 0.0  # zero in one slide only
    a.layers["log1p"] = X
    pp.adaptive_median(a, from_layer="log1p", to_layer="d_log1p", n_hops=4)
    ref = adaptive_median_loop(X, a.obs["slide_id"].to_numpy(), a.obsm["spatial"])
    np.testing.assert_array_equal(a.layers["d_log1p"], ref)
    nz = X != 0
    np.testing.assert_array_equal(a.layers["d_log1p"][nz], X[nz])
    assert (a.layers["d_log1p"][:, 3] == 0).all()
    assert (a.layers["d_log1p"][:, 5][a.obs["slide_id"].to_numpy() == "S0"] > 0).all()


def test_adaptive_median_general_path_with_negative_values():
    a = hex_slides(n_slides=1, n_genes=6, zero_frac=0.5, seed=3)
    rng = np.random.default_rng(3)
    X = a.X.toarray().astype(np.float64) * rng.choice([-1.0, 1.0], a.shape)
    a.layers["v"] = X
    pp.adaptive_median(a, from_layer="v", to_layer="d", n_hops=3)
    ref = adaptive_median_loop(X, a.obs["slide_id"].to_numpy(), a.obsm["spatial"], n_hops=3)
    np.testing.assert_array_equal(a.layers["d"], ref)


def test_adaptive_median_matches_spec_loop_on_real_visium(fixtures):
    from spared_lib.data import fixture_dataset, load_dataset

    a = load_dataset(fixture_dataset("visium_mouse_cytassist"))
    rows = a.obs["array_row"].to_numpy()
    a = a[(rows >= 20) & (rows < 34)].copy()  # a band of the real slide, with its real borders
    frac = np.asarray((a.X > 0).mean(0)).ravel()
    genes = np.flatnonzero((frac > 0.2) & (frac < 0.8))[:15]  # partly observed genes: many fills
    X = np.log2(1 + a.X[:, genes].toarray().astype(np.float64))
    a = a[:, genes].copy()
    a.layers["log1p"] = X
    pp.adaptive_median(a)
    ref = adaptive_median_loop(X, a.obs["slide_id"].to_numpy(), a.obsm["spatial"])
    np.testing.assert_array_equal(a.layers["d_log1p"], ref)
    assert (X == 0).mean() > 0.2  # the comparison exercised many fills


def test_adaptive_median_lattice_option_on_square_grid():
    r, c = np.meshgrid(np.arange(7), np.arange(8), indexing="ij")
    obs = pd.DataFrame({"array_row": r.ravel(), "array_col": c.ravel(), "slide_id": "a"})
    obs.index = obs.index.astype(str)
    rng = np.random.default_rng(5)
    X = rng.random((56, 5)) * (rng.random((56, 5)) > 0.55)
    a = ad.AnnData(obs=obs, obsm={"spatial": np.c_[c.ravel(), r.ravel()] * 300.0}, layers={"x": X})
    pp.adaptive_median(a, from_layer="x", to_layer="d", grid="square", method="lattice", n_hops=2)
    pos = {(int(i), int(j)): k for k, (i, j) in enumerate(zip(r.ravel(), c.ravel()))}
    nbrs = [[pos[(i + di, j + dj)] for di in (-1, 0, 1) for dj in (-1, 0, 1)
             if (di or dj) and (i + di, j + dj) in pos] for i, j in zip(r.ravel(), c.ravel())]
    ref = adaptive_median_loop(X, np.array(["a"] * 56), None, n_hops=2, nbr_lists={"a": nbrs})
    np.testing.assert_array_equal(a.layers["d"], ref)


# --------------------------------------------------------------------------- Moran
def test_moran_matches_closed_form_and_ranks():
    a = hex_slides(n_slides=2, n_genes=10, zero_frac=0.2)
    X = np.log2(1 + a.X.toarray().astype(np.float64))
    # make gene 0 strongly spatial in both slides
    X[:, 0] = a.obsm["spatial"][:, 0] % 1000 / 50
    a.layers["d_log1p"] = X
    out = pp.moran_genes(a, n_genes=4)
    adj = pp.spatial_neighbors(a)
    per = []
    for s in ("S0", "S1"):
        idx = np.flatnonzero(a.obs["slide_id"].to_numpy() == s)
        W = adj[idx][:, idx].toarray()
        W = W / W.sum(1, keepdims=True)
        z = X[idx] - X[idx].mean(0)
        per.append(len(idx) / W.sum() * (z * (W @ z)).sum(0) / (z * z).sum(0))
    expect = np.mean(per, axis=0)
    np.testing.assert_allclose(a.var["d_log1p_moran"], expect, rtol=1e-6, atol=1e-9)
    assert list(out.var_names) == list(a.var_names[np.argsort(-expect)[:4]])
    assert out.var_names[0] == a.var_names[0]


def test_moran_equals_squidpy_on_a_real_slide(fixtures):
    """Our closed form against squidpy's ``spatial_autocorr`` (the original's call) on real data."""
    import squidpy as sq

    from spared_lib.data import fixture_dataset, load_dataset

    a = load_dataset(fixture_dataset("visium_mouse_cytassist"))
    seen = np.asarray((a.X > 0).mean(0)).ravel()
    a = a[:, np.flatnonzero(seen > 0.3)[:200]].copy()
    X = np.log2(1 + a.X.toarray().astype(np.float64))
    X[:, 0] = 1.0  # a constant gene: NaN on both sides
    adj = pp.spatial_neighbors(a)
    ours = pp.morans_i(X, adj)
    names = [f"g{i}" for i in range(X.shape[1])]
    tmp = ad.AnnData(X=X, var=pd.DataFrame(index=names))
    tmp.obsp["w"] = sp.csr_matrix(adj, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = sq.gr.spatial_autocorr(tmp, connectivity_key="w", genes=names, mode="moran", n_perms=None,
                                     copy=True, show_progress_bar=False)["I"].reindex(names).to_numpy()
    assert np.isnan(ours[0]) and np.isnan(ref[0])
    np.testing.assert_allclose(ours[1:], ref[1:], rtol=0, atol=1e-12)
    assert ref[1:].std() > 0.05  # real spatial structure: the values differ between genes


def test_csr_blocks_and_dense_counts():
    rng = np.random.default_rng(4)
    X = sp.random(300, 40, density=0.2, format="csr", random_state=5, dtype=np.float32)
    X.data = np.round(X.data * 10)
    X.data[X.indptr[7]:X.indptr[8]] = 0  # an empty row (set in place: no change of structure)
    X.eliminate_zeros()
    assert X[7].nnz == 0
    blocks = list(pp.filters.csr_blocks(X, step=50))
    assert len(blocks) > 5 and blocks[0][0] == 0
    np.testing.assert_array_equal(sp.vstack([b for _, b in blocks]).toarray(), X.toarray())
    spots = np.sort(rng.choice(300, 250, replace=False))
    genes = rng.permutation(40)[:17]
    np.testing.assert_array_equal(pp.dense_counts(X, spots, genes), X.toarray()[spots][:, genes])
    with pytest.raises(ValueError, match="increasing"):
        pp.dense_counts(X, spots[::-1], genes)


def test_adaptive_median_large_neighbourhoods_use_wide_counts():
    """8 hops on a square grid reach 289 spots: more than a uint8 zero count can hold."""
    r, c = np.meshgrid(np.arange(19), np.arange(19), indexing="ij")
    obs = pd.DataFrame({"array_row": r.ravel(), "array_col": c.ravel(), "slide_id": "a"})
    obs.index = obs.index.astype(str)
    rng = np.random.default_rng(6)
    X = rng.random((361, 3)) * (rng.random((361, 3)) > 0.7)  # mostly zeros: far hops are reached
    a = ad.AnnData(obs=obs, obsm={"spatial": np.c_[c.ravel(), r.ravel()] * 300.0}, layers={"x": X})
    pp.adaptive_median(a, from_layer="x", to_layer="d", grid="square", method="lattice", n_hops=8)
    pos = {(int(i), int(j)): k for k, (i, j) in enumerate(zip(r.ravel(), c.ravel()))}
    nbrs = [[pos[(i + di, j + dj)] for di in (-1, 0, 1) for dj in (-1, 0, 1)
             if (di or dj) and (i + di, j + dj) in pos] for i, j in zip(r.ravel(), c.ravel())]
    ref = adaptive_median_loop(X, np.array(["a"] * 361), None, n_hops=8, nbr_lists={"a": nbrs})
    np.testing.assert_array_equal(a.layers["d"], ref)


# --------------------------------------------------------------------------- ComBat, Δ, mask
def batch_data(seed=0):
    """Three batches with different shifts and scales of the same 30 genes."""
    rng = np.random.default_rng(seed)
    b = np.repeat(["a", "b", "c"], 200)
    shift = np.select([b == "a", b == "b"], [0.0, 1.5], -1.0)
    scale = np.select([b == "a", b == "b"], [1.0, 1.3], 0.8)
    X = 5 + rng.uniform(0.5, 2, 30) * (rng.normal(size=(600, 30)) * scale[:, None] + shift[:, None])
    return X, b


def scanpy_combat(X, b):
    import scanpy as sc

    tmp = ad.AnnData(X=X.copy(), obs=pd.DataFrame({"batch": pd.Categorical(b)}, index=np.arange(len(X)).astype(str)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(sc.pp.combat(tmp, key="batch", inplace=False))


def test_combat_equals_scanpy_removes_batch_means_and_ignores_gene_order():
    X, b = batch_data()
    a = ad.AnnData(obs=pd.DataFrame({"batch": b}, index=np.arange(600).astype(str)), layers={"log1p": X})
    pp.combat(a, batch_key="batch")
    ours = a.layers["c_log1p"]
    np.testing.assert_allclose(ours, scanpy_combat(X, b), rtol=0, atol=1e-10)
    batch_means = pd.DataFrame(ours).groupby(b).mean()
    assert batch_means.std().max() < 0.2 < pd.DataFrame(X).groupby(b).mean().std().max()
    # each gene's correction must not depend on the other genes' order (pyComBat's does)
    rev = pp.combat_array(X[:, ::-1], b)[:, ::-1]
    np.testing.assert_allclose(rev, ours, atol=1e-10)
    one = ad.AnnData(obs=pd.DataFrame({"batch": ["a"] * 5}, index=list("abcde")), layers={"log1p": X[:5]})
    np.testing.assert_array_equal(pp.combat(one, batch_key="batch").layers["c_log1p"], X[:5])
    with pytest.raises(ValueError, match="single spot"):
        pp.combat_array(X[:201], b[:201])


def test_combat_equals_scanpy_on_real_slides(fixtures):
    """Every ComBat the pipeline runs on the real her2st sections (log1p and d_log1p, 28 slides,
    batches = patients) equals scanpy's to 1e-10."""
    from spared_lib.data import fixture_dataset, load_dataset

    out = pp.preprocess(load_dataset(fixture_dataset("her2st"), load_images=False), dtype=np.float64, n_genes=32)
    batches = out.obs[out.uns["preprocessing"]["config"]["combat_key"]].to_numpy()
    assert len(set(batches)) > 2
    for src in ("log1p", "d_log1p"):
        np.testing.assert_allclose(out.layers[f"c_{src}"], scanpy_combat(out.layers[src], batches), rtol=0, atol=1e-10)


def test_combat_close_to_pycombat():
    pycombat = pytest.importorskip("combat.pycombat", reason="pyComBat (dev extra 'combat') not installed").pycombat
    X, b = batch_data()
    ours = pp.combat_array(X, b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = pycombat(pd.DataFrame(X.T), list(b), par_prior=True).T.to_numpy()
    moved = np.abs(X - ref).max()
    # Same parametric model; pyComBat uses ddof=0 variances and, in its iterative solver, the
    # first gene's additive effect for every gene's variance update, so agreement is close, not exact.
    assert np.abs(ours - ref).max() < 0.02 * moved


def test_deltas_use_train_spots_only():
    rng = np.random.default_rng(2)
    X = rng.random((9, 3))
    obs = pd.DataFrame({"split": ["train"] * 4 + ["val"] * 3 + ["test"] * 2}, index=list("abcdefghi"))
    a = ad.AnnData(obs=obs, layers={"log1p": X.copy()})
    pp.deltas(a)
    np.testing.assert_allclose(a.var["log1p_avg_exp"], X[:4].mean(0))
    np.testing.assert_allclose(a.layers["deltas"], X - X[:4].mean(0))
    a.layers["log1p"][4:] += 100  # val/test values do not leak into the means
    pp.deltas(a)
    np.testing.assert_allclose(a.var["log1p_avg_exp"], X[:4].mean(0))
    a.obs["split"] = "val"
    with pytest.raises(ValueError, match="train"):
        pp.deltas(a)


# --------------------------------------------------------------------------- whole pipeline
def test_preprocess_equals_the_steps_chained():
    a = hex_slides(n_slides=3, n_genes=80, zero_frac=0.3, radius=7.5)
    out = pp.preprocess(a, dtype=np.float64)
    assert list(out.layers) == list(pp.LAYERS)
    assert out.n_vars == 8 and out.layers["mask"].dtype == bool
    # the same protocol step by step on AnnData
    f = pp.filter_spots_and_genes(a, cell_min_counts=1)
    t = pp.log1p(pp.tpm(f, organism="human"))
    pp.adaptive_median(t)
    top = pp.moran_genes(t, n_genes=8)
    assert list(top.var_names) == list(out.var_names)
    for layer in ("counts", "tpm", "log1p", "d_log1p"):
        np.testing.assert_allclose(out.layers[layer], top.layers[layer], rtol=1e-12, atol=1e-12)
    pp.combat(top, from_layer="d_log1p", to_layer="c_d_log1p")
    np.testing.assert_allclose(out.layers["c_d_log1p"], top.layers["c_d_log1p"], rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(out.layers["mask"], out.layers["tpm"] != 0)
    m = out.layers["mask"]
    np.testing.assert_array_equal(out.layers["d_log1p"][m], out.layers["log1p"][m])
    train = out.obs["split"].to_numpy() == "train"
    np.testing.assert_allclose(out.layers["c_d_deltas"][train].mean(0), 0, atol=1e-10)
    np.testing.assert_allclose(out.layers["c_d_deltas"] + out.var["c_d_log1p_avg_exp"].to_numpy(),
                               out.layers["c_d_log1p"], atol=1e-10)
    assert (np.diff(out.var["d_log1p_moran"].to_numpy()) <= 0).all()
    p = out.uns["preprocessing"]
    assert p["config"]["real_data_percentage"] == 0.7 and p["config"]["n_hops"] == 4
    assert set(p["timings_s"]) >= {"filter", "tpm", "adaptive_median", "moran", "combat"}
    out32 = pp.preprocess(a)
    assert out32.layers["c_d_log1p"].dtype == np.float32
    np.testing.assert_allclose(out32.layers["d_log1p"], out.layers["d_log1p"], rtol=1e-6)


def test_preprocess_errors_are_clear():
    a = hex_slides(n_genes=20)
    with pytest.raises(ValueError, match="fewer than n_genes"):
        pp.preprocess(a, n_genes=1000)
    with pytest.raises(KeyError, match="layer 'nope'"):
        pp.adaptive_median(a, from_layer="nope")
    del a.obs["split"]
    with pytest.raises(KeyError, match="split"):
        pp.preprocess(a)


def test_comparison_tables_of_the_committed_benchmark():
    """The chapter's tables come from the committed results file of the benchmark script."""
    from spared_lib.resources import load_result

    bench = load_result("preprocess_vs_spared")
    assert {"commit", "command", "machine", "date", "load_average_1_5_15_min"} <= set(bench["provenance"])
    assert "preprocess_vs_spared.py" in bench["provenance"]["command"]
    tables = pp.comparison_tables(bench)
    summary, steps, scaling = tables["summary"], tables["steps"], tables["scaling"]
    assert list(summary.index) == ["real CytAssist slide", "synthetic, 5 slides"]
    r = bench["results"]["synthetic"]
    assert summary.loc["synthetic, 5 slides", "speed-up"] == pytest.approx(r["spared_s"] / r["ours_s"])
    assert summary.loc["synthetic, 5 slides", ["same filter", "same genes, same order"]].all()
    assert summary["same genes from the same filtered input"].all()
    assert set(steps.loc["synthetic, 5 slides"].index) >= {"filter", "adaptive_median", "moran", "combat"}
    assert set(scaling["implementation"]) == {"ours", "spared"}
    ours = scaling[scaling["implementation"] == "ours"]
    assert ours["spots"].max() >= 44_000 and (ours["time (s)"] > 0).all()


def test_adaptive_median_same_in_any_number_of_threads_and_blocks(monkeypatch):
    """Gene blocks run in worker threads; the result must not depend on how many or how big."""
    import spared_lib.preprocessing.median as median

    a = hex_slides(n_slides=3, n_genes=40, zero_frac=0.6, seed=7)
    X = np.log2(1 + a.X.toarray().astype(np.float64))
    hoods = pp.khop_adjacencies(pp.spatial_neighbors(a), 4)
    codes, names = pp.slide_codes(a)
    ref = adaptive_median_loop(X, a.obs["slide_id"].to_numpy(), a.obsm["spatial"])
    for workers, chunk in ((1, 1 << 24), (3, 1 << 24), (2, 7 * a.n_obs)):  # last: blocks of 7 genes
        monkeypatch.setattr(median, "_workers", lambda w=workers: w)
        monkeypatch.setattr(median, "_CHUNK_ELEMS", chunk)
        np.testing.assert_array_equal(pp.adaptive_median_array(X, hoods, codes, len(names)), ref)
