"""Tests of spared_lib.completion: neighbours, the SpaCKLE module, training, completion, baselines."""
from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from spared_lib import completion
from spared_lib.preprocessing import nearest_in_slide
from spared_lib.completion.baselines import sme_complete
from spared_lib.completion.evaluate import random_observed_mask


def hex_coords(n_rows, n_cols, spacing=100.0):
    r, c = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
    x = (c + 0.5 * (r % 2)) * spacing
    y = r * spacing * np.sqrt(3) / 2
    return np.c_[x.ravel(), y.ravel()]


def toy_adata(n_rows=10, n_cols=10, n_genes=12, seed=0, slides=("A", "B", "C")):
    """Hex-grid slides with smooth gene patterns, 30 % dropout and a median-like fill."""
    rng = np.random.default_rng(seed)
    xy = hex_coords(n_rows, n_cols)
    coords, truth, slide_ids = [], [], []
    # consecutive sections of one tissue: shared gene programmes, slide-specific noise
    phase = rng.uniform(0, 2 * np.pi, n_genes)
    freq = rng.uniform(1.0, 3.0, n_genes) / (n_cols * 100)
    for s in slides:
        base = 3 + 2 * np.sin(xy[:, :1] * freq + phase) * np.cos(xy[:, 1:] * freq)
        truth.append(base + 0.1 * rng.standard_normal(base.shape))
        coords.append(xy)  # identical coordinates in every slide: neighbours must not cross
        slide_ids += [s] * len(xy)
    truth = np.vstack(truth).astype(np.float32)
    mask = rng.random(truth.shape) > 0.3
    filled = np.where(mask, truth, np.median(truth, axis=0)).astype(np.float32)
    adata = ad.AnnData(np.zeros_like(truth))
    adata.obs_names = [f"s{i}" for i in range(adata.n_obs)]
    adata.var_names = [f"g{i}" for i in range(n_genes)]
    adata.obs["slide_id"] = pd.Categorical(slide_ids)
    split = dict(zip(slides, ("train", "val")))
    adata.obs["split"] = [split.get(s, "test") for s in slide_ids]
    adata.obsm["spatial"] = np.vstack(coords)
    adata.layers["c_d_log1p"] = filled
    adata.layers["mask"] = mask
    adata.uns["dataset"] = {"key": "toy", "grid": "hex"}
    return adata, truth


# --- neighbours -------------------------------------------------------------------------------

def test_neighbors_same_slide_self_first_and_two_rings():
    adata, _ = toy_adata()
    nbr = nearest_in_slide(adata)
    assert nbr.shape == (adata.n_obs, 19) and nbr.dtype == np.int64
    assert (nbr[:, 0] == np.arange(adata.n_obs)).all()
    slide = np.asarray(adata.obs["slide_id"].cat.codes)
    valid = nbr >= 0
    assert (slide[np.where(valid, nbr, 0)] == slide[:, None])[valid].all()
    # brute force on one slide: neighbours = spots within two hex rings (distance <= 2 spacings)
    xy = adata.obsm["spatial"][:100]
    d = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    expected = (d <= 200.0 + 1e-6).sum(axis=1) - 1
    assert ((nbr[:100, 1:] >= 0).sum(axis=1) == expected).all()
    assert expected.max() == 18 and expected.min() < 18  # interior full, border padded
    # padding only at the end, distances non-decreasing
    got = np.where(valid[:100], d[np.arange(100)[:, None], np.where(valid[:100], nbr[:100], 0)], 1e9)
    assert (np.diff(got, axis=1) >= -1e-9).all()


def test_neighbors_without_radius_is_plain_knn():
    adata, _ = toy_adata()
    nbr = nearest_in_slide(adata, n_neighbors=6, radius=None)
    assert (nbr >= 0).all()


# --- model ------------------------------------------------------------------------------------

