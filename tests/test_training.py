"""spared_lib.training: data pipeline, Lightning loop, checkpoint rule, Δ, TTA, slide batching."""
import numpy as np
import pandas as pd
import pytest
import torch


from spared_lib.metrics import compute_metrics  # noqa: E402
from spared_lib.models.base import SpotModel  # noqa: E402
from spared_lib.training import fit, predict  # noqa: E402
from spared_lib.preprocessing import dihedral  # noqa: E402
from toydata import make_patch_data  # noqa: E402
from spared_lib.training.data import (contiguous_crops, local_edge_index,  # noqa: E402
                                      make_loader, random_dihedral, read_targets, spot_meta)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data():
    return make_patch_data()


def _mean_baseline_mse(ad, idx):
    y, m = ad.layers["c_d_log1p"], ad.layers["mask"]
    return compute_metrics(y[idx], np.broadcast_to(ad.var["c_d_log1p_avg_exp"].to_numpy(), y[idx].shape),
                           m[idx])["MSE"]


def test_end_to_end_fit_beats_training_mean(data, tmp_path):
    ad, patches = data
    res = fit("shufflenet", ad, "c_d_log1p", steps=80, lr=3e-3, patches=patches, batch_size=32, size="small", pretrained=None,
              device="cpu", out_dir=tmp_path, val_every=20, progress=False)
    assert res.eval_split == "test"
    test_idx = np.flatnonzero(ad.obs["split"] == "test")
    np.testing.assert_array_equal(res.eval_index, test_idx)
    baseline = _mean_baseline_mse(ad, test_idx)
    assert res.metrics["MSE"] < 0.7 * baseline, (res.metrics["MSE"], baseline)
    assert res.metrics["PCC-Gene"] > 0.5
    # the reported metrics are those of the returned model's predictions on the test split
    again = predict(res.model, ad, patches, test_idx, device="cpu")
    np.testing.assert_allclose(again, res.predictions, atol=1e-5)
    ref = compute_metrics(ad.layers["c_d_log1p"][test_idx], again, ad.layers["mask"][test_idx])
    assert res.metrics["MSE"] == pytest.approx(ref["MSE"], rel=1e-4)
    # checkpoint rule: the kept checkpoint is the lowest validation MSE of the run
    h = res.history
    assert h["val_mse"].notna().sum() == 4
    assert res.best_val_mse == pytest.approx(h["val_mse"].min(), rel=1e-6)
    assert res.best_step == int(h.loc[h["val_mse"].idxmin(), "step"])
    assert res.checkpoint_path and str(tmp_path) in res.checkpoint_path
    val_idx = np.flatnonzero(ad.obs["split"] == "val")
    val_pred = predict(res.model, ad, patches, val_idx, device="cpu")
    assert compute_metrics(ad.layers["c_d_log1p"][val_idx], val_pred, ad.layers["mask"][val_idx])["MSE"] == \
        pytest.approx(res.best_val_mse, rel=1e-4)


def test_fit_is_deterministic_on_cpu(data, tmp_path):
    ad, patches = data
    kw = dict(steps=4, lr=1e-3, patches=patches, batch_size=16, size="small", pretrained=None, device="cpu", val_every=2,
              progress=False, verbose=False)
    a = fit("shufflenet", ad, out_dir=tmp_path / "a", seed=3, **kw)
    b = fit("shufflenet", ad, out_dir=tmp_path / "b", seed=3, **kw)
    c = fit("shufflenet", ad, out_dir=tmp_path / "c", seed=4, **kw)
    pd.testing.assert_frame_equal(a.history, b.history)
    np.testing.assert_array_equal(a.predictions, b.predictions)
    assert not np.allclose(a.history["train_loss"].dropna(), c.history["train_loss"].dropna())


