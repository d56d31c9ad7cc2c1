"""Bad input to ``spared_lib.preprocessing.preprocess`` (issue 15 §8): each case either raises a
clear error, before any work, that names the AnnData field and the problem, or gives the correct
result; and neither the fixture folder the data came from nor the input AnnData changes.

Input: the real CytAssist mouse slide, cut into two "slides" (upper and lower halves of the
array) so that the multi-slide steps (per-slide graph, Moran, ComBat) run, on 2,000 genes.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from badinput import ERROR, RESULT, case, raises_naming, unchanged

from spared_lib import preprocessing as pp
from spared_lib.data import fixture_dataset, load_dataset

FIXTURE = "visium_mouse_cytassist"


@pytest.fixture(scope="module")
def slide_dir(fixtures):
    return fixtures / FIXTURE


@pytest.fixture(scope="module")
def base(slide_dir):
    a = load_dataset(fixture_dataset(FIXTURE))
    # the 2,000 most often observed genes keep the cases fast; two halves of the slide = two slides
    seen = np.asarray((a.X > 0).sum(axis=0)).ravel()
    a = a[:, np.sort(np.argsort(-seen, kind="stable")[:2000])].copy()
    upper = a.obs["array_row"].to_numpy() < np.median(a.obs["array_row"])
    a.obs["slide_id"] = pd.Categorical(np.where(upper, "upper", "lower"))
    a.obs["split"] = np.where(upper, "train", "val")
    # a shallow slide: 0.3 instead of SpaRED's 0.7 keeps enough genes (chapter 2 explains the knob)
    a.uns["dataset"] = dict(a.uns["dataset"], n_genes=32, combat_key="slide_id", real_data_percentage=0.3)
    return a


@pytest.fixture(scope="module")
def reference(base):
    return pp.preprocess(base, dtype=np.float64)


def fingerprint(a) -> str:
    """sha256 of what preprocess must leave untouched: X, obs, var, obsm and the uns keys."""
    h = hashlib.sha256()
    X = a.X
    if sp.issparse(X):
        for arr in (X.data, X.indices, X.indptr):
            h.update(np.ascontiguousarray(arr).tobytes())
    elif X is not None:
        h.update(np.ascontiguousarray(X).tobytes())
    h.update(pd.util.hash_pandas_object(a.obs.astype(str), index=True).to_numpy().tobytes())
    h.update(pd.util.hash_pandas_object(a.var.astype(str), index=True).to_numpy().tobytes())
    for k in sorted(a.obsm):
        h.update(np.ascontiguousarray(a.obsm[k]).tobytes())
    h.update(repr(sorted(a.uns)).encode())
    return h.hexdigest()


def first_stored(a) -> tuple[int, int]:
    X = a.X.tocsr()
    return int(np.searchsorted(X.indptr, 0, side="right") - 1), int(X.indices[0])


# --------------------------------------------------------------------------- edits of the input
def normalised(a):
    X = a.X.toarray()
    a.X = sp.csr_matrix(np.log1p(X / X.sum(1, keepdims=True) * 1e4).astype(np.float32))


def log_counts(a):
    a.X = a.X.log1p()


def scaled(a):
    a.X = a.X * 0.5


def set_first(value):
    def edit(a):
        X = a.X.tocsr().astype(np.float32)
        X.data[0] = value
        a.X = X
    return edit


def drop_obs(column):
    def edit(a):
        del a.obs[column]
    return edit


def no_train(a):
    a.obs["split"] = "val"


def combat_key(name):
    def edit(a):
        a.uns["dataset"] = dict(a.uns["dataset"], combat_key=name)
    return edit


def tiny_slide(n_spots, grid="hex"):
    """The first n_spots of the upper half become a slide of their own."""
    def edit(a):
        ids = a.obs["slide_id"].astype(str).to_numpy().copy()
        ids[np.flatnonzero(ids == "upper")[:n_spots]] = "tiny"
        a.obs["slide_id"] = pd.Categorical(ids)
        a.uns["dataset"] = dict(a.uns["dataset"], grid=grid)
    return edit


def slide_emptied_by_filter(a):
    """Every spot but 3 of a new slide gets too few counts: the filter leaves a 3-spot slide."""
    ids = a.obs["slide_id"].astype(str).to_numpy().copy()
    rows = np.flatnonzero(ids == "upper")[:40]
    ids[rows] = "thin"
    a.obs["slide_id"] = pd.Categorical(ids)
    X = a.X.tolil()
    for r in rows[3:]:
        X.rows[r], X.data[r] = [], []
    a.X = X.tocsr()


def no_coordinates(a):
    del a.obsm["spatial"]


def empty(a):
    return a[:0].copy()


def single_spot_batch(a):
    a.obs["batch"] = np.where(np.arange(a.n_obs) == 5, "alone", "rest")
    a.uns["dataset"] = dict(a.uns["dataset"], combat_key="batch")


ERRORS = [
    case(ERROR, "normalised (log1p of CP10k)", normalised, ValueError, "adata.X", "non-integer", "normalised"),
    case(ERROR, "log-transformed counts", log_counts, ValueError, "adata.X", "non-integer"),
    case(ERROR, "halved counts", scaled, ValueError, "adata.X", "non-integer"),
    case(ERROR, "a NaN count", set_first(np.nan), ValueError, "adata.X", "NaN"),
    case(ERROR, "an infinite count", set_first(np.inf), ValueError, "adata.X", "infinite"),
    case(ERROR, "a negative count", set_first(-3.0), ValueError, "adata.X", "negative"),
    case(ERROR, "combat_key names no column", combat_key("batch_id"), KeyError, "batch_id", "not a column"),
    case(ERROR, "combat_key with a single-spot batch", single_spot_batch, ValueError, "alone", "single spot"),
    case(ERROR, "no split column", drop_obs("split"), KeyError, "split"),
    case(ERROR, "no train spot", no_train, ValueError, "split", "train"),
    case(ERROR, "a one-spot slide", tiny_slide(1), ValueError, "'tiny'", "1 spot", "at least 7"),
    case(ERROR, "a three-spot slide", tiny_slide(3), ValueError, "'tiny'", "3 spot", "at least 7"),
    case(ERROR, "a six-spot hex slide", tiny_slide(6), ValueError, "'tiny'", "6 spot", "at least 7"),
    case(ERROR, "an eight-spot square slide", tiny_slide(8, "square"), ValueError, "'tiny'", "at least 9"),
    case(ERROR, "a slide left with 3 spots by the filter", slide_emptied_by_filter, ValueError, "'thin'", "3 spot"),
    case(ERROR, "no pixel coordinates", no_coordinates, KeyError, "obsm", "spatial"),
    case(ERROR, "no spots", empty, ValueError, "empty"),
]


@pytest.mark.parametrize("edit, exc, name, fragments", [
    pytest.param(p.values[0], p.values[1], p.values[2], p.values[3:], id=p.id) for p in ERRORS])
def test_bad_input_is_reported_before_any_work(edit, exc, name, fragments, base, slide_dir, monkeypatch):
    a = base.copy()
    new = edit(a)  # an edit changes ``a`` in place or returns a new AnnData
    a = a if new is None else new
    before = fingerprint(a)
    # "before any work": every error above must come before the filter, except the slide that
    # only the filter makes too small (it is found when the graph is built, still naming the slide)
    if edit is not slide_emptied_by_filter:
        def no_work(*args, **kw):
            raise AssertionError("preprocess started filtering before reporting the bad input")
        monkeypatch.setattr("spared_lib.preprocessing.pipeline.select_spots_and_genes", no_work)
    with unchanged(slide_dir):
        with raises_naming(exc, name, *fragments):
            pp.preprocess(a)
    assert fingerprint(a) == before  # the input AnnData is untouched


@pytest.mark.parametrize("edit, message", [
    case(ERROR, "n_genes above the genes left", {"n_genes": 10_000}, "fewer than n_genes"),
    case(ERROR, "an unknown organism", {"organism": "fly"}, "organism"),
    case(ERROR, "an unknown grid", {"grid": "honeycomb"}, "grid"),
    case(ERROR, "a cell_min_counts no spot passes", {"cell_min_counts": 10**9}, "no spot"),
    case(ERROR, "an unknown method", {"method": "knn"}, "method must be 'original' or 'lattice'"),
])
def test_bad_parameters_are_named(edit, message, base, slide_dir):
    a = base.copy()
    before = fingerprint(a)
    with unchanged(slide_dir):
        with pytest.raises(ValueError, match=message):
            pp.preprocess(a, **edit)
    assert fingerprint(a) == before


# --------------------------------------------------------------------------- inputs that must work
def as_dense(a):
    a.X = a.X.toarray()


def as_float64(a):
    a.X = a.X.astype(np.float64)


def as_int(a):
    a.X = a.X.astype(np.int32)


def explicit_zeros(a):
    """Every entry of the first 200 spots stored, zeros included (a dense-to-sparse conversion
    that kept them)."""
    X = a.X.tocsr()
    head = X[:200].toarray()
    r, c = np.nonzero(np.ones_like(head, dtype=bool))
    stored = sp.csr_matrix((head[r, c], (r, c)), shape=head.shape)  # keeps the zeros it is given
    assert stored.nnz == head.size
    a.X = sp.vstack([stored, X[200:]], format="csr")
    assert (a.X.data == 0).sum() > 0


def unsorted_indices(a):
    X = a.X.tocsr().copy()
    for r in range(0, X.shape[0], 7):
        lo, hi = X.indptr[r], X.indptr[r + 1]
        X.indices[lo:hi] = X.indices[lo:hi][::-1]
        X.data[lo:hi] = X.data[lo:hi][::-1]
    X.has_sorted_indices = False
    a.X = X


def slide_ids_as_strings(a):
    a.obs["slide_id"] = a.obs["slide_id"].astype(str)


def unused_slide_category(a):
    a.obs["slide_id"] = a.obs["slide_id"].cat.add_categories(["never_used"])


RESULTS = [
    case(RESULT, "dense counts", as_dense),
    case(RESULT, "float64 counts", as_float64),
    case(RESULT, "integer dtype counts", as_int),
    case(RESULT, "explicitly stored zeros", explicit_zeros),
    case(RESULT, "unsorted CSR indices", unsorted_indices),
    case(RESULT, "slide ids as plain strings", slide_ids_as_strings),
    case(RESULT, "an unused slide category", unused_slide_category),
]


@pytest.mark.parametrize("edit", RESULTS)
def test_equivalent_input_gives_the_same_result(edit, base, reference, slide_dir):
    a = base.copy()
    edit(a)
    before = fingerprint(a)
    with unchanged(slide_dir):
        out = pp.preprocess(a, dtype=np.float64)
    assert fingerprint(a) == before
    assert list(out.var_names) == list(reference.var_names)
    assert list(out.obs_names) == list(reference.obs_names)
    for layer in pp.LAYERS:
        np.testing.assert_allclose(out.layers[layer], reference.layers[layer], rtol=1e-12, atol=1e-12,
                                   err_msg=layer)


@pytest.mark.parametrize("key", [case(RESULT, "combat_key None", None)])
def test_no_combat_key_copies_the_layers(key, base, reference, slide_dir):
    a = base.copy()
    with unchanged(slide_dir):
        out = pp.preprocess(a, dtype=np.float64, combat_key=key)
    assert list(out.var_names) == list(reference.var_names)
    np.testing.assert_array_equal(out.layers["c_log1p"], out.layers["log1p"])
    np.testing.assert_array_equal(out.layers["c_d_log1p"], out.layers["d_log1p"])
    np.testing.assert_allclose(out.layers["d_log1p"], reference.layers["d_log1p"], rtol=0, atol=0)


@pytest.mark.parametrize("n_spots", [case(RESULT, "a one-spot slide on the lattice", 1)])
def test_small_slides_work_on_the_lattice(n_spots, base, slide_dir):
    """The one-spot slide that the original graph rejects is fine with method='lattice'."""
    a = base.copy()
    tiny_slide(n_spots)(a)
    a.uns["dataset"] = dict(a.uns["dataset"], combat_key=None)
    with unchanged(slide_dir):
        out = pp.preprocess(a, method="lattice")
    assert "tiny" in set(out.obs["slide_id"])
    tiny = (out.obs["slide_id"] == "tiny").to_numpy()
    # alone on its slide, a spot's zeros fall back to its slide's non-zero median of the gene: itself
    assert np.isfinite(out.layers["d_log1p"][tiny]).all()