def test_spot_completion_independent_of_other_batch_items():
    torch.manual_seed(0)
    model = completion.SpaCKLE(n_genes=8, d_model=16, dim_feedforward=32).eval()
    x = torch.randn(5, 19, 8)
    pad = torch.zeros(5, 19, dtype=torch.bool)
    pad[1, 15:] = True
    out = model(x, pad)
    x2 = x.clone()
    x2[1:] = torch.randn(4, 19, 8)  # change every other neighbourhood in the batch
    out2 = model(x2, pad)
    torch.testing.assert_close(out[0], out2[0], rtol=1e-5, atol=1e-6)
    single = model(x[:1], pad[:1])
    torch.testing.assert_close(out[0], single[0], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(out[1:], out2[1:])


def test_padded_tokens_do_not_influence_real_tokens():
    torch.manual_seed(1)
    model = completion.SpaCKLE(n_genes=8, d_model=16, dim_feedforward=32).eval()
    x = torch.randn(2, 19, 8)
    pad = torch.zeros(2, 19, dtype=torch.bool)
    pad[:, 10:] = True
    x2 = x.clone()
    x2[:, 10:] = 100 * torch.randn(2, 9, 8)
    torch.testing.assert_close(model(x, pad)[:, :10], model(x2, pad)[:, :10], rtol=1e-5, atol=1e-5)
    # and the centre's output does depend on its real neighbours
    x3 = x.clone()
    x3[:, 1:10] += 1.0
    assert not torch.allclose(model(x, pad)[:, 0], model(x3, pad)[:, 0])


def test_model_shape_checks_and_defaults():
    model = completion.SpaCKLE(n_genes=32)
    assert model.config == dict(n_genes=32, d_model=128, n_layers=2, n_heads=1, dim_feedforward=2048, dropout=0.1)
    assert model.encoder.layers[0].self_attn.batch_first
    with pytest.raises(ValueError, match="32"):
        model(torch.zeros(2, 19, 16))


# --- training ---------------------------------------------------------------------------------

def test_masking_probabilities_hand_computed():
    mask = np.zeros((10, 4), dtype=bool)
    mask[:, 0] = True        # glob_exp_frac 1.0 -> 0.3
    mask[:5, 1] = True       # 0.5 -> 0.6
    mask[:2, 2] = True       # 0.2 -> 1.5, capped at 1
    # gene 3 never observed -> 1
    np.testing.assert_allclose(completion.masking_probabilities(mask, 0.3), [0.3, 0.6, 1.0, 1.0], rtol=1e-6)


TINY = dict(d_model=32, dim_feedforward=64, batch_size=64, progress=False)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models train faster on one thread than on two shared, oversubscribed cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_train_is_deterministic_and_keeps_best_checkpoint(tmp_path):
    adata, _ = toy_adata()
    m1, h1 = completion.train_spackle(adata, steps=12, seed=3, val_every=3, out_dir=tmp_path, **TINY)
    m2, h2 = completion.train_spackle(adata, steps=12, seed=3, val_every=3, **TINY)
    pd.testing.assert_frame_equal(h1, h2)
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)
    assert list(h1.columns) == ["step", "train_loss", "val_mse"] and len(h1) == 12
    assert h1["val_mse"].notna().sum() == 4
    assert m1.meta["best_val_mse"] == pytest.approx(h1["val_mse"].min())
    assert m1.meta["best_step"] == int(h1.loc[h1["val_mse"].idxmin(), "step"])
    assert m1.meta["val_split"] == "val"
    loaded = completion.load_spackle(tmp_path / "spackle.pt")
    for a, b in zip(m1.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    _, h3 = completion.train_spackle(adata, steps=12, seed=4, val_every=3, **TINY)
    assert not np.allclose(h1["train_loss"], h3["train_loss"])


def test_training_reduces_loss():
    adata, _ = toy_adata()
    _, hist = completion.train_spackle(adata, steps=40, seed=0, val_every=20, lr=3e-3, **TINY)
    assert hist["train_loss"].iloc[-10:].mean() < 0.5 * hist["train_loss"].iloc[:5].mean()


def test_train_rejects_bad_input(tmp_path):
    adata, _ = toy_adata()
    out = tmp_path / "never"
    with pytest.raises(KeyError, match="c_t_log1p"):
        completion.train_spackle(adata, layer="c_t_log1p", steps=1, out_dir=out, **TINY)
    for bad, match in ((dict(train_input="mean"), "train_input"), (dict(loss="masked"), "loss"),
                       (dict(inference="knn"), "inference"), (dict(steps=0), "steps")):
        with pytest.raises(ValueError, match=match):
            completion.train_spackle(adata, **{"steps": 1, "out_dir": out, **bad}, **TINY)
    broken = adata.copy()
    broken.layers["c_d_log1p"][3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        completion.train_spackle(broken, steps=1, out_dir=out, **TINY)
    assert not out.exists()  # nothing written on bad input


def test_default_schedule_is_the_papers_and_the_step_cap_applies(monkeypatch):
    import inspect

    from spared_lib import engine

    sig = inspect.signature(completion.train_spackle).parameters
    # issue 13 §5: the paper trains 10,000 steps of batch 256 at lr 1e-3 (best validation kept)
    assert (sig["steps"].default, sig["batch_size"].default, sig["lr"].default) == (10_000, 256, 1e-3)
    assert completion.SpaCKLE(32).config["d_model"] == 128  # the paper's, not the code's n_genes
    monkeypatch.setenv(engine.MAX_STEPS_ENV, "3")
    adata, _ = toy_adata()
    model, hist = completion.train_spackle(adata, seed=0, **TINY)  # default steps, capped
    assert model.meta["steps"] == 3 and hist["step"].tolist() == [1, 2, 3]
    assert model.meta["best_step"] in (1, 2, 3) and hist["val_mse"].notna().any()


def captured_inputs(adata, monkeypatch, **kw):
    """Run one training step outside a Trainer and return what the model was fed."""
    from spared_lib.completion import train as T

    arrays = T.prepare_training(adata, centre=kw.pop("centre", False), seed=0)
    torch.manual_seed(0)
    model = completion.SpaCKLE(adata.n_vars, d_model=16, dim_feedforward=16)
    task = T.SpaCKLETask(model, arrays, **kw)
    seen = {}
    forward = model.forward

    def spy(x, pad=None):
        seen["x"], seen["pad"] = x.detach().clone(), pad
        out = forward(x, pad)
        seen["out"] = out.detach().clone()
        return out

    monkeypatch.setattr(model, "forward", spy)
    centres = torch.as_tensor(arrays.train_index[:200])
    with pytest.warns(UserWarning, match="self.log"):  # no Trainer attached here
        loss = task.training_step(centres, 0)
    idx = arrays.neighbours[centres.numpy()]
    pad = idx < 0
    e = np.where(pad[..., None], 0.0, arrays.x[np.maximum(idx, 0)])
    obs = arrays.observed[np.maximum(idx, 0)] & ~pad[..., None]
    return seen, e, obs, pad, float(loss.detach())


def test_train_input_median_shows_the_fill_and_zeroed_hides_it(monkeypatch):
    adata, _ = toy_adata()
    seen, e, obs, pad, _ = captured_inputs(adata, monkeypatch, train_input="median")
    x = seen["x"].numpy()
    missing = ~obs & ~pad[..., None]
    np.testing.assert_array_equal(x[missing], e[missing])  # median-filled values, visible
    shown = obs & (x != 0)
    np.testing.assert_array_equal(x[shown], e[shown])
    masked = (obs & (x == 0)).sum() / obs.sum()
    assert 0.2 < masked < 0.6  # observed entries hidden with p = 0.3 / glob_exp_frac
    assert (x[pad] == 0).all()
    seen, e, obs, pad, _ = captured_inputs(adata, monkeypatch, train_input="zeroed")
    assert (seen["x"].numpy()[~obs] == 0).all()  # missing entries zeroed, as at inference


def test_loss_covers_all_or_only_observed_entries(monkeypatch):
    adata, _ = toy_adata()
    for loss in ("all", "observed"):
        seen, e, obs, pad, got = captured_inputs(adata, monkeypatch, train_input="zeroed", loss=loss)
        w = np.broadcast_to(~pad[..., None], obs.shape) if loss == "all" else obs
        ref = ((seen["out"].numpy() - e) ** 2)[w].mean()
        assert got == pytest.approx(ref, rel=1e-5)


def test_observed_only_loss_never_reads_the_median_fill():
    adata, _ = toy_adata()
    other = adata.copy()
    m = adata.layers["mask"]
    other.layers["c_d_log1p"] = np.where(m, adata.layers["c_d_log1p"], 99.0).astype(np.float32)
    kw = dict(steps=6, seed=1, val_every=3, train_input="zeroed", **TINY)
    for loss, same in (("observed", True), ("all", False)):
        a, _ = completion.train_spackle(adata, loss=loss, **kw)
        b, _ = completion.train_spackle(other, loss=loss, **kw)
        equal = all(torch.equal(u, v) for u, v in zip(a.state_dict().values(), b.state_dict().values()))
        assert equal is same


def test_validation_mse_is_the_hidden_entries_of_the_validation_spots():
    from spared_lib.completion import train as T
    from spared_lib.completion.infer import gather_inputs

    adata, _ = toy_adata()
    for rule in ("zeroed", "median"):
        model, hist = completion.train_spackle(adata, steps=4, val_every=4, seed=2, inference=rule, **TINY)
        arrays = T.prepare_training(adata, inference=rule, seed=2)
        assert arrays.val_hidden[arrays.train_index].sum() == 0 and arrays.val_hidden.sum() > 0
        c = torch.as_tensor(arrays.val_index)
        inp, pad = gather_inputs(torch.as_tensor(arrays.val_context), torch.as_tensor(arrays.val_own),
                                 torch.as_tensor(arrays.neighbours), c)
        with torch.no_grad():
            pred = model(inp, pad)[:, 0].numpy()
        r = arrays.val_hidden[arrays.val_index]
        ref = np.mean(((pred - arrays.x[arrays.val_index]) ** 2)[r])
        assert model.meta["best_val_mse"] == pytest.approx(ref, rel=1e-4)
        assert hist["val_mse"].dropna().tolist() == pytest.approx([ref], rel=1e-4)


def test_training_batches_cover_every_train_spot_once_per_epoch():
    from spared_lib.completion.train import centre_loaders

    train = np.arange(10, 40)
    loader, val = centre_loaders(train, np.arange(40, 47), steps=9, batch_size=10, seed=0)
    batches = torch.stack(list(loader)).numpy()
    assert batches.shape == (9, 10)
    for epoch in batches.reshape(3, 30):
        np.testing.assert_array_equal(np.sort(epoch), train)
    assert [b.tolist() for b in centre_loaders(train, np.arange(40, 47), steps=9, batch_size=10, seed=0,
                                               eval_batch_size=3)[1]] == [[40, 41, 42], [43, 44, 45], [46]]
    again = torch.stack(list(centre_loaders(train, train, steps=9, batch_size=10, seed=0)[0])).numpy()
    np.testing.assert_array_equal(batches, again)


def test_one_device_resolver():
    from spared_lib import engine
    from spared_lib.completion import infer

    assert infer.resolve_device is engine.resolve_device  # issue 12 §2: no second copy


# --- completion -------------------------------------------------------------------------------

def test_complete_keeps_observed_and_writes_layers():
    adata, _ = toy_adata()
    model, _ = completion.train_spackle(adata, steps=5, seed=0, **TINY)
    out = completion.complete(adata, model, copy=True)
    assert "c_t_log1p" not in adata.layers  # copy=True leaves the input alone
    x, m = adata.layers["c_d_log1p"], adata.layers["mask"]
    ct = out.layers["c_t_log1p"]
    np.testing.assert_array_equal(ct[m], x[m])
    assert not np.allclose(ct[~m], x[~m])
    train = np.asarray(out.obs["split"] == "train")
    np.testing.assert_allclose(out.var["c_t_log1p_avg_exp"], ct[train].mean(0), rtol=1e-5)
    np.testing.assert_allclose(out.layers["c_t_deltas"], ct - ct[train].mean(0), atol=1e-5)
    # the completed value of a spot is the model's centre output with missing entries zeroed
    nbr = nearest_in_slide(adata)
    i = int(np.flatnonzero(~m.all(axis=1))[0])
    idx = nbr[i][nbr[i] >= 0]
    e = torch.as_tensor(np.where(m, x - model.offset.numpy(), 0)[idx][None])
    with torch.no_grad():
        ref = model(e)[0, 0].numpy()
    np.testing.assert_allclose(ct[i][~m[i]], ref[~m[i]], rtol=1e-4, atol=1e-5)


# --- evaluation and baselines -----------------------------------------------------------------

def test_random_observed_mask_hides_only_observed():
    mask = np.random.default_rng(0).random((400, 50)) > 0.4
    hidden = random_observed_mask(mask, 0.3, seed=1)
    assert not (hidden & ~mask).any()
    assert hidden.sum() / mask.sum() == pytest.approx(0.3, abs=0.02)
    np.testing.assert_array_equal(hidden, random_observed_mask(mask, 0.3, seed=1))


def sme_reference(adata, x, visible, morph, n_top=3):
    """Dense, looped stLearn SME on a tiny input: the reference for the vectorised version."""
    from spared_lib.completion.baselines import _pca

    z = np.where(visible, x, 0.0)
    emb = _pca(z.astype(np.float64), 50)
    xy = adata.obsm["spatial"]
    slide = np.asarray(adata.obs["slide_id"])
    spacing = 100.0
    out = x.copy()
    for i in range(adata.n_obs):
        w = np.zeros(adata.n_obs)
        for j in range(adata.n_obs):
            if slide[i] != slide[j] or np.linalg.norm(xy[i] - xy[j]) >= 3 * spacing:
                continue
            gd = max(np.corrcoef(emb[i], emb[j])[0, 1], 0.0)
            md = max(morph[i] @ morph[j] / np.linalg.norm(morph[i]) / np.linalg.norm(morph[j]), 0.0)
            w[j] = gd * md
        top = np.argsort(-w, kind="stable")[:n_top]
        ww = w[top] / w[top].sum()
        fill = ww @ z[top]
        out[i] = np.where(visible[i], x[i], fill)
    return out


def test_sme_matches_dense_reference():
    adata, _ = toy_adata(n_rows=5, n_cols=6, n_genes=8, slides=("A", "B"))
    x, m = adata.layers["c_d_log1p"], adata.layers["mask"]
    morph = np.random.default_rng(2).random((adata.n_obs, 5)) + 0.1
    got = sme_complete(adata, x, m, morphology=morph)
    np.testing.assert_allclose(got, sme_reference(adata, x, m, morph), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(got[m], x[m])


def test_evaluate_sme_scores_only_hidden_centre_entries():
    from spared_lib.metrics import compute_metrics

    adata, _ = toy_adata(n_rows=6, n_cols=6, n_genes=8)
    res = completion.evaluate_completion(adata, "sme", mask_fraction=0.4, seed=5, return_completion=True)
    test = np.asarray(adata.obs["split"] == "test")
    x = adata.layers["c_d_log1p"]
    assert res["split"] == "test" and res["n_scored"] == res["hidden"][test].sum()
    with pytest.warns(RuntimeWarning, match="left out"):  # spots with < 2 hidden entries
        ref = compute_metrics(x[test], res["completed"][test], res["hidden"][test])
    assert res["MSE"] == pytest.approx(ref["MSE"])
    d = (x - res["completed"])[test][res["hidden"][test]]
    assert res["MSE"] == pytest.approx(float(np.mean(d**2)), rel=1e-5)
    with pytest.raises(ValueError, match="unknown completion method"):
        completion.evaluate_completion(adata, "knn")


def test_spackle_learns_to_complete_better_than_gene_mean():
    adata, _ = toy_adata(n_rows=12, n_cols=12, n_genes=12, seed=1)
    model, _ = completion.train_spackle(adata, steps=200, seed=0, lr=2e-3, val_every=50, **TINY)
    res = completion.evaluate_completion(adata, "spackle", 0.3, seed=0, model=model, return_completion=True)
    x, hidden = adata.layers["c_d_log1p"], res["hidden"]
    test = np.asarray(adata.obs["split"] == "test")
    mean_fill = np.where(hidden, np.nanmean(np.where(adata.layers["mask"] & ~hidden, x, np.nan), 0), x)
    mse_mean = float(np.mean(((x - mean_fill)[test][hidden[test]]) ** 2))
    assert res["MSE"] < 0.7 * mse_mean


def test_median_baseline_fills_hidden_with_neighbourhood_median():
    adata, _ = toy_adata(n_rows=6, n_cols=6, n_genes=4, slides=("A",))
    x = np.full((adata.n_obs, 4), 2.0, dtype=np.float32)
    x[:, 1] = np.arange(adata.n_obs)  # gene 1 varies
    visible = np.ones_like(x, dtype=bool)
    visible[14, :] = False  # an interior spot
    got = completion.median_complete(adata, x, visible)
    np.testing.assert_array_equal(got[visible], x[visible])
    assert got[14, 0] == 2.0
    # 1-hop neighbourhood (itself, now 0, and its 6 nearest spots): median of 7 values
    d = np.linalg.norm(adata.obsm["spatial"] - adata.obsm["spatial"][14], axis=1)
    ring = np.argsort(d, kind="stable")[1:7]
    assert got[14, 1] == np.median(np.r_[0.0, x[ring, 1]])


def test_evaluation_is_quiet_and_counts_spots_without_a_patch_pcc():
    import warnings

    adata, _ = toy_adata(n_rows=6, n_cols=6, n_genes=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # chapter 3 showed nine of them from here
        res = completion.evaluate_completion(adata, "median", mask_fraction=0.1, seed=0)
    assert res["n_spots_excluded"] > 0  # spots with < 2 hidden entries have no PCC-Patch


@pytest.mark.parametrize("method,rule", [("spackle", "zeroed"), ("spackle", "median"), ("median", None),
                                         ("sme", None), ("mean", None)])
def test_completion_never_reads_the_hidden_values(method, rule):
    """Every method and inference rule completes hidden entries from the visible ones only."""
    from spared_lib.completion.evaluate import complete_masked

    adata, _ = toy_adata(n_rows=8, n_cols=8, n_genes=8, slides=("A", "B"))
    x, m = adata.layers["c_d_log1p"], adata.layers["mask"]
    hidden = random_observed_mask(m, 0.4, seed=3)
    model = None
    if method == "spackle":
        torch.manual_seed(0)
        model = completion.SpaCKLE(8, d_model=16, dim_feedforward=16).eval()
    x2 = np.where(hidden | ~m, 50.0, x).astype(np.float32)  # hidden and missing values changed
    a = complete_masked(adata, method, x, m & ~hidden, model=model, inference=rule)
    b = complete_masked(adata, method, x2, m & ~hidden, model=model, inference=rule)
    np.testing.assert_allclose(a[hidden], b[hidden], rtol=1e-5, atol=1e-5)


def test_inference_rules_build_the_inputs_they_name():
    from spared_lib.completion.infer import model_inputs

    adata, _ = toy_adata(n_rows=6, n_cols=6, n_genes=6, slides=("A",))
    x, m = adata.layers["c_d_log1p"], adata.layers["mask"]
    off = np.full(6, 1.5, np.float32)
    ctx, own = model_inputs(adata, x, m, off, "zeroed")
    assert ctx is own
    np.testing.assert_allclose(own, np.where(m, x - off, 0), rtol=1e-6)
    ctx, own = model_inputs(adata, x, m, off, "median")
    np.testing.assert_allclose(own, np.where(m, x - off, 0), rtol=1e-6)
    fill = completion.median_complete(adata, x, m)
    np.testing.assert_allclose(ctx, fill - off, rtol=1e-6)
    assert (ctx[~m] != -off[np.nonzero(~m)[1]]).any()  # the neighbours show a fill, not 0
    with pytest.raises(ValueError, match="inference rule"):
        model_inputs(adata, x, m, off, "mean")


def test_spackle_scores_only_the_spots_it_predicts():
    from spared_lib.completion.evaluate import complete_masked

    adata, _ = toy_adata(n_rows=6, n_cols=6, n_genes=8)
    x, m = adata.layers["c_d_log1p"], adata.layers["mask"]
    torch.manual_seed(0)
    model = completion.SpaCKLE(8, d_model=16, dim_feedforward=16).eval()
    spots = np.flatnonzero(np.asarray(adata.obs["split"] == "test"))
    full = complete_masked(adata, "spackle", x, m, model=model)
    part = complete_masked(adata, "spackle", x, m, model=model, spots=spots)
    np.testing.assert_allclose(part[spots], full[spots], rtol=1e-5, atol=1e-6)
    rest = np.setdiff1d(np.arange(adata.n_obs), spots)
    assert np.isnan(part[rest][~m[rest]]).all() and (part[rest][m[rest]] == x[rest][m[rest]]).all()


def test_forward_centre_is_row_zero_of_forward():
    torch.manual_seed(3)
    for norm_first in (False, True):
        model = completion.SpaCKLE(n_genes=8, d_model=16, dim_feedforward=32, n_layers=3)
        for layer in model.encoder.layers:
            layer.norm_first = norm_first
        model.offset.fill_(2.0)
        model.eval()
        x = torch.randn(6, 19, 8)
        pad = torch.zeros(6, 19, dtype=torch.bool)
        pad[2, 11:] = True
        with torch.no_grad():
            torch.testing.assert_close(model.forward_centre(x, pad), model(x, pad)[:, 0], rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match="eval"):
        model.train().forward_centre(x, pad)


def test_train_mean_fills_with_the_visible_train_mean():
    adata, _ = toy_adata(n_rows=4, n_cols=4, n_genes=3)
    x, m = adata.layers["c_d_log1p"], adata.layers["mask"]
    visible = m & ~random_observed_mask(m, 0.3, seed=0)
    got = completion.train_mean_complete(adata, x, visible)
    train = np.asarray(adata.obs["split"] == "train")
    for g in range(3):
        ref = x[train & visible[:, g], g].mean()
        np.testing.assert_allclose(got[~visible[:, g], g], ref, rtol=1e-5)
    np.testing.assert_array_equal(got[visible], x[visible])
    assert "mean" in completion.METHODS


def test_library_defaults_are_the_committed_study_winner():
    """issue 16 §1: the winner of the training-input study (chosen on validation slides) is the default."""
    from spared_lib import resources

    won = resources.load_result("completion")["results"]["study"]["winner"]
    defaults = completion.train_spackle.__kwdefaults__
    assert {k: defaults[k] for k in ("train_input", "loss", "centre", "inference")} == \
        {k: won[k] for k in ("train_input", "loss", "centre", "inference")}


def test_image_features_are_seeded_and_per_patch():
    rng = np.random.default_rng(0)
    patches = rng.integers(0, 256, (4, 48, 48, 3), dtype=np.uint8)
    a, source = completion.image_features(patches, weights=None, size=48, device="cpu", seed=1)
    b, _ = completion.image_features(patches, weights=None, size=48, device="cpu", seed=1)
    assert a.shape == (4, 1024) and "random init" in source
    np.testing.assert_array_equal(a, b)
    one, _ = completion.image_features(patches[2:3], weights=None, size=48, device="cpu", seed=1)
    np.testing.assert_allclose(one[0], a[2], rtol=1e-4, atol=1e-5)  # a patch's features ignore the batch
    assert not np.allclose(a[0], a[1])
