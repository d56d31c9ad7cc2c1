"""The model registry and the patch models (ShuffleNet, ViT-B, ViT-B+Δ, ST-Net) and their weights."""
import hashlib
import importlib
import importlib.util
import socket

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


def test_stnet_prepare_sets_bias_to_masked_train_mean():
    m = build_model("stnet", 3, size="small", verbose=False)
    target = np.array([[1.0, 2.0, 5.0], [3.0, 4.0, 7.0], [100.0, 100.0, 100.0]], np.float32)
    mask = np.array([[True, True, False], [True, False, False], [True, True, True]])
    ctx = FitContext(adata=None, patches=None, target=target, mask=mask, train_index=np.array([0, 1]),
                     neighbors=None, device="cpu", encode=None)
    m.prepare(ctx)
    np.testing.assert_allclose(m.head.bias.detach().numpy(), [2.0, 2.0, 0.0])  # row 2 is not training
    out = m({"image": torch.randn(2, 3, 32, 32)}).detach().numpy()
    np.testing.assert_allclose(out, [[2.0, 2.0, 0.0]] * 2)


@pytest.mark.parametrize("name", ["shufflenet", "stnet", "vit_b"])
def test_paper_size_parameter_counts_match_registry(name):
    m = build_model(name, 128, verbose=False)
    assert count_parameters(m) == MODELS[name].original_params
    # and they are the torchvision networks themselves, not re-writes
    tv = {"shufflenet": torchvision.models.ShuffleNetV2, "stnet": torchvision.models.DenseNet,
          "vit_b": torchvision.models.VisionTransformer}[name]
    assert isinstance(m.backbone, tv)


def _save_torchvision_state(tmp_path, name="shufflenetv2_x0.5"):
    torch.manual_seed(1)
    net = torchvision.models.shufflenet_v2_x0_5()
    path = tmp_path / "plain.pth"
    torch.save(net.state_dict(), path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    hashed = tmp_path / f"{name}-{digest[:10]}.pth"  # torch hub checks this hash prefix
    path.rename(hashed)
    return net, hashed


def test_local_state_dict_is_loaded(tmp_path, capsys):
    net, path = _save_torchvision_state(tmp_path)
    m = build_model("shufflenet", 4, pretrained=str(path))
    assert "local weights" in capsys.readouterr().out
    ref = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    got = m.backbone.state_dict()
    assert set(ref) == set(got)
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    with pytest.raises(FileNotFoundError, match="no such file"):
        build_model("shufflenet", 4, pretrained=str(tmp_path / "nope.pth"))
    with pytest.raises(ValueError, match="do not fit densenet121"):
        build_model("stnet", 4, pretrained=str(path), verbose=False)


def test_imagenet_weights_download_through_torch_hub(tmp_path, monkeypatch, capsys):
    net, path = _save_torchvision_state(tmp_path)
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "_hub_dir", str(hub))
    monkeypatch.setitem(backbones.IMAGENET_URLS, "shufflenet_v2_x0_5", path.as_uri())
    m = build_model("shufflenet", 4, pretrained="imagenet")
    assert "ImageNet weights from torchvision" in capsys.readouterr().out
    assert (hub / "checkpoints" / path.name).is_file()  # cached where torch hub keeps weights
    assert torch.equal(m.backbone.conv1[0].weight, net.conv1[0].weight)
    with pytest.raises(ValueError, match="only for the paper-size"):
        build_model("shufflenet", 4, pretrained="imagenet", size="small")


def test_offline_imagenet_download_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "empty_hub"))
    with socket.socket() as s:  # a port nobody listens on: the connection is refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/shufflenetv2_x0.5-f707e7126e.pth"
    monkeypatch.setitem(backbones.IMAGENET_URLS, "shufflenet_v2_x0_5", url)
    with pytest.raises(backbones.WeightsUnavailableError, match="could not download.*pretrained=None"):
        build_model("shufflenet", 4, pretrained="imagenet")
    assert not (tmp_path / "empty_hub" / "checkpoints" / "shufflenetv2_x0.5-f707e7126e.pth").exists()
