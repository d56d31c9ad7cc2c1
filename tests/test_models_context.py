"""Neighbourhood, slide and exemplar models: HisToGene, Hist2ST, EGN, EGGN, BLEEP, SEPAL (issues 7, 14)."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

anndata = pytest.importorskip("anndata")

from spared_lib.models import CONTEXT_MODELS, MODELS, build_model, count_parameters  # noqa: E402
from spared_lib.models import graph as G  # noqa: E402
from spared_lib.models.base import FitContext  # noqa: E402
from spared_lib.training import normalise as normalise_uint8  # noqa: E402
from toydata import make_patch_data  # noqa: E402


# --------------------------------------------------------------------------- synthetic data
def make_data(n_side=5, n_genes=8, seed=0, size=224):
    """4 hex slides (train, train, val, test) with raw counts for the ZINB head, + uint8 patches."""
    return make_patch_data(n_side=n_side, n_genes=n_genes, seed=seed, size=size,
                           splits=("train", "train", "val", "test"), counts=True)


def normalise(p):
    return normalise_uint8(torch.from_numpy(np.ascontiguousarray(p)))


_RINGS = {}


def ring(ad):
    """The trainer's first-ring table, computed once per AnnData (it imports squidpy)."""
    from spared_lib.training.data import first_ring

    if id(ad) not in _RINGS:
        _RINGS[id(ad)] = first_ring(ad)
    return _RINGS[id(ad)]


def make_ctx(ad, patches, target):
    @torch.no_grad()
    def encode(module, index):
        module.eval()
        return torch.cat([module(normalise(patches[index[s:s + 64]])).float() for s in range(0, len(index), 64)])

    return FitContext(adata=ad, patches=patches, target=target, mask=ad.layers["mask"],
                      train_index=np.flatnonzero(ad.obs["split"] == "train"), neighbors=ring(ad),
                      device=torch.device("cpu"), encode=encode)


def batch_of(ad, patches, rows, target):
    from spared_lib.training.data import local_edge_index

    return {"image": normalise(patches[rows]), "target": torch.from_numpy(target[rows]),
            "mask": torch.from_numpy(ad.layers["mask"][rows]), "index": torch.from_numpy(rows),
            "slide": torch.from_numpy(ad.obs["slide_id"].cat.codes.to_numpy()[rows].astype(np.int64)),
            "grid": torch.from_numpy(ad.obs[["array_row", "array_col"]].to_numpy(np.int64)[rows]),
            "xy": torch.from_numpy(np.asarray(ad.obsm["spatial"], np.float32)[rows]),
            "edge_index": local_edge_index(rows, ring(ad))}


@pytest.fixture(scope="module")
def data():
    """64-px patches: every small model resizes its input (SEPAL's ViT needs 224 px: ``data224``)."""
    return make_data(size=64)


@pytest.fixture(scope="module")
def data224():
    return make_data(n_side=4, size=224)


def data_for(name, request):
    return request.getfixturevalue("data224" if name == "sepal" else "data")


def small_model(name, n_genes):
    kw = {}
    if name == "sepal":
        kw["stage1"] = build_model("vit_b_delta", n_genes, size="small", verbose=False)
    return build_model(name, n_genes, size="small", **kw)


def target_of(model, ad):
    return ad.layers["c_d_deltas"] if model.uses_deltas else ad.layers["c_d_log1p"]


# --------------------------------------------------------------------------- graph ops
def test_scatter_ops_against_hand_computed_values():
    src = torch.tensor([[1.0], [3.0], [5.0], [7.0]])
    idx = torch.tensor([0, 0, 2, 2])
    assert G.scatter_sum(src, idx, 3).squeeze(1).tolist() == [4.0, 0.0, 12.0]
    assert G.scatter_mean(src, idx, 3).squeeze(1).tolist() == [2.0, 0.0, 6.0]
    scores = torch.tensor([0.0, math.log(3.0), 1000.0, 1000.0])
    sm = G.segment_softmax(scores, idx, 3)
    torch.testing.assert_close(sm, torch.tensor([0.25, 0.75, 0.5, 0.5]))  # no overflow at 1000