def test_delta_model_adds_train_mean_back(data, tmp_path):
    ad, patches = data
    res = fit("vit_b_delta", ad, steps=2, lr=1e-4, patches=patches, batch_size=16, size="small", pretrained=None, device="cpu",
              out_dir=tmp_path, val_every=2, progress=False, verbose=False, model_kwargs={"image_size": 32})
    offset = res.model.target_offset.numpy()
    np.testing.assert_allclose(offset, ad.var["c_d_log1p_avg_exp"].to_numpy(), rtol=1e-6)
    t = read_targets(ad, "c_d_log1p", uses_deltas=True)
    np.testing.assert_allclose(t.target, ad.layers["c_d_deltas"])
    # predictions are in log1p space: model output (delta space) + the train mean
    idx = res.eval_index[:5]
    from spared_lib.training.data import normalise
    with torch.no_grad():
        raw = res.model({"image": normalise(torch.from_numpy(patches[idx]))}).numpy()
    np.testing.assert_allclose(res.predictions[:5], raw + offset, atol=1e-5)


def test_stnet_starts_at_training_mean(data, tmp_path):
    ad, patches = data
    res = fit("stnet", ad, steps=1, lr=0.0, patches=patches, batch_size=8, size="small", pretrained=None, device="cpu",
              out_dir=tmp_path, val_every=1, progress=False, verbose=False)
    # lr = 0: the model is exactly its initialisation -> every prediction is the train mean over
    # all entries, as the loss sees them (issue 14 §1)
    train = np.flatnonzero(ad.obs["split"] == "train")
    mean = ad.layers["c_d_log1p"][train].mean(0)
    np.testing.assert_allclose(res.predictions, np.broadcast_to(mean, res.predictions.shape), rtol=1e-5)
    assert res.model.test_time_augmentation and res.model.optimizer == "sgd"


def test_missing_completed_layer_and_misaligned_patches(data):
    ad, patches = data
    with pytest.raises(KeyError, match="complete"):
        fit("shufflenet", ad, "c_t_log1p", steps=1, patches=patches, size="small", pretrained=None, device="cpu")
    with pytest.raises(ValueError, match="aligned"):
        fit("shufflenet", ad, steps=1, patches=patches[:10], size="small", pretrained=None, device="cpu")
    with pytest.raises(KeyError, match="valid names"):
        fit("resnet", ad, steps=1, patches=patches)


def test_eval_loader_keeps_every_spot(data):
    ad, patches = data
    t = read_targets(ad, "c_d_log1p", False)
    idx = np.arange(37)
    loader = make_loader("spot", patches, t, spot_meta(ad), idx, batch_size=8, train=False)
    seen = torch.cat([b["index"] for b in loader]).numpy()
    np.testing.assert_array_equal(seen, idx)
    assert not loader.drop_last


def test_augmentation_views_are_the_eight_symmetries():
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).view(2, 3, 5, 5)
    views = dihedral(x)
    flat = {tuple(v[0].flatten().tolist()) for v in views}
    assert len(flat) == 8
    torch.manual_seed(0)
    for _ in range(20):
        y = random_dihedral(x)
        for b in range(2):
            assert tuple(y[b].flatten().tolist()) in {tuple(v[b].flatten().tolist()) for v in views}


def test_contiguous_crops_partition_and_edges(data):
    ad, _ = data
    meta = spot_meta(ad)
    rows = np.flatnonzero(meta["slide"] == 0)
    crops = contiguous_crops(meta["xy"], rows, 20)
    assert all(len(c) <= 20 for c in crops)
    np.testing.assert_array_equal(np.sort(np.concatenate(crops)), rows)
    # spatially compact: a crop's bounding box is much smaller than the slide's
    assert max(np.ptp(meta["xy"][c], 0).max() for c in crops) < np.ptp(meta["xy"][rows], 0).max()
    from spared_lib.training.data import first_ring
    nb = first_ring(ad)
    assert (nb[:, 0] == np.arange(ad.n_obs)).all()
    inner = (ad.obs["array_row"].between(1, 6) & ad.obs["array_col"].between(2, 13)).to_numpy()
    assert ((nb[inner, 1:] >= 0).sum(1) == 6).all()  # interior hex spots have 6 neighbours
    e = local_edge_index(rows, nb).numpy()
    pairs = {(rows[s], rows[d]) for s, d in e.T}
    expect = {(j, i) for i in rows for j in nb[i, 1:] if j >= 0} | {(i, j) for i in rows for j in nb[i, 1:] if j >= 0}
    assert pairs == expect


