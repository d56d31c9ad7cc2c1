"""spared_lib.metrics against scipy / scikit-learn on hand-made cases."""
import warnings

import numpy as np
import pytest
from scipy.stats import pearsonr
from sklearn.metrics import r2_score

from spared_lib.metrics import METRIC_KEYS, compute_metrics, per_gene_metrics


def _reference(t, p, m):
    """Loop-based reference: scipy/sklearn on the observed entries of each gene / spot."""
    def per(axis):
        pccs, r2s = [], []
        for i in range(t.shape[1 - axis]):
            sel = m[:, i] if axis == 0 else m[i]
            tt = (t[:, i] if axis == 0 else t[i])[sel]
            pp = (p[:, i] if axis == 0 else p[i])[sel]
            if len(tt) < 2 or np.ptp(tt) == 0:
                continue
            pccs.append(0.0 if np.ptp(pp) == 0 else pearsonr(tt, pp).statistic)
            r2s.append(r2_score(tt, pp))
        return np.mean(pccs), np.mean(r2s)

    pg, rg = per(0)
    pp_, rp = per(1)
    mse = np.mean((t[m] - p[m]) ** 2)
    mae = np.mean(np.abs(t[m] - p[m]))
    return {"MSE": mse, "MAE": mae, "PCC-Gene": pg, "PCC-Patch": pp_, "R2-Gene": rg, "R2-Patch": rp,
            "Global": pg + pp_ + rg + rp - mse - mae}


def test_matches_scipy_sklearn_with_random_mask():
    rng = np.random.default_rng(0)
    t = rng.normal(size=(40, 7))
    p = t * 0.5 + rng.normal(size=t.shape)
    m = rng.random(t.shape) > 0.3
    got = compute_metrics(t, p, m)
    ref = _reference(t, p, m)
    for k in METRIC_KEYS:
        assert got[k] == pytest.approx(ref[k], rel=1e-10, abs=1e-12), k
    assert got["n_genes_excluded"] == 0 and got["n_spots_excluded"] == 0


def test_unobserved_entries_are_ignored_even_if_nan():
    rng = np.random.default_rng(1)
    t = rng.normal(size=(20, 5))
    p = rng.normal(size=(20, 5))
    m = rng.random(t.shape) > 0.4
    few = int(((m.sum(axis=1)) < 2).sum())  # spots with fewer than two observed genes
    assert few > 0  # this mask has some: both calls must leave out the same spots, and say so
    with pytest.warns(RuntimeWarning, match=f"0 gene\\(s\\) and {few} spot"):
        a = compute_metrics(t, p, m)
    t2, p2 = t.copy(), p.copy()
    t2[~m] = np.nan
    p2[~m] = 1e6
    with pytest.warns(RuntimeWarning, match=f"0 gene\\(s\\) and {few} spot"):
        b = compute_metrics(t2, p2, m)
    for k in METRIC_KEYS:
        assert a[k] == pytest.approx(b[k]), k


def test_hand_computed_values():
    # 3 spots x 2 genes, all observed. gene0: t=(0,1,2) p=(0,1,2) -> r=1, R2=1;
    # gene1: t=(1,2,3) p=(3,2,1) -> r=-1, R2 = 1 - 8/2 = -3
    t = np.array([[0.0, 1.0], [1.0, 2.0], [2.0, 3.0]])
    p = np.array([[0.0, 3.0], [1.0, 2.0], [2.0, 1.0]])
    got = compute_metrics(t, p)
    assert got["MSE"] == pytest.approx(8 / 6)
    assert got["MAE"] == pytest.approx(4 / 6)
    assert got["PCC-Gene"] == pytest.approx(0.0)
    assert got["R2-Gene"] == pytest.approx(-1.0)
    # spot rows: (0,1)vs(0,3) r=1; (1,2)vs(1,2) r=1; (2,3)vs(2,1) r=-1
    assert got["PCC-Patch"] == pytest.approx(1 / 3)


def test_too_few_or_constant_entries_are_excluded_and_counted():
    rng = np.random.default_rng(2)
    t = rng.normal(size=(10, 4))
    p = rng.normal(size=(10, 4))
    m = np.ones_like(t, dtype=bool)
    m[1:, 0] = False          # gene 0: one observed entry
    t[:, 1] = 0.7             # gene 1: constant truth
    m[3, :] = False
    m[3, 2] = True            # spot 3: one observed entry
    with pytest.warns(RuntimeWarning, match="2 gene"):
        got = compute_metrics(t, p, m)
    ref = _reference(t, p, m)
    assert got["n_genes_excluded"] == 2
    assert got["n_spots_excluded"] == 1
    for k in METRIC_KEYS:
        assert np.isfinite(got[k])
        assert got[k] == pytest.approx(ref[k], rel=1e-10), k


def test_constant_prediction_has_zero_pcc_and_matches_r2():
    rng = np.random.default_rng(3)
    t = rng.normal(size=(15, 3))
    p = np.tile(t.mean(0), (15, 1))  # the training-mean baseline
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no exclusion warning: truth varies everywhere
        pg = per_gene_metrics(t, p)
        got = compute_metrics(t, p)
    assert got["PCC-Gene"] == 0.0
    assert got["R2-Gene"] == pytest.approx(0.0, abs=1e-12)  # predicting the exact mean
    np.testing.assert_allclose(pg["r2"], [r2_score(t[:, g], p[:, g]) for g in range(3)], atol=1e-12)


def test_all_excluded_gives_nan_with_warning():
    t = np.ones((4, 3))
    p = np.zeros((4, 3))
    with pytest.warns(RuntimeWarning) as caught:
        got = compute_metrics(t, p)
    said = [str(w.message) for w in caught]
    assert any("NaN" in m for m in said) and any("3 gene(s) and 4 spot(s)" in m for m in said), said
    assert np.isnan(got["PCC-Gene"]) and np.isnan(got["Global"])
    assert got["MSE"] == 1.0


def test_torch_inputs_and_bad_shapes():
    torch = pytest.importorskip("torch")
    t = torch.randn(6, 3)
    got = compute_metrics(t, t * 2, torch.ones(6, 3, dtype=torch.bool))
    assert got["PCC-Gene"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="y_pred has shape"):
        compute_metrics(np.zeros((3, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="no observed"):
        compute_metrics(np.zeros((3, 2)), np.zeros((3, 2)), np.zeros((3, 2), bool))
    with pytest.raises(ValueError, match="non-finite"):
        compute_metrics(np.array([[np.nan, 1.0]]), np.zeros((1, 2)))