def test_gcn_dense_and_sparse_agree():
    torch.manual_seed(0)
    n, f = 5, 4
    adj = torch.zeros(n, n, dtype=torch.bool)
    for a, b in [(0, 1), (1, 2), (2, 3), (0, 4)]:
        adj[a, b] = adj[b, a] = True
    edge_index = adj.nonzero().T.flip(0)
    x = torch.randn(n, f)
    sparse, dense = G.GCNConv(f, 3), G.DenseGCNConv(f, 3)
    dense.load_state_dict(sparse.state_dict())
    # reference: D^-1/2 (A + I) D^-1/2 X W + b
    a = adj.float() + torch.eye(n)
    dinv = a.sum(1).rsqrt()
    ref = (dinv[:, None] * a * dinv[None]) @ (x @ sparse.lin.weight.T) + sparse.bias
    torch.testing.assert_close(sparse(x, edge_index), ref)
    out = dense(x.unsqueeze(0), adj.unsqueeze(0), torch.ones(1, n, dtype=torch.bool)).squeeze(0)
    torch.testing.assert_close(out, ref)
    # a padded node changes nothing for the others
    pad = dense(torch.cat([x, torch.randn(1, f)]).unsqueeze(0),
                torch.nn.functional.pad(adj, (0, 1, 0, 1), value=True).unsqueeze(0),
                torch.tensor([[True] * n + [False]])).squeeze(0)
    torch.testing.assert_close(pad[:n], ref)
    assert pad[n].abs().sum() == 0


def test_radius_and_knn_graph_match_brute_force():
    rng = np.random.default_rng(1)
    pos = torch.tensor(rng.uniform(0, 10, (30, 2)), dtype=torch.float32)
    group = torch.tensor(rng.integers(0, 2, 30))
    e = G.radius_graph(pos, 3.0, max_neighbors=4, group=group)
    d = torch.cdist(pos, pos)
    for i in range(30):  # reference, loop fine in a test
        cand = [j for j in range(30) if j != i and group[j] == group[i] and d[i, j] <= 3.0]
        cand = sorted(cand, key=lambda j: d[i, j].item())[:4]
        assert sorted(e[0][e[1] == i].tolist()) == sorted(cand)
    k = G.knn_graph(pos, 3)
    assert k.shape == (2, 90) and not (k[0] == k[1]).any()
    assert (d[k[1], k[0]] <= d.masked_fill(torch.eye(30, dtype=torch.bool), 1e9).sort(1).values[k[1], 2] + 1e-6).all()


def test_sinusoidal_2d_encodes_each_axis():
    code = G.sinusoidal_2d(torch.tensor([[0.0, 0.0], [1.0, -2.0]]), 8)
    assert code.shape == (2, 8)
    torch.testing.assert_close(code[0], torch.tensor([0, 0, 1, 1, 0, 0, 1, 1.0]))
    assert code[1, 0].item() == pytest.approx(math.sin(1.0)) and code[1, 4].item() == pytest.approx(math.sin(-2.0))
    with pytest.raises(ValueError, match="divisible by 4"):
        G.sinusoidal_2d(torch.zeros(1, 2), 6)


# --------------------------------------------------------------------------- sizes
@pytest.mark.parametrize("name", CONTEXT_MODELS)
def test_paper_size_matches_original_parameter_count(name):
    import importlib

    module = importlib.import_module(MODELS[name].module)
    with torch.device("meta"):  # paper sizes reach 0.9 B parameters: count without allocating
        model = build_model(name, 128)
    # SEPAL's ViT is frozen in stage 2 but trained in stage 1: the paper counts both
    n = count_parameters(model, trainable_only=name != "sepal")
    original = module.original_n_params(128)
    assert abs(n - original) <= 0.05 * original, (name, n, original)
    if MODELS[name].original_params is not None:
        assert MODELS[name].original_params == original
    small = small_model(name, 8)
    assert count_parameters(small) < original / 2


# --------------------------------------------------------------------------- forward/backward
@pytest.mark.parametrize("name", CONTEXT_MODELS)
def test_forward_backward_shapes(name, request):
    ad, patches = data_for(name, request)
    torch.manual_seed(0)
    model = small_model(name, ad.n_vars)
    target = target_of(model, ad)
    model.prepare(make_ctx(ad, patches, target))
    rows = np.arange(16) if model.batching == "slide" else np.array([0, 5, 20, 30, 50, 60])
    batch = batch_of(ad, patches, rows, target)
    model.train()
    pred = model(batch)
    if name == "bleep":
        assert pred.shape == (len(rows), model.image_projection.norm.normalized_shape[0])
    else:
        assert pred.shape == (len(rows), ad.n_vars)
    loss = model.loss(batch, pred)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is None or torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0
    model.eval()
    out = model.predict(batch)
    assert out.shape == (len(rows), ad.n_vars) and torch.isfinite(out).all()


