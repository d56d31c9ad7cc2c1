"""The one weights loader (issue 12 §3, issue 13 §1): what `pretrained` means in every builder, the
ImageNet weights of every model that has them, served from a loopback mirror in torchvision's exact
format, the mirror's checksum file, and our own checkpoints."""
from __future__ import annotations

import functools
import http.server
import warnings

import numpy as np
import pytest
import torch

from localhttp import serve
from spared_lib.models import MODELS, build_model, count_parameters
from spared_lib.models import backbones

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: Every model whose original starts from ImageNet weights, the size to build it at (the small EGN
#: and EGGN keep their ResNet-18), the architecture and where its backbone sits in the model.
USERS = {
    "shufflenet": ("paper", "shufflenet_v2_x0_5", "backbone"),
    "vit_b": ("paper", "vit_b_16", "backbone"),
    "vit_b_delta": ("paper", "vit_b_16", "backbone"),
    "stnet": ("paper", "densenet121", "backbone"),
    "egn": ("small", "resnet18", "encoder.backbone"),
    "eggn": ("small", "resnet18", "encoder.backbone"),
    "bleep": ("paper", "resnet50", "image_encoder"),
    "sepal": ("paper", "vit_b_16", "stage1.backbone"),
}


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    """A folder of torchvision-format state dicts (random values) served on 127.0.0.1."""
    folder = backbones.write_imagenet_mirror(tmp_path_factory.mktemp("mirror"),
                                             archs=sorted({a for _, a, _ in USERS.values()}), seed=3)
    with serve(functools.partial(_QuietHandler, directory=str(folder))) as url:
        yield folder, url


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torch hub cache for the test."""
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    return tmp_path / "hub"


def _served(folder, arch):
    state = torch.load(folder / backbones._file_name(arch), map_location="cpu", weights_only=True)
    return backbones._clean_state_dict(state, backbones._ARCHS[arch][1])


def test_mirror_files_have_torchvisions_names_keys_and_shapes(mirror):
    folder, _ = mirror
    import torchvision

    sums = dict(line.split()[::-1] for line in (folder / backbones.CHECKSUM_FILE).read_text().splitlines())
    for arch in ("shufflenet_v2_x0_5", "densenet121", "resnet18"):
        name = backbones.IMAGENET_URLS[arch].rsplit("/", 1)[1]
        assert name in sums and (folder / name).is_file()
        state = torch.load(folder / name, weights_only=True)
        ref = getattr(torchvision.models, arch)(weights=None).state_dict()
        if arch == "densenet121":  # the published file's old key style, which torchvision renames on load
            assert any(".norm.1." in k for k in state) and not any(".norm1." in k for k in state)
            assert not any(k.endswith("num_batches_tracked") for k in state)
            ref = {k: v for k, v in ref.items() if not k.endswith("num_batches_tracked")}
        cleaned = backbones._clean_state_dict(state, "__none__")
        assert set(cleaned) == set(ref) and all(cleaned[k].shape == ref[k].shape for k in ref)


@pytest.mark.parametrize("name", list(USERS))
def test_imagenet_weights_from_the_mirror_reach_every_model(name, mirror, hub, monkeypatch, caplog):
    folder, url = mirror
    size, arch, where = USERS[name]
    monkeypatch.setenv(backbones.MIRROR_ENV, url)
    with warnings.catch_warnings(), caplog.at_level("INFO", logger="spared_lib.models"):
        warnings.simplefilter("ignore")  # SEPAL warns that its stage 1 is untrained
        model = build_model(name, 8, pretrained="imagenet", size=size)
    net = model.get_submodule(where)
    # batch-norm step counters carry no weights (the 2017 DenseNet file predates them; EGN's and
    # EGGN's frozen batch norms drop them)
    ref = {k: v for k, v in _served(folder, arch).items() if not k.endswith("num_batches_tracked")}
    got = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert set(ref) == set(got), set(ref) ^ set(got)
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    if name != "sepal":  # SEPAL builds its untrained stage 1 quietly
        assert "from the mirror" in caplog.text and "not torchvision's published file" in caplog.text
    # downloaded into the mirror's own cache folder, never under torchvision's cache name
    assert (hub / "checkpoints" / "mirror").is_dir()
    assert not (hub / "checkpoints" / backbones._file_name(arch)).exists()


def test_a_file_that_fails_the_mirrors_checksum_is_rejected_and_not_kept(tmp_path, hub, monkeypatch):
    folder = backbones.write_imagenet_mirror(tmp_path / "m", archs=["shufflenet_v2_x0_5"])
    name = backbones._file_name("shufflenet_v2_x0_5")
    with open(folder / name, "ab") as f:  # corrupted after the checksum was published
        f.write(b"x")
    with serve(functools.partial(_QuietHandler, directory=str(folder))) as url:
        monkeypatch.setenv(backbones.MIRROR_ENV, url)
        with pytest.raises(backbones.WeightsUnavailableError, match="does not match .*SHA256SUMS"):
            build_model("shufflenet", 4, pretrained="imagenet")
    left = list((hub / "checkpoints").rglob("*")) if (hub / "checkpoints").exists() else []
    assert not [p for p in left if p.is_file()], left


def test_a_corrupted_cached_copy_is_fetched_again(tmp_path, hub, monkeypatch):
    folder = backbones.write_imagenet_mirror(tmp_path / "m", archs=["shufflenet_v2_x0_5"])
    monkeypatch.setenv(backbones.MIRROR_ENV, folder.as_uri())  # a file:// mirror works too
    first, _ = backbones.imagenet_state_dict("shufflenet_v2_x0_5", progress=False)
    cached = next((hub / "checkpoints" / "mirror").rglob("*.pth"))
    cached.write_bytes(b"garbage")
    again, source = backbones.imagenet_state_dict("shufflenet_v2_x0_5", progress=False)
    assert "sha256 checked" in source
    assert all(torch.equal(first[k], again[k]) for k in first)


def test_a_mirror_without_checksum_file_or_entry_is_a_clear_error(tmp_path, hub, monkeypatch):
    folder = backbones.write_imagenet_mirror(tmp_path / "m", archs=["shufflenet_v2_x0_5"])
    monkeypatch.setenv(backbones.MIRROR_ENV, folder.as_uri())
    with pytest.raises(backbones.WeightsUnavailableError, match="no entry for resnet18"):
        backbones.imagenet_state_dict("resnet18")
    (folder / backbones.CHECKSUM_FILE).unlink()
    with pytest.raises(backbones.WeightsUnavailableError, match="must publish SHA256SUMS"):
        backbones.imagenet_state_dict("shufflenet_v2_x0_5")


def test_offline_torchvision_download_is_a_clear_error(hub, monkeypatch):
    import socket

    monkeypatch.delenv(backbones.MIRROR_ENV, raising=False)
    with socket.socket() as s:  # a port nobody listens on: the connection is refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/shufflenetv2_x0.5-f707e7126e.pth"
    monkeypatch.setitem(backbones.IMAGENET_URLS, "shufflenet_v2_x0_5", url)
    with pytest.raises(backbones.WeightsUnavailableError, match=f"could not download.*{backbones.MIRROR_ENV}"):
        build_model("shufflenet", 4, pretrained="imagenet")


# --------------------------------------------------------------------------- what `pretrained` means
@pytest.mark.parametrize("name", ["histogene", "hist2st"])
def test_imagenet_for_models_without_pretrained_parts_trains_from_scratch_with_one_warning(name, monkeypatch):
    from spared_lib.models import histogene

    monkeypatch.setattr(histogene, "_WARNED", set())
    with pytest.warns(UserWarning, match="no ImageNet-pretrained part.*from scratch"):
        m = build_model(name, 6, pretrained="imagenet", size="small")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once, not at every build
        build_model(name, 6, pretrained="imagenet", size="small")
    torch.manual_seed(0)
    a = build_model(name, 6, pretrained=None, size="small")
    assert count_parameters(a) == count_parameters(m)


@pytest.mark.parametrize("bad, error", [("ImageNet", ValueError), ("no/such/file.ckpt", FileNotFoundError),
                                        (True, TypeError)])
def test_bad_pretrained_values_are_clear_errors(bad, error):
    for name in ("shufflenet", "histogene", "bleep"):
        with pytest.raises(error, match="pretrained"):
            build_model(name, 4, pretrained=bad, size="small")


def _random_like(model):
    torch.manual_seed(7)
    return {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", ["shufflenet", "histogene", "egn", "sepal"])
@pytest.mark.parametrize("layout", ["fit", "state_dict"])
def test_a_path_is_a_checkpoint_of_our_own_model(name, layout, tmp_path):
    kw = {"stage1": build_model("vit_b_delta", 5, size="small", verbose=False)} if name == "sepal" else {}
    src = build_model(name, 5, size="small", **kw)
    state = _random_like(src)
    state["target_offset"] = torch.arange(5.0)  # fit() stores the Δ offset with the weights
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}, "epoch": 0} if layout == "fit" else state,
               path)
    loaded = build_model(name, 5, pretrained=str(path), size="small")
    got = loaded.state_dict()
    assert all(torch.equal(got[k], state[k]) for k in state)
    with pytest.raises(ValueError, match="does not fit"):
        build_model(name, 7, pretrained=str(path), size="small")  # another number of genes


def test_sepal_stage1_comes_from_stage1_not_from_pretrained(tmp_path):
    vit = build_model("vit_b_delta", 5, size="small", verbose=False)
    state = _random_like(vit)
    path = tmp_path / "vit.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}}, path)
    sep = build_model("sepal", 5, size="small", stage1=str(path))
    assert all(torch.equal(sep.stage1.state_dict()[k], state[k]) for k in state)
    assert not any(p.requires_grad for p in sep.stage1.parameters())
    with pytest.raises(ValueError, match="stage1="):
        build_model("sepal", 5, size="small", pretrained=str(path))


def test_every_registered_builder_accepts_the_three_kinds(tmp_path):
    """None and 'imagenet' build (offline: the models with weights are covered above), a path loads."""
    for name in MODELS:
        kw = {"stage1": build_model("vit_b_delta", 3, size="small", verbose=False)} if name == "sepal" else {}
        extra = {}
        m = build_model(name, 3, pretrained=None, size="small", **kw, **extra)
        path = tmp_path / f"{name}.pt"
        torch.save(m.state_dict(), path)
        again = build_model(name, 3, pretrained=path, size="small", **kw, **extra)
        assert all(torch.equal(again.state_dict()[k], v) for k, v in m.state_dict().items()), name
        np.testing.assert_equal(count_parameters(again), count_parameters(m))
        build_model(name, 3, size="small", verbose=False, **kw)  # every builder takes verbose=
