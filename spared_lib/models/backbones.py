"""Image backbones from torchvision, and the one place where model weights are loaded.

Introduced in ``notebooks/04_patch_models.py``.

``pretrained`` means the same thing in every builder of :mod:`spared_lib.models`
(:func:`check_pretrained`):

``None``
    Random initialisation (what the fast runs and the tests use).
``'imagenet'``
    The backbone's torchvision ImageNet-1k weights (ShuffleNet, ViT-B, ViT-B+Δ, ST-Net, EGN's and
    EGGN's frozen ResNets, BLEEP's ResNet-50, SEPAL's stage-1 ViT). Models whose original has no
    pretrained part (HisToGene, Hist2ST) train from scratch and say so once in a warning.
a path
    A checkpoint of *our own* model: the ``.ckpt`` that :func:`spared_lib.training.fit` keeps
    (``FitResult.checkpoint_path``) or a plain ``model.state_dict()``, loaded by
    :func:`load_checkpoint` into the freshly built model (every key must fit).

Where ImageNet weights come from (:func:`imagenet_state_dict`):

* by default torchvision's own URL, through torch hub: downloaded once into
  ``torch.hub.get_dir()/checkpoints`` (``TORCH_HOME``) and checked against the hash prefix in
  the file name, as torchvision does;
* with the environment variable ``SPARED_WEIGHTS_URL`` (:data:`MIRROR_ENV`) set, from a mirror
  (a proxy, an institute's file server, a ``file://`` folder, the offline rehearsal's loopback
  server). The mirror serves torchvision's file names (``resnet50-0676ba61.pth``, ...) and a
  checksum file ``SHA256SUMS`` (``sha256sum`` format: ``<hex>  <file name>``). Each file is
  downloaded into ``<hub>/checkpoints/mirror/<hash of the mirror URL>/`` — never where a genuine
  torchvision file would be cached — and its full sha256 must equal the mirror's entry, on download
  and on every later use. The printed source then says whether the file is also torchvision's own
  (its sha256 starts with the prefix in torchvision's file name) or a different file.
  :func:`write_imagenet_mirror` writes such a mirror folder with torchvision-format state dicts
  (real keys and shapes, random values).

Nothing falls back to random weights silently: an unreachable file is a
:class:`WeightsUnavailableError` that says which file, from where, and what to do. Which weights a
model got is logged at INFO on the ``spared_lib.models`` logger (``logging.basicConfig(level=logging.INFO)``
shows it; the book keeps library logs at WARNING).
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import torch
import torchvision
from torch import nn

log = logging.getLogger("spared_lib.models")

#: Environment variable holding a mirror's base URL for ImageNet weights (see the module docstring).
MIRROR_ENV = "SPARED_WEIGHTS_URL"
#: Name of the checksum file a mirror publishes next to the weights.
CHECKSUM_FILE = "SHA256SUMS"

#: torchvision builder -> (its ImageNet weights enum, the attribute holding the classifier).
_ARCHS = {
    "shufflenet_v2_x0_5": ("ShuffleNet_V2_X0_5_Weights", "fc"),
    "vit_b_16": ("ViT_B_16_Weights", "heads"),
    "densenet121": ("DenseNet121_Weights", "classifier"),
    "resnet18": ("ResNet18_Weights", "fc"),
    "resnet34": ("ResNet34_Weights", "fc"),
    "resnet50": ("ResNet50_Weights", "fc"),
}
#: The CPU-sized variants (``size='small'``) that differ from the paper architecture, and so have
#: no ImageNet weights. ShuffleNetV2 x0.5 and ResNet-18 are already small and stay as they are.
_SMALL_ONLY = {"vit_b_16", "densenet121", "resnet10"}

#: torchvision's own URL of each architecture's ImageNet-1k weights.
IMAGENET_URLS = {arch: getattr(torchvision.models, enum).IMAGENET1K_V1.url for arch, (enum, _) in _ARCHS.items()}

# Old torchvision DenseNet checkpoints (the published densenet121 file among them) name layers
# 'norm.1' instead of 'norm1'; torchvision renames them when it loads, so do we.
_OLD_DENSENET_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12]\.(?:weight|bias|running_mean|running_var))$")
_NEW_DENSENET_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))([12])\.(weight|bias|running_mean|running_var)$")


class WeightsUnavailableError(RuntimeError):
    """ImageNet weights were asked for but could not be obtained (or failed their checksum)."""


# --------------------------------------------------------------------------- what `pretrained` is
def check_pretrained(pretrained) -> None | str | Path:
    """Validate a ``pretrained`` value: ``None``, ``'imagenet'``, or the :class:`~pathlib.Path` of a checkpoint.

    Raises ``ValueError`` for any other string that is not an existing file (a typo such as
    ``'ImageNet'`` is not silently read as a path), ``FileNotFoundError`` for a missing path.
    """
    if pretrained is None or pretrained == "imagenet":
        return pretrained
    if not isinstance(pretrained, (str, os.PathLike)):
        raise TypeError(f"pretrained must be None, 'imagenet' or a checkpoint path, got {type(pretrained).__name__}")
    path = Path(pretrained).expanduser()
    if not path.is_file():
        if isinstance(pretrained, str) and pretrained.lower() in ("imagenet", "true", "default", "none"):
            raise ValueError(f"pretrained={pretrained!r}: use pretrained='imagenet' (lower case) or None")
        raise FileNotFoundError(f"pretrained={str(pretrained)!r}: no such file. Expected None, 'imagenet', or the "
                                "path of a checkpoint of this model (FitResult.checkpoint_path or a state_dict)")
    return path


# --------------------------------------------------------------------------- ImageNet weights
def _file_name(arch: str) -> str:
    return urllib.parse.urlsplit(IMAGENET_URLS[arch]).path.rsplit("/", 1)[-1]


def _hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _fetch_checksums(base: str) -> dict[str, str]:
    url = f"{base}/{CHECKSUM_FILE}"
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            text = r.read().decode("utf-8")
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise WeightsUnavailableError(
            f"{MIRROR_ENV}={base!r}: could not read the mirror's checksum file {url} ({type(err).__name__}: "
            f"{err}). A mirror must publish {CHECKSUM_FILE} (lines '<sha256>  <file name>') next to the "
            "weights; unset the variable to download from torchvision instead") from err
    sums = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or not re.fullmatch(r"[0-9a-f]{64}", parts[0].lower()):
            raise WeightsUnavailableError(f"{url}, line {n}: expected '<64 hex digits>  <file name>', got {line!r}")
        sums[parts[1].lstrip("*")] = parts[0].lower()
    return sums


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _from_mirror(arch: str, base: str, progress: bool) -> tuple[dict, str]:
    name = _file_name(arch)
    expected = _fetch_checksums(base).get(name)
    if expected is None:
        raise WeightsUnavailableError(f"{MIRROR_ENV}={base!r}: {base}/{CHECKSUM_FILE} has no entry for {name}, "
                                      f"the ImageNet weights of {arch}")
    folder = _hub_checkpoints() / "mirror" / hashlib.sha256(base.encode()).hexdigest()[:12]
    path = folder / name
    if path.is_file() and _sha256(path) != expected:
        path.unlink()  # a stale or corrupted copy: fetch it again rather than trust it
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        url = f"{base}/{name}"
        try:  # torch hub writes to a temporary file and keeps it only if the sha256 matches
            torch.hub.download_url_to_file(url, str(path), hash_prefix=expected, progress=progress)
        except RuntimeError as err:
            raise WeightsUnavailableError(f"{url} does not match {base}/{CHECKSUM_FILE}: {err}") from err
        except (urllib.error.URLError, OSError) as err:
            raise WeightsUnavailableError(f"could not download {url} ({type(err).__name__}: {err})") from err
    prefix = re.search(r"-([0-9a-f]+)\.", name).group(1)
    genuine = "torchvision's published file" if expected.startswith(prefix) else \
        f"not torchvision's published file (sha256 {expected[:10]}…, torchvision's starts {prefix})"
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state, f"ImageNet-format weights from the mirror {base} ({name}, sha256 checked; {genuine})"


def _from_torchvision(arch: str, progress: bool) -> tuple[dict, str]:
    url = IMAGENET_URLS[arch]
    try:
        state = torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=progress, check_hash=True,
                                                   weights_only=True)
    except (urllib.error.URLError, OSError, ConnectionError, TimeoutError, RuntimeError) as err:
        raise WeightsUnavailableError(
            f"could not download the ImageNet weights of {arch} from {url} ({type(err).__name__}: {err}). "
            f"This machine may be offline. Either put that file into {_hub_checkpoints()}/ (torch hub's cache, "
            f"set by TORCH_HOME), set {MIRROR_ENV} to a mirror that serves it with a {CHECKSUM_FILE} file, "
            "or pass pretrained=None for random initialisation."
        ) from err
    return state, f"ImageNet weights from torchvision ({url})"


def imagenet_state_dict(arch: str, progress: bool = True) -> tuple[dict, str]:
    """torchvision's ImageNet-1k state dict of ``arch`` and a sentence saying where it came from.

    From torchvision's URL through torch hub, or from the mirror named by ``SPARED_WEIGHTS_URL``
    (see the module docstring). Introduced in ``notebooks/04_patch_models.py``.
    """
    if arch not in _ARCHS:
        raise ValueError(f"no ImageNet weights for {arch!r}; torchvision weights exist for {sorted(_ARCHS)}")
    base = os.environ.get(MIRROR_ENV, "").strip().rstrip("/")
    return _from_mirror(arch, base, progress) if base else _from_torchvision(arch, progress)


def _clean_state_dict(state: dict, head_attr: str) -> dict:
    out = {}
    for k, v in state.items():
        if k.startswith(head_attr + "."):
            continue  # the ImageNet classifier is replaced by our regression head or removed
        m = _OLD_DENSENET_KEY.match(k)
        out[m.group(1) + m.group(2) if m else k] = v
    return out


def write_imagenet_mirror(folder, archs=None, seed: int = 0) -> Path:
    """Write a mirror folder of ImageNet-*format* weights: torchvision's file names, real keys and
    shapes, random values, and the ``SHA256SUMS`` file :func:`imagenet_state_dict` checks.

    For offline rehearsals and tests: serve ``folder`` (e.g. over HTTP on 127.0.0.1, or as a
    ``file://`` URL) and point ``SPARED_WEIGHTS_URL`` at it; every model then loads these through the
    same code that loads the real weights. The values are each architecture's random initialisation
    (seeded), so nothing trained is implied. DenseNet keys are written as in torchvision's published
    2017 file: old ``norm.1`` names and no batch-norm ``num_batches_tracked`` counters.

    Parameters
    ----------
    folder
        Created if needed; existing weight files of the same name are overwritten.
    archs
        Architectures to write (default all of them: about 0.5 GB, most of it ViT-B).
    seed
        Seed of the random values.

    Returns
    -------
    pathlib.Path
        The folder.

    Notes
    -----
    Introduced in ``notebooks/04_patch_models.py``.
    """
    folder = Path(folder)
    archs = list(_ARCHS) if archs is None else list(archs)
    unknown = sorted(set(archs) - set(_ARCHS))
    if unknown:
        raise ValueError(f"write_imagenet_mirror: unknown architecture(s) {unknown}; choose from {sorted(_ARCHS)}")
    folder.mkdir(parents=True, exist_ok=True)
    sums_path = folder / CHECKSUM_FILE
    sums = _read_sums(sums_path)
    for arch in archs:
        torch.manual_seed(seed)
        state = getattr(torchvision.models, arch)(weights=None).state_dict()
        if arch == "densenet121":  # the published file dates from 2017: old key names, no BN step counters
            state = {_NEW_DENSENET_KEY.sub(r"\1.\2.\3", k): v for k, v in state.items()
                     if not k.endswith("num_batches_tracked")}
        name = _file_name(arch)
        tmp = folder / (name + ".partial")
        torch.save(state, tmp)
        tmp.replace(folder / name)
        sums[name] = _sha256(folder / name)
    sums_path.write_text("".join(f"{h}  {n}\n" for n, h in sorted(sums.items())))
    return folder


def _read_sums(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    return {p[1]: p[0] for p in (line.split() for line in path.read_text().splitlines()) if len(p) == 2}


# --------------------------------------------------------------------------- our own checkpoints
def load_checkpoint(model: nn.Module, path) -> nn.Module:
    """Load one of our checkpoints into ``model`` (built with the same name, size and genes).

    Accepts the Lightning ``.ckpt`` that :func:`spared_lib.training.fit` keeps (weights under
    ``state_dict``, prefixed ``model.``) or a plain ``state_dict``. Every parameter must fit
    (``ValueError`` naming the file otherwise); the Δ models' ``target_offset`` (the training means
    that :func:`~spared_lib.training.predict` adds back) is restored with it.

    Introduced in ``notebooks/04_patch_models.py``.
    """
    path = Path(path).expanduser()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # not a torch file, or a pickle with arbitrary objects
        raise ValueError(f"{path}: not a checkpoint torch can load safely ({type(err).__name__}: {err})") from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state_dict (name -> tensor) or a fit() checkpoint")
    if any(k.startswith("model.") for k in state):
        state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    # the Δ offsets fit() registers (on the model, or on SEPAL's stage 1) are not in a fresh model
    offsets = {k: state.pop(k) for k in [k for k in state if k.rsplit(".", 1)[-1] == "target_offset"]}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shapes differ: another size or number of genes
        raise ValueError(f"{path} does not fit this {type(model).__name__} (was it saved from the same model "
                         f"name, size and number of genes?): {err}") from err
    missing = [k for k in missing if k.rsplit(".", 1)[-1] != "target_offset"]
    if missing or unexpected:
        raise ValueError(f"{path} does not fit this {type(model).__name__}: {len(missing)} missing keys "
                         f"(e.g. {missing[:3]}), {len(unexpected)} unexpected keys (e.g. {unexpected[:3]}); was it "
                         "saved from the same model name, size and number of genes?")
    for key, offset in offsets.items():
        owner = model.get_submodule(key.rpartition(".")[0]) if "." in key else model
        if "target_offset" in owner._buffers:
            owner.target_offset = offset
        else:
            owner.register_buffer("target_offset", offset)
    return model


# --------------------------------------------------------------------------- backbones
def _small(arch: str, image_size: int = 224) -> nn.Module:
    """CPU-friendly variants for fast runs (same family, far fewer parameters)."""
    if arch == "vit_b_16":
        from torchvision.models.vision_transformer import VisionTransformer

        return VisionTransformer(image_size=image_size, patch_size=16, num_layers=2, num_heads=4,
                                 hidden_dim=128, mlp_dim=256)
    if arch == "densenet121":
        from torchvision.models.densenet import DenseNet

        return DenseNet(growth_rate=12, block_config=(2, 2, 2, 2), num_init_features=32)
    return getattr(torchvision.models, arch)(weights=None)


def _on_meta(module: nn.Module) -> bool:
    p = next(module.parameters(), None)
    return p is not None and p.device.type == "meta"


def build_backbone(arch: str, pretrained: str | None = None, size: str = "paper", verbose: bool = True,
                   image_size: int = 224) -> tuple[nn.Module, int]:
    """A torchvision image backbone that maps ``(B, 3, H, W)`` to ``(B, D)`` features.

    Parameters
    ----------
    arch
        ``'shufflenet_v2_x0_5'``, ``'vit_b_16'``, ``'densenet121'``, ``'resnet18'``, ``'resnet34'``,
        ``'resnet50'``, or ``'resnet10'`` (one residual block per stage: a CPU-sized ResNet).
    pretrained
        ``None`` (random init) or ``'imagenet'`` (:func:`imagenet_state_dict`). Checkpoints of our
        own models are loaded into the whole model by :func:`load_checkpoint`, not here.
    size
        ``'paper'``: the original architecture; ``'small'``: a CPU-friendly variant (ViT with 2 layers
        of width 128; DenseNet with 4 blocks of 2 layers); ShuffleNet and the ResNets stay as they are.
        Only architectures that are unchanged at ``'small'`` have ImageNet weights there.
    verbose
        Log which weights were used (INFO, logger ``spared_lib.models``).
    image_size
        Input side length; only the ViT fixes it (its position embedding).

    Returns
    -------
    (module, feature_dim)

    Notes
    -----
    Introduced in ``notebooks/04_patch_models.py``.
    """
    known = set(_ARCHS) | {"resnet10"}
    if arch not in known:
        raise ValueError(f"unknown backbone {arch!r}; expected one of {sorted(known)}")
    if size not in ("paper", "small"):
        raise ValueError(f"size must be 'paper' or 'small', got {size!r}")
    if pretrained not in (None, "imagenet"):
        raise ValueError(f"build_backbone: pretrained must be None or 'imagenet', got {pretrained!r} "
                         "(a checkpoint path is loaded into the whole model: spared_lib.models.build_model)")
    small_variant = arch == "resnet10" or (size == "small" and arch in _SMALL_ONLY)
    if pretrained == "imagenet" and small_variant:
        raise ValueError(f"ImageNet weights exist only for the paper-size {arch} (size='small' builds a smaller "
                         "network); use size='paper' or pretrained=None")
    if image_size % 16 and arch == "vit_b_16":
        raise ValueError(f"image_size must be a multiple of the ViT's 16-px patches, got {image_size}")
    if arch == "resnet10":
        from torchvision.models.resnet import BasicBlock, ResNet

        net = ResNet(BasicBlock, [1, 1, 1, 1])
    elif small_variant:
        net = _small(arch, image_size)
    else:
        net = getattr(torchvision.models, arch)(weights=None, **({"image_size": image_size} if arch == "vit_b_16" else {}))
    head_attr = _ARCHS.get(arch, ("", "fc"))[1]
    feat_dim = net.hidden_dim if arch == "vit_b_16" else getattr(net, head_attr).in_features

    source = "random initialisation"
    if pretrained == "imagenet":
        state, source = imagenet_state_dict(arch)
        state = _clean_state_dict(state, head_attr)
        setattr(net, head_attr, nn.Identity())
        try:
            missing, unexpected = net.load_state_dict(state, strict=False)
        except RuntimeError as err:  # shape mismatch: wrong architecture or image size
            raise ValueError(f"{source} do not fit {arch} (image_size={image_size}): {err}") from err
        if missing or unexpected:
            raise ValueError(f"{source} do not fit {arch}: {len(missing)} missing keys (e.g. {missing[:3]}), "
                             f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
    else:
        setattr(net, head_attr, nn.Identity())
    if verbose and not _on_meta(net):
        log.info("%s%s: %s", arch, f" ({size})" if arch in _SMALL_ONLY else "", source)
    return net, int(feat_dim)