# --------------------------------------------------------------------------- memory banks
def test_exemplar_table_uses_training_spots_of_other_slides():
    from spared_lib.models.egn import exemplar_table

    rng = np.random.default_rng(0)
    feats = rng.normal(size=(40, 5))
    slide = np.repeat([0, 1, 2, 3], 10)
    train = np.arange(20)  # slides 0 and 1
    tab = exemplar_table(feats, slide, train, k=3)
    assert tab.shape == (40, 3)
    bank_rows = train[tab]
    assert np.isin(bank_rows, train).all()
    # a training spot's exemplars come from the other training slide
    assert (slide[bank_rows[:20]] != slide[:20, None]).all()
    # brute force for a test spot: the 3 nearest training spots
    d = ((feats[35] - feats[train]) ** 2).sum(1)
    assert set(bank_rows[35]) == set(train[np.argsort(d)[:3]])
    # one training slide: same slide, never the spot itself
    tab1 = exemplar_table(feats, slide, np.arange(10), k=3)
    assert not (tab1[:10] == np.arange(10)[:, None]).any()


@pytest.mark.parametrize("name", ["egn", "eggn", "bleep"])
def test_memory_bank_never_holds_val_or_test_spots(name, data):
    ad, patches = data
    target = ad.layers["c_d_log1p"].copy()
    held_out = np.flatnonzero(ad.obs["split"] != "train")
    target[held_out] = 1e6  # a value no training spot has
    model = small_model(name, ad.n_vars)
    model.prepare(make_ctx(ad, patches, target))
    bank = model.db_target if name == "bleep" else model.bank.bank_target
    assert bank.shape[0] == (ad.obs["split"] == "train").sum()
    assert bank.max() < 1e5
    model.eval()
    rows = held_out[:12]
    b = batch_of(ad, patches, rows, target)
    pred = model.predict(b)
    if name == "bleep":  # retrieval returns means of training targets only
        assert pred.max() < 1e5
    else:
        ex = model.bank.lookup(b["index"])[3]
        assert np.isin(model.bank.train_index[ex].numpy(), np.flatnonzero(ad.obs["split"] == "train")).all()