class _SlideMean(SpotModel):
    """Tiny slide model: colour features averaged over graph neighbours."""

    batching = "slide"
    max_spots = 30

    def __init__(self, g):
        super().__init__()
        self.lin = torch.nn.Linear(6, g)
        self.seen = []

    def forward(self, batch):
        f = batch["image"].mean((2, 3))
        src, dst = batch["edge_index"]
        agg = torch.zeros_like(f).index_add_(0, dst, f[src])
        deg = torch.zeros(len(f)).index_add_(0, dst, torch.ones(len(src))).clamp_min(1)
        self.seen.append((len(f), int(batch["edge_index"].shape[1])))
        return self.lin(torch.cat([f, agg / deg[:, None]], 1))


def test_slide_batching_through_fit(data, tmp_path):
    ad, patches = data
    model = _SlideMean(ad.n_vars)
    res = fit(model, ad, steps=6, lr=1e-2, patches=patches, device="cpu", out_dir=tmp_path, val_every=3,
              progress=False, verbose=False, slide_spots=None)  # None: the model's own max_spots
    assert all(n <= 30 and e > 0 for n, e in model.seen)
    assert res.extra["slide_input"] == "crops of at most 30 spots (largest slide 64)"
    assert res.predictions.shape == (64, ad.n_vars) and np.isfinite(res.predictions).all()


