"""The model registry and the patch models (ShuffleNet, ViT-B, ViT-B+Δ, ST-Net) and their weights."""
import importlib
import importlib.util

import numpy as np
import pytest
import torch
import torchvision

from spared_lib.models import MODELS, PATCH_MODELS, ModelEntry, build_model, count_parameters
from spared_lib.models import backbones
from spared_lib.models.base import FitContext, SpotModel


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_registry_lists_the_ten_models():
    assert set(MODELS) == {"shufflenet", "vit_b", "vit_b_delta", "stnet", "histogene", "hist2st", "egn",
                           "eggn", "bleep", "sepal"}
    assert all(e.lr > 0 and e.display for e in MODELS.values())
    with pytest.raises(KeyError, match="valid names: stnet, histogene"):
        build_model("resnet", 32)
    with pytest.raises(ValueError, match="size"):
        build_model("shufflenet", 32, size="tiny")
    for name, entry in MODELS.items():  # registry counts agree with the modules' own accounting
        module = importlib.import_module(entry.module)
        if hasattr(module, "original_n_params"):
            assert module.original_n_params(128) == entry.original_params, name


def test_registered_modules_exist_or_raise_a_clear_import_error(monkeypatch):
    for name, entry in MODELS.items():
        assert importlib.util.find_spec(entry.module) is not None, (name, entry.module)
    monkeypatch.setitem(MODELS, "ghost", ModelEntry("spared_lib.models.ghost", "Ghost", None, 1e-4))
    with pytest.raises(ImportError, match="registered but its module spared_lib.models.ghost"):
        build_model("ghost", 32)


@pytest.mark.parametrize("name", PATCH_MODELS)
def test_small_models_forward_and_backward(name):
    m = build_model(name, 7, size="small", verbose=False, image_size=32)
    assert isinstance(m, SpotModel) and m.batching == "spot"
    x = torch.randn(3, 3, 32, 32)
    out = m({"image": x})
    assert out.shape == (3, 7)
    loss = m.loss({"target": torch.zeros(3, 7), "mask": torch.ones(3, 7, dtype=torch.bool)}, out)
    loss.backward()
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)


def test_model_settings_follow_the_originals():
    s = build_model("stnet", 5, size="small", verbose=False)
    assert s.test_time_augmentation and s.optimizer == "sgd" and not s.uses_deltas
    assert torch.count_nonzero(s.head.weight) == 0 and torch.count_nonzero(s.head.bias) == 0
    d = build_model("vit_b_delta", 5, size="small", verbose=False)
    assert d.uses_deltas and not d.test_time_augmentation
    assert not build_model("vit_b", 5, size="small", verbose=False).uses_deltas
    no_tta = build_model("stnet", 5, size="small", verbose=False, test_time_augmentation=False)
    assert not no_tta.test_time_augmentation
    with pytest.raises(TypeError, match="unexpected keyword"):
        build_model("stnet", 5, size="small", verbose=False, depth=3)


def _ctx(target, mask, train):
    return FitContext(adata=None, patches=None, target=target, mask=mask, train_index=np.asarray(train),
                      neighbors=None, device="cpu", encode=None)


def test_stnet_starts_at_the_train_mean_over_all_entries():
    """ST-Net's original (bryanhe/ST-Net run_spatial.py): zero weights, bias = mean over all training spots."""
    m = build_model("stnet", 3, size="small", verbose=False)
    target = np.array([[1.0, 2.0, 5.0], [3.0, 4.0, 7.0], [100.0, 100.0, 100.0]], np.float32)
    mask = np.array([[True, True, False], [True, False, False], [True, True, True]])
    m.prepare(_ctx(target, mask, [0, 1]))
    # all training entries (the loss covers them), not only the observed ones; row 2 is not training
    np.testing.assert_allclose(m.head.bias.detach().numpy(), [2.0, 3.0, 6.0])
    out = m({"image": torch.randn(2, 3, 32, 32)}).detach().numpy()
    np.testing.assert_allclose(out, [[2.0, 3.0, 6.0]] * 2)  # an untrained ST-Net predicts the train mean


@pytest.mark.parametrize("name", ["shufflenet", "vit_b"])
def test_output_bias_starts_at_the_train_mean(name):
    rng = np.random.default_rng(0)
    target = (10.0 + rng.normal(0, 1, (40, 5))).astype(np.float32)  # log2 TPM-like level
    mask = rng.random((40, 5)) > 0.4
    train = np.arange(30)
    img = torch.randn(8, 3, 32, 32)
    m = build_model(name, 5, size="small", verbose=False, image_size=32)
    assert m.init_bias == "mean"
    m.prepare(_ctx(target, mask, train))
    np.testing.assert_allclose(m.head.bias.detach().numpy(), target[train].mean(0), rtol=1e-6)
    with torch.no_grad():
        first = m({"image": img}).numpy()
    # the first prediction sits at the data's level, not near 0
    assert np.abs(first.mean(0) - target[train].mean(0)).max() < 1.5
    plain = build_model(name, 5, size="small", verbose=False, image_size=32, init_bias=None)
    plain.prepare(_ctx(target, mask, train))
    with torch.no_grad():
        assert np.abs(plain({"image": img}).numpy().mean(0) - target[train].mean(0)).min() > 5
    with pytest.raises(ValueError, match="init_bias"):
        build_model(name, 5, size="small", verbose=False, init_bias="median")


def test_delta_models_keep_plain_init():
    m = build_model("vit_b_delta", 4, size="small", verbose=False)
    assert m.init_bias is None
    before = m.head.bias.detach().clone()
    m.prepare(_ctx(np.full((3, 4), 9.0, np.float32), np.ones((3, 4), bool), [0, 1]))
    assert torch.equal(m.head.bias, before)


@pytest.mark.parametrize("name", ["shufflenet", "stnet", "vit_b"])
def test_paper_size_parameter_counts_match_registry(name):
    m = build_model(name, 128, verbose=False)
    assert count_parameters(m) == MODELS[name].original_params
    # and they are the torchvision networks themselves, not re-writes
    tv = {"shufflenet": torchvision.models.ShuffleNetV2, "stnet": torchvision.models.DenseNet,
          "vit_b": torchvision.models.VisionTransformer}[name]
    assert isinstance(m.backbone, tv)


def test_imagenet_weights_download_through_torch_hub(tmp_path, monkeypatch, caplog):
    """Without a mirror: torchvision's URL through torch hub (its cache, its hash-prefix check)."""
    import hashlib

    torch.manual_seed(1)
    net = torchvision.models.shufflenet_v2_x0_5()
    plain = tmp_path / "plain.pth"
    torch.save(net.state_dict(), plain)
    path = tmp_path / f"shufflenetv2_x0.5-{hashlib.sha256(plain.read_bytes()).hexdigest()[:10]}.pth"
    plain.rename(path)
    hub = tmp_path / "hub"
    monkeypatch.delenv(backbones.MIRROR_ENV, raising=False)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(hub))
    monkeypatch.setitem(backbones.IMAGENET_URLS, "shufflenet_v2_x0_5", path.as_uri())
    with caplog.at_level("INFO", logger="spared_lib.models"):
        m = build_model("shufflenet", 4, pretrained="imagenet")
    assert "ImageNet weights from torchvision" in caplog.text
    assert (hub / "checkpoints" / path.name).is_file()  # cached where torch hub keeps weights
    assert torch.equal(m.backbone.conv1[0].weight, net.conv1[0].weight)
    with pytest.raises(ValueError, match="only for the paper-size"):
        build_model("vit_b", 4, pretrained="imagenet", size="small")