def test_bleep_predicts_the_mean_of_the_nearest_training_spots(data):
    ad, patches = data
    model = small_model("bleep", ad.n_vars).eval()
    model.top_k = 5
    target = ad.layers["c_d_log1p"]
    model.prepare(make_ctx(ad, patches, target))
    rows = np.flatnonzero(ad.obs["split"] == "test")[:4]
    b = batch_of(ad, patches, rows, target)
    with torch.no_grad():
        img = torch.nn.functional.normalize(model.embed_image(b["image"]), dim=-1)
        train = np.flatnonzero(ad.obs["split"] == "train")
        db = torch.nn.functional.normalize(model.spot_projection(torch.from_numpy(target[train])), dim=-1)
        sim = (img @ db.T).numpy()
    expect = np.stack([target[train[np.argsort(-s)[:5]]].mean(0) for s in sim])
    np.testing.assert_allclose(model.predict(b).numpy(), expect, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- model-specific facts
def test_sepal_neighbourhood_graph_and_residual(data224):
    ad, patches = data224
    model = small_model("sepal", ad.n_vars)
    target = ad.layers["c_d_deltas"]
    model.prepare(make_ctx(ad, patches, target))
    # an interior spot of a hex grid: itself + 6 neighbours; each ring node touches the centre and 2 ring nodes
    grid = ad.obs[["array_row", "array_col"]].to_numpy()
    centre = int(np.flatnonzero((grid[:, 0] == 2) & (grid[:, 1] == 2) & (ad.obs["slide_id"] == "S0"))[0])
    nb, valid, adj = model.neighbourhood(torch.tensor([centre]))
    assert valid.sum() == 7 and nb[0, 0] == centre
    deg = adj[0].sum(1)
    assert deg[0] == 6 and (deg[1:7] == 3).all() and (adj[0] == adj[0].T).all()
    # a zero correction head returns exactly the frozen stage-1 prediction
    torch.nn.init.zeros_(model.head.weight)
    torch.nn.init.zeros_(model.head.bias)
    b = batch_of(ad, patches, np.array([centre, 1]), target)
    with torch.no_grad():
        stage1 = model.stage1.eval()({"image": b["image"]})
        torch.testing.assert_close(model.eval()(b), stage1, rtol=1e-4, atol=1e-5)
    assert not any(p.requires_grad for p in model.stage1.parameters())


def test_zinb_nll_matches_the_mixture_likelihood():
    from spared_lib.models.hist2st import zinb_nll

    x = torch.tensor([[0.0, 3.0], [7.0, 0.0]])
    mean = torch.tensor([[2.0, 4.0], [5.0, 1.5]])
    disp = torch.tensor([[1.5, 3.0], [0.7, 2.0]])
    pi = torch.tensor([[0.2, 0.1], [0.3, 0.6]])
    sf = torch.tensor([1.0, 2.0])
    mu = mean * sf[:, None]
    nb = torch.distributions.NegativeBinomial(total_count=disp, probs=mu / (mu + disp))
    lik = torch.where(x == 0, pi + (1 - pi) * nb.log_prob(x).exp(), (1 - pi) * nb.log_prob(x).exp())
    torch.testing.assert_close(zinb_nll(x, mean, disp, pi, sf), -lik.log().mean(), rtol=1e-4, atol=1e-4)


def test_slide_models_reject_positions_beyond_their_embeddings(data):
    ad, patches = data
    model = small_model("histogene", ad.n_vars)
    b = batch_of(ad, patches, np.arange(6), ad.layers["c_d_log1p"])
    b["grid"] = b["grid"] + 500
    with pytest.raises(ValueError, match="n_pos"):
        model(b)


# --------------------------------------------------------------------------- training through fit
@pytest.mark.parametrize("name", CONTEXT_MODELS)
def test_short_fit_reduces_training_loss(name, request, tmp_path):
    from spared_lib.training import fit

    ad, patches = data_for(name, request)
    torch.manual_seed(0)
    kw = {}
    if name == "sepal":
        kw["stage1"] = build_model("vit_b_delta", ad.n_vars, size="small", verbose=False)
    lr = {"bleep": 1e-3, "hist2st": 1e-3, "histogene": 1e-3, "egn": 1e-3, "eggn": 3e-3, "sepal": 3e-3}[name]
    steps = 8
    # batch = all 50 training spots: full-batch steps, so the loss falls step by step
    res = fit(name, ad, "c_d_log1p", steps=steps, lr=lr, patches=patches, batch_size=50, size="small",
              pretrained=None, device="cpu", out_dir=tmp_path, val_every=steps, progress=False, verbose=False,
              model_kwargs=kw)
    loss = res.history["train_loss"].dropna().to_numpy()
    assert len(loss) == steps
    assert loss[-3:].mean() < loss[:3].mean(), loss
    assert np.isfinite(res.metrics["MSE"]) and res.predictions.shape == (len(res.eval_index), ad.n_vars)


# --------------------------------------------------------------------------- issue 14
@pytest.mark.parametrize("name", ["histogene", "hist2st", "egn", "eggn"])
def test_output_bias_starts_at_the_train_mean_over_all_entries(name, data):
    """§1: an untrained model's first prediction sits at the train mean (all training entries)."""
    ad, patches = data
    target = ad.layers["c_d_log1p"] + 8.0  # log2 TPM-like level
    train = np.flatnonzero(ad.obs["split"] == "train")
    mean = target[train].mean(0)
    assert not np.allclose(mean, (target * ad.layers["mask"])[train].sum(0) / ad.layers["mask"][train].sum(0))
    firsts = {}
    for init in ("mean", None):
        torch.manual_seed(0)
        model = build_model(name, ad.n_vars, size="small", init_bias=init)
        model.prepare(make_ctx(ad, patches, target))
        if init == "mean":
            np.testing.assert_allclose(model.output_layer().bias.detach().numpy(), mean, rtol=1e-5)
        rows = np.arange(25) if model.batching == "slide" else train[:12]
        model.eval()
        with torch.no_grad():
            firsts[init] = model(batch_of(ad, patches, rows, target)).numpy().mean(0)
    assert np.abs(firsts["mean"] - mean).max() < 2.0
    assert np.abs(firsts[None] - mean).min() > 5.0


def test_bleep_and_sepal_have_no_output_bias_to_initialise():
    assert build_model("bleep", 4, size="small").output_layer() is None
    sepal = small_model("sepal", 4)
    assert sepal.init_bias is None and sepal.uses_deltas
    with pytest.raises(TypeError, match="init_bias"):
        build_model("bleep", 4, size="small", init_bias="mean")


def test_sepal_stage2_is_the_published_network():
    """§2: node features = 768-d ViT embedding ‖ 768-d position code (1536 → 512), GCN 512 → 256 → 128,
    SAGPooling, head 128 → G."""
    with torch.device("meta"):
        m = build_model("sepal", 128)
    assert m.emb_dim == 768 and m.pre.in_features == 1536 and m.pre.out_features == 512
    assert (m.gcn1.lin.out_features, m.gcn2.lin.out_features) == (256, 128)
    assert (m.head.in_features, m.head.out_features) == (128, 128)
    stage2 = sum(p.numel() for n, p in m.named_parameters() if not n.startswith("stage1."))
    assert stage2 == 967_937 and MODELS["sepal"].original_params == 86_865_025


def test_sag_pooling_keeps_the_top_node_scaled_by_tanh_of_its_score():
    from spared_lib.models.sepal import SAGPool

    torch.manual_seed(0)
    pool = SAGPool(5)
    x = torch.randn(3, 4, 5)
    adj = torch.rand(3, 4, 4) > 0.5
    adj = (adj | adj.transpose(1, 2)) & ~torch.eye(4, dtype=torch.bool)
    valid = torch.tensor([[True] * 4, [True, True, True, False], [True, False, False, False]])
    out = pool(x, adj, valid)
    for b in range(3):  # reference: PyG's GraphConv score, top-1 real node, times tanh(score)
        a = adj[b].float() * valid[b].float()[None] * valid[b].float()[:, None]
        score = (pool.lin_rel(a @ x[b]) + pool.lin_root(x[b])).squeeze(-1)
        score[~valid[b]] = -float("inf")
        top = int(score.argmax())
        torch.testing.assert_close(out[b], x[b, top] * torch.tanh(score[top]))


def test_sepal_reads_embeddings_and_ends_in_elu(data224):
    ad, patches = data224
    model = small_model("sepal", ad.n_vars)
    target = ad.layers["c_d_deltas"]
    model.prepare(make_ctx(ad, patches, target))
    assert model.embeddings.shape == (ad.n_obs, model.emb_dim)  # the ViT's features, head = identity
    with torch.no_grad():
        emb = model.stage1.features(normalise(patches[:3]))
    torch.testing.assert_close(model.embeddings[:3], emb, rtol=1e-4, atol=1e-4)
    x, valid, _ = model.node_features(torch.tensor([5]))
    assert x.shape[-1] == 2 * model.emb_dim
    torch.testing.assert_close(x[0, 0, : model.emb_dim], model.embeddings[5])
    torch.nn.init.constant_(model.head.bias, -50.0)  # ELU saturates at -1: the correction is bounded below
    b = batch_of(ad, patches, np.arange(6), target)
    with torch.no_grad():
        corr = model.eval()(b) - model.stage1_pred[:6]
    torch.testing.assert_close(corr, torch.full_like(corr, -1.0), atol=1e-4, rtol=0)


def test_eggn_window_graph_is_the_originals_binned_radius_graph():
    """§6: Yan98/EGN v2 links spots whose 256-px cells are at most sqrt(2) apart (at most 5)."""
    model = build_model("eggn", 4, size="small")
    assert model.radius == pytest.approx(math.sqrt(2)) and model.cell_px == 256
    rng = np.random.default_rng(0)
    xy = torch.tensor(rng.uniform(0, 2000, (60, 2)), dtype=torch.float32)
    slide = torch.tensor(np.repeat([0, 1], 30))
    e = model.window_edges(xy, slide)
    cell = torch.floor(xy / 256)
    d = torch.cdist(cell, cell)
    for i in range(60):  # reference, loop fine in a test
        cand = [j for j in range(60) if j != i and slide[j] == slide[i] and d[i, j] <= math.sqrt(2) + 1e-6]
        got = e[0][e[1] == i].tolist()
        assert len(got) == min(5, len(cand)) and set(got) <= set(cand)
        if len(cand) <= 5:
            assert sorted(got) == sorted(cand)
    # 300 px apart (two cells): no edge, whatever a 1000-px radius would say
    far = model.window_edges(torch.tensor([[0.0, 0.0], [520.0, 0.0]]), torch.zeros(2, dtype=torch.long))
    assert far.shape[1] == 0


def test_egn_uses_euclidean_and_eggn_l1_exemplars(data, monkeypatch):
    """§3: Yan98/EGN v1 build_exemplar.py uses cdist(p=2), v2 cdist(p=1); other slides only."""
    from spared_lib.models import egn as egn_module

    q, a, b = [0.0, 0.0], [1.0, 1.0], [1.8, 0.0]  # L2-nearest: a; L1-nearest: b
    feats = np.array([q, a, b])
    slide = np.array([0, 1, 1])
    assert egn_module.exemplar_table(feats, slide, np.array([1, 2]), k=1, p=2.0)[0, 0] == 0
    assert egn_module.exemplar_table(feats, slide, np.array([1, 2]), k=1, p=1.0)[0, 0] == 1
    seen = {}
    real = egn_module.exemplar_table

    def spy(*args, **kw):
        seen[kw.get("p")] = True
        return real(*args, **kw)

    monkeypatch.setattr(egn_module, "exemplar_table", spy)
    ad, patches = data
    for name in ("egn", "eggn"):
        small_model(name, ad.n_vars).prepare(make_ctx(ad, patches, ad.layers["c_d_log1p"]))
    assert set(seen) == {1.0, 2.0}


def test_exemplars_of_training_spots_never_come_from_their_own_slide(data):
    ad, patches = data
    slide = ad.obs["slide_id"].cat.codes.to_numpy()
    train = np.flatnonzero(ad.obs["split"] == "train")
    assert len(np.unique(slide[train])) == 2
    for name in ("egn", "eggn"):
        model = small_model(name, ad.n_vars)
        model.prepare(make_ctx(ad, patches, ad.layers["c_d_log1p"]))
        rows = model.bank.train_index[model.bank.table].numpy()  # (n_obs, k) rows of adata
        assert (slide[rows[train]] != slide[train][:, None]).all()
        assert np.isin(rows, train).all()


@pytest.mark.parametrize("name", ["histogene", "hist2st", "eggn"])
def test_slide_models_take_whole_slides_by_default(name, data):
    """§4: the originals train one whole slide per batch; crops only where the trainer must."""
    from spared_lib.training.data import SlideDataset, read_targets, spot_meta

    ad, patches = data
    model = small_model(name, ad.n_vars)
    assert model.batching == "slide" and model.max_spots is None
    train = np.flatnonzero(ad.obs["split"] == "train")
    ds = SlideDataset(patches, read_targets(ad, "c_d_log1p", False), spot_meta(ad), train, ring(ad),
                      model.max_spots)
    assert len(ds) == 2 and sorted(len(c) for c in ds.crops) == [25, 25]
    assert build_model(name, ad.n_vars, size="small", max_spots=10).max_spots == 10


@pytest.mark.parametrize("name", ["egn", "eggn", "sepal"])
def test_frozen_parts_need_no_eval_mode(name, data, data224):
    """The trainer never has to keep a module in eval mode (Lightning warns about it): EGN's and EGGN's
    frozen ResNet uses frozen batch norms, SEPAL never calls its frozen stage 1 while training."""
    ad, patches = data224 if name == "sepal" else data
    model = small_model(name, ad.n_vars)
    model.prepare(make_ctx(ad, patches, target_of(model, ad)))
    model.train()
    assert all(m.training for m in model.modules())
    if name != "sepal":
        x = normalise(patches[:4])
        before = model.encoder(x)
        model.encoder(normalise(patches[4:20]))  # a training-mode pass changes no statistics
        torch.testing.assert_close(model.encoder(x), before)
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.encoder.modules())