def test_completed_targets_change_training_unless_the_loss_is_observed_only(data, tmp_path):
    """The loss covers every target entry (as the original trainer, torch.nn.MSELoss over the whole
    target), so a layer that differs only on unobserved entries (a completion) trains a different
    model; with our observed-only option the two layers train identically."""
    ad, patches = data
    ad = ad.copy()
    filled = ad.layers["c_d_log1p"].copy()
    filled[~ad.layers["mask"]] += 3.0  # what a different completion would change: missing entries only
    ad.layers["c_t_log1p"] = filled
    kw = dict(steps=3, lr=1e-3, patches=patches, batch_size=16, size="small", pretrained=None, device="cpu", val_every=3,
              progress=False, verbose=False, seed=0)
    raw = fit("shufflenet", ad, "c_d_log1p", out_dir=tmp_path / "raw", **kw)
    done = fit("shufflenet", ad, "c_t_log1p", out_dir=tmp_path / "done", **kw)
    assert not np.allclose(raw.history["train_loss"].dropna(), done.history["train_loss"].dropna())
    # the output bias starts at the mean of all target entries (issue 14 §1), which the completion
    # changes; the loss alone is compared here, so the plain init
    kw["model_kwargs"] = {"init_bias": None}
    raw_o = fit("shufflenet", ad, "c_d_log1p", out_dir=tmp_path / "raw_o", observed_only_loss=True, **kw)
    done_o = fit("shufflenet", ad, "c_t_log1p", out_dir=tmp_path / "done_o", observed_only_loss=True, **kw)
    np.testing.assert_allclose(raw_o.history["train_loss"].dropna(), done_o.history["train_loss"].dropna(),
                               rtol=1e-6)
    np.testing.assert_allclose(raw_o.predictions, done_o.predictions, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- engine and options
def test_fit_options_reject_unknown_names_and_keep_defaults():
    from spared_lib.training import FitOptions

    opt = FitOptions()
    assert (opt.steps, opt.batch_size, opt.pretrained, opt.size) == (1000, 256, "imagenet", "paper")
    assert opt.replace(steps=3).steps == 3 and opt.steps == 1000
    with pytest.raises(TypeError, match="unknown option.*stpes"):
        opt.replace(stpes=3)


@pytest.mark.parametrize("batch,micro,expect", [(256, None, (256, 1)), (256, 256, (256, 1)), (256, 100, (64, 4)),
                                                (256, 96, (64, 4)), (256, 1, (1, 256)), (30, 7, (6, 5))])
def test_accumulation_keeps_the_effective_batch(batch, micro, expect):
    from spared_lib.training import accumulation

    got = accumulation(batch, micro)
    assert got == expect
    assert got[0] * got[1] == batch and (micro is None or got[0] <= micro)


def test_step_cap_environment_variable(monkeypatch):
    from spared_lib.engine import MAX_STEPS_ENV, cap_steps

    monkeypatch.delenv(MAX_STEPS_ENV, raising=False)
    assert cap_steps(1000) == 1000
    monkeypatch.setenv(MAX_STEPS_ENV, "2")
    assert cap_steps(1000) == 2 and cap_steps(1) == 1
    monkeypatch.setenv(MAX_STEPS_ENV, "two")
    with pytest.raises(ValueError, match=MAX_STEPS_ENV):
        cap_steps(10)


def test_fit_obeys_the_step_cap_and_accumulates(data, tmp_path, monkeypatch):
    """SPARED_MAX_STEPS shortens fit; micro-batches give the same first step as one full batch
    (ShuffleNet's BatchNorm sees smaller batches, so compare a model without BatchNorm)."""
    from spared_lib.engine import MAX_STEPS_ENV
    from spared_lib.training import module as training_module

    ad, patches = data
    # augmentation draws one random symmetry per image and batch: off, so both runs see the same images
    plain = training_module.to_model_input
    monkeypatch.setattr(training_module, "to_model_input", lambda batch, augment: plain(batch, False))
    monkeypatch.setenv(MAX_STEPS_ENV, "2")
    kw = dict(steps=50, lr=1e-3, patches=patches, batch_size=16, size="small", pretrained=None, device="cpu",
              progress=False, verbose=False, val_every=1)
    kw["model_kwargs"] = {"image_size": patches.shape[1]}
    res = fit("vit_b", ad, out_dir=tmp_path / "capped", **kw)
    assert res.extra["steps"] == 2 and int(res.history["step"].max()) == 2
    monkeypatch.setenv(MAX_STEPS_ENV, "1")
    # plain SGD: one step moves each weight by lr x its gradient, so equal gradients give equal weights
    # (Adam would divide noise-level gradients by their own size)
    import copy

    from spared_lib.models import build_model

    torch.manual_seed(0)
    net = build_model("vit_b", ad.n_vars, pretrained=None, size="small", image_size=patches.shape[1], verbose=False)
    net.optimizer = "sgd"
    kw = {k: v for k, v in kw.items() if k not in ("size", "pretrained", "model_kwargs")}
    whole = fit(copy.deepcopy(net), ad, out_dir=tmp_path / "whole", **kw)
    acc = fit(copy.deepcopy(net), ad, out_dir=tmp_path / "acc", micro_batch_size=4, **kw)
    assert acc.extra["accumulate_grad_batches"] == 4 and acc.extra["micro_batch_size"] == 4
    assert len(acc.history) == 1 and acc.history["step"].tolist() == [1]
    moved = 0
    for (k, a), (_, b), (_, a0) in zip(whole.model.state_dict().items(), acc.model.state_dict().items(),
                                       net.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=k)
        moved += int(not torch.equal(a, a0))
    assert moved > 10  # the step did change the weights


# --------------------------------------------------------------------------- memory (issue 13 §6)
class _Flat(SpotModel):
    """A linear model on the flattened image: autograd saves exactly its input, B x 3·H·W floats."""

    def __init__(self, d, g):
        super().__init__()
        self.lin = torch.nn.Linear(d, g)

    def forward(self, batch):
        return self.lin(batch["image"].flatten(1))


def test_memory_plan_counts_saved_activations_and_the_fixed_part():
    from spared_lib.training import memory

    g, side = 5, 16
    d = 3 * side * side
    model = _Flat(d, g)

    def make_batch(n):
        return {"image": torch.randn(n, 3, side, side), "target": torch.randn(n, g)}

    # Linear saves its input (n·d float32) for the weight gradient; the MSE saves pred - target (n·g)
    per = (d + g) * 4
    assert memory.saved_bytes(model, make_batch(3), "cpu") == pytest.approx(3 * per, rel=0.05)
    fixed = memory.fixed_bytes(model, "cpu")
    assert fixed == (d * g + g) * 4 * 4  # gradients + Adam's two moments + the step's temporaries
    # free memory for exactly 10 samples at safety 1 -> a micro-batch of 10 out of 256
    plan = memory.plan_micro_batch(model, make_batch, 256, "cpu", free=fixed + 10 * per + per // 2, safety=1.0)
    assert plan.size == 10 and plan.per_sample_gb == pytest.approx(per / 2**30, rel=0.05)
    assert memory.plan_micro_batch(model, make_batch, 8, "cpu", free=10**12).size == 8  # never above the batch
    with pytest.raises(memory.DoesNotFit, match="GiB for gradients and optimiser state"):
        memory.plan_micro_batch(model, make_batch, 256, "cpu", free=fixed // 2)
    # the probe leaves no gradients behind
    assert all(p.grad is None for p in model.parameters())


def test_auto_micro_batch_keeps_the_effective_batch_in_less_memory(data, tmp_path, monkeypatch):
    """With little free memory, 'auto' splits the batch into micro-batches (issue 13 §6): the step
    still sees batch_size spots, and the run records the plan and its peak memory."""
    from spared_lib.training import memory

    ad, patches = data
    kw = dict(steps=2, lr=1e-3, patches=patches, batch_size=32, size="small", pretrained=None, device="cpu",
              progress=False, verbose=False, val_every=2)
    roomy = fit("shufflenet", ad, out_dir=tmp_path / "a", **kw)
    assert roomy.extra["accumulate_grad_batches"] == 1 and roomy.extra["micro_batch_size"] == 32
    plan = roomy.extra["memory_plan"]
    assert plan["per_sample_gb"] > 0 and plan["fixed_gb"] > 0
    assert roomy.extra["peak_memory_gb"] > 0.05  # the process's resident peak while training
    # free memory for about ten samples: micro-batches of 8 (the divisor of 32 at most 10)
    gib = 2**30
    free = (plan["fixed_gb"] + 10.5 * plan["per_sample_gb"]) * gib / memory.SAFETY
    monkeypatch.setattr(memory, "free_memory_bytes", lambda device: int(free))
    tight = fit("shufflenet", ad, out_dir=tmp_path / "b", **kw)
    assert tight.extra["micro_batch_size"] == 8 and tight.extra["accumulate_grad_batches"] == 4
    assert tight.extra["batch_size"] == 32
    assert tight.history["step"].max() == 2


def test_slide_models_train_on_whole_slides_where_they_fit(data, tmp_path, monkeypatch):
    """slide_spots='auto' (issue 14 §4): whole slides when memory allows, crops otherwise; the run
    says which."""
    from spared_lib.training import memory

    ad, patches = data
    kw = dict(steps=2, lr=1e-2, patches=patches, device="cpu", out_dir=tmp_path, val_every=2,
              progress=False, verbose=False)
    model = _SlideMean(ad.n_vars)
    res = fit(model, ad, **kw)
    assert res.extra["slide_input"] == "whole slides (up to 64 spots)" and model.max_spots == 64
    assert {n for n, _ in model.seen[-4:]} == {64}  # the last steps and evaluations: whole slides
    per = res.extra["memory_plan"]["per_sample_gb"] * 2**30
    fixed = res.extra["memory_plan"]["fixed_gb"] * 2**30
    monkeypatch.setattr(memory, "free_memory_bytes", lambda device: int((fixed + 20 * per) / memory.SAFETY))
    model = _SlideMean(ad.n_vars)
    res = fit(model, ad, **kw)
    assert 1 <= model.max_spots < 64
    assert res.extra["slide_input"] == f"crops of at most {model.max_spots} spots (largest slide 64)"
    assert max(n for n, _ in model.seen[-3:]) <= model.max_spots


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="malloc_trim is glibc's (Linux)")
def test_release_memory_returns_a_freed_heap_to_the_system():
    """The rehearsal's finding (issue 13): runs in one process each started higher, because glibc
    keeps freed heap pages. 64 KiB blocks come from the heap; keeping only the last one pins its top,
    so freeing the rest returns nothing by itself, and release_memory must give it back."""
    from spared_lib.training.memory import release_memory

    release_memory()
    blocks = [np.ones(8192) for _ in range(3200)]  # 3,200 × 64 KiB = 200 MiB of heap, touched
    last = blocks[-1]
    del blocks
    held = _rss_mb()
    release_memory()
    assert held - _rss_mb() > 100, "freed heap pages were not returned"
    assert last.sum() == 8192


def test_fit_releases_freed_memory_before_it_plans(data, tmp_path, monkeypatch):
    """fit hands back what earlier runs freed before 'auto' reads the free memory (else each run of a
    benchmark plans against the heap the previous one left)."""
    import importlib

    from spared_lib.training import memory

    fit_module = importlib.import_module("spared_lib.training.fit")  # the module, not the function

    calls = []
    monkeypatch.setattr(fit_module, "release_memory", lambda device: calls.append(("release", device)))
    real_free = memory.free_memory_bytes
    monkeypatch.setattr(memory, "free_memory_bytes", lambda device: calls.append(("plan", device)) or real_free(device))
    ad, patches = data
    fit("shufflenet", ad, steps=1, lr=1e-3, patches=patches, batch_size=16, size="small", pretrained=None,
        device="cpu", progress=False, verbose=False, out_dir=tmp_path)
    assert calls[:2] == [("release", "cpu"), ("plan", "cpu")]


def test_micro_batches_make_whole_steps_of_the_same_spots_as_one_batch():
    """Every optimiser step gets exactly k micro-batches, which together are the spots the step would
    see without accumulation (same shuffle); a pass no longer ends on a partial step."""
    from torch.utils.data import DataLoader

    from spared_lib.training.data import StepBatchSampler

    n, batch, k = 75, 32, 4  # steps of 32, 32 and 11 spots
    g = torch.Generator().manual_seed(5)
    sampler = StepBatchSampler(n, batch, k, g)
    # both through a DataLoader, which draws its base seed from the same generator first
    micro = [b.tolist() for b in DataLoader(range(n), batch_sampler=sampler, generator=g)]
    assert len(micro) == len(sampler) == 3 * k
    plain = DataLoader(range(n), batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(5))
    for step, whole in enumerate(plain):
        parts = micro[step * k:(step + 1) * k]
        assert sorted(sum(parts, [])) == sorted(whole.tolist())
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    # a last step too small for two spots per micro-batch is dropped (BatchNorm)
    assert len(StepBatchSampler(69, 32, 4)) == 2 * 4 and len(StepBatchSampler(72, 32, 4)) == 3 * 4


def test_accumulated_short_run_validates_and_keeps_a_checkpoint(data, tmp_path):
    """The rehearsal's finding (issue 13): with micro-batches a pass of 64 spots in steps of 48 ended
    on a partial step, Lightning (counting batches) never reached its validation, and the run kept no
    best checkpoint: NaN best_val_mse, no stage 1 for SEPAL."""
    ad, patches = data
    ad = ad[ad.obs["split"].isin(["train", "val"])].copy()
    n_train = int((ad.obs["split"] == "train").sum())
    assert n_train % 48 and n_train // 48 == 1  # one full step and a partial one per pass
    res = fit("shufflenet", ad, steps=2, lr=1e-3, patches=patches[np.flatnonzero(data[0].obs["split"].isin(["train", "val"]))],
              batch_size=48, micro_batch_size=16, val_every=2, size="small", pretrained=None, device="cpu",
              progress=False, verbose=False, out_dir=tmp_path)
    assert res.extra["accumulate_grad_batches"] == 3
    assert np.isfinite(res.best_val_mse) and res.best_step == 2
    assert res.checkpoint_path and __import__("pathlib").Path(res.checkpoint_path).is_file()
    assert res.history["step"].tolist()[:2] == [1, 2]
