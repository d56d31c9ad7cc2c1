"""Image backbones from torchvision and how their weights are chosen.

Introduced in ``notebooks/04_patch_models.py``.

``pretrained`` means the same thing everywhere in :mod:`spared_lib.models`:

``'imagenet'``
    torchvision's ImageNet-1k weights, downloaded once into torch hub's cache
    (``torch.hub.get_dir()/checkpoints``). This is what a Colab run uses. When the
    download fails (offline machine, firewall) a :class:`WeightsUnavailableError`
    says which file from where and how to provide it by hand; we never fall back to
    random weights silently.
a path
    A local state dict in torchvision's format (e.g. the ``.pth`` file torchvision
    would download). The classifier (``fc``/``classifier``/``heads``) is ignored.
``None``
    Random initialisation (what the fast runs and the tests use).

The choice is printed, so a notebook's output records which weights a model had.
"""
from __future__ import annotations

import re
import urllib.error
from pathlib import Path

import torch
import torchvision
from torch import nn

#: torchvision builder, its ImageNet weights enum, and the attribute holding the classifier.
_ARCHS = {
    "shufflenet_v2_x0_5": ("shufflenet_v2_x0_5", "ShuffleNet_V2_X0_5_Weights", "fc"),
    "vit_b_16": ("vit_b_16", "ViT_B_16_Weights", "heads"),
    "densenet121": ("densenet121", "DenseNet121_Weights", "classifier"),
}

#: Where ImageNet weights are fetched from (torchvision's own URLs; the file name carries
#: the hash prefix that ``check_hash`` verifies). Tests repoint these to an unreachable port.
IMAGENET_URLS = {
    arch: getattr(torchvision.models, enum).IMAGENET1K_V1.url for arch, (_, enum, _) in _ARCHS.items()
}


class WeightsUnavailableError(RuntimeError):
    """ImageNet weights were asked for but could not be downloaded."""


def _small(arch: str, image_size: int = 224) -> nn.Module:
    """CPU-friendly variants for fast runs (same family, far fewer parameters)."""
    if arch == "vit_b_16":
        from torchvision.models.vision_transformer import VisionTransformer

        return VisionTransformer(image_size=image_size, patch_size=16, num_layers=2, num_heads=4,
                                 hidden_dim=128, mlp_dim=256)
    if arch == "densenet121":
        from torchvision.models.densenet import DenseNet

        return DenseNet(growth_rate=12, block_config=(2, 2, 2, 2), num_init_features=32)
    # ShuffleNetV2 x0.5 is already small (0.35 M backbone parameters): keep it.
    return getattr(torchvision.models, _ARCHS[arch][0])(weights=None)


# Old torchvision DenseNet checkpoints name layers 'norm.1' instead of 'norm1'.
_OLD_DENSENET_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12]\.(?:weight|bias|running_mean|running_var))$")


def _clean_state_dict(state: dict, head_attr: str) -> dict:
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    out = {}
    for k, v in state.items():
        if k.startswith(head_attr + "."):
            continue  # the ImageNet classifier is replaced by our regression head
        m = _OLD_DENSENET_KEY.match(k)
        out[m.group(1) + m.group(2) if m else k] = v
    return out


def _download(arch: str) -> dict:
    url = IMAGENET_URLS[arch]
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    try:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=True, check_hash=True)
    except (urllib.error.URLError, OSError, ConnectionError, TimeoutError, RuntimeError) as err:
        raise WeightsUnavailableError(
            f"could not download the ImageNet weights of {arch} from {url} ({type(err).__name__}: {err}). "
            f"This machine may be offline. Either download that file by hand into {cache}/ "
            f"(torch hub's cache, set by TORCH_HOME), pass pretrained='<path to the .pth file>', "
            "or pass pretrained=None for random initialisation."
        ) from err


def build_backbone(arch: str, pretrained: str | Path | None = None, size: str = "paper",
                   verbose: bool = True, image_size: int = 224) -> tuple[nn.Module, int]:
    """A torchvision image backbone that maps ``(B, 3, 224, 224)`` to ``(B, D)`` features.

    Parameters
    ----------
    arch
        ``'shufflenet_v2_x0_5'``, ``'vit_b_16'`` or ``'densenet121'``.
    pretrained
        ``'imagenet'``, a path to a torchvision-format state dict, or ``None`` (see the
        module docstring).
    size
        ``'paper'``: the original architecture; ``'small'``: a CPU-friendly variant
        (ViT with 2 layers of width 128; DenseNet with 4 blocks of 2 layers), random
        init or a local state dict only.
    verbose
        Print which weights were used.
    image_size
        Input side length; only the ViT fixes it (its position embedding). Patches are
        224 px (SPEC §2.11); tests use smaller ones to stay fast on a CPU.

    Returns
    -------
    (module, feature_dim)

    Notes
    -----
    Introduced in ``notebooks/04_patch_models.py``.
    """
    if arch not in _ARCHS:
        raise ValueError(f"unknown backbone {arch!r}; expected one of {sorted(_ARCHS)}")
    if size not in ("paper", "small"):
        raise ValueError(f"size must be 'paper' or 'small', got {size!r}")
    builder, _, head_attr = _ARCHS[arch]
    if size == "small" and pretrained == "imagenet":
        raise ValueError(
            f"ImageNet weights exist only for the paper-size {arch}; use size='paper' or pretrained=None")
    if image_size % 16 and arch == "vit_b_16":
        raise ValueError(f"image_size must be a multiple of the ViT's 16-px patches, got {image_size}")
    vit_kw = {"image_size": image_size} if arch == "vit_b_16" else {}
    net = (getattr(torchvision.models, builder)(weights=None, **vit_kw) if size == "paper"
           else _small(arch, image_size))
    feat_dim = net.hidden_dim if arch == "vit_b_16" else getattr(net, head_attr).in_features
    setattr(net, head_attr, nn.Identity())

    if pretrained is None:
        source = "random initialisation"
    else:
        if pretrained == "imagenet":
            state = _download(arch)
            source = f"ImageNet weights from torchvision ({IMAGENET_URLS[arch]})"
        else:
            path = Path(pretrained).expanduser()
            if not path.is_file():
                raise FileNotFoundError(
                    f"pretrained={str(pretrained)!r}: no such file. Expected 'imagenet', None, or the path "
                    f"of a torchvision state dict for {arch}")
            state = torch.load(path, map_location="cpu", weights_only=True)
            source = f"local weights {path}"
        state = _clean_state_dict(state, head_attr)
        try:
            missing, unexpected = net.load_state_dict(state, strict=False)
        except RuntimeError as err:  # shape mismatch: wrong architecture or size
            raise ValueError(f"{source} do not fit {arch} (size={size!r}): {err}") from err
        if missing or unexpected:
            raise ValueError(
                f"{source} do not fit {arch} (size={size!r}): {len(missing)} missing keys "
                f"(e.g. {missing[:3]}), {len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
    if verbose:
        print(f"{arch} ({size}): {source}")
    return net, int(feat_dim)
