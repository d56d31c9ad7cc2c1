"""The ten prediction models of the SpaRED benchmark, behind one registry.

Introduced in ``notebooks/04_patch_models.py``.

``MODELS`` maps each name to a :class:`ModelEntry`; :func:`build_model` imports the
module that builds it only when asked (torch and torchvision stay out of
``import spared_lib.models``'s path until a model is built). Every building module
exposes ``build(name, n_genes, pretrained=None, size='paper', **kw) -> SpotModel``.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelEntry:
    """One registry row.

    Attributes
    ----------
    module
        Module whose ``build(name, n_genes, pretrained, size, **kw)`` makes the model.
    display
        Name used in the paper's tables and figures.
    original_params
        Trainable parameters of the original configuration with G = 128 genes (the x axis
        of the paper's Fig. 4b).
    lr
        Default learning rate of :func:`spared_lib.training.fit`. The paper searched a
        learning rate per dataset and did not publish them; these defaults are ours.
    """

    module: str
    display: str
    original_params: int | None
    lr: float


# Patch-model counts are those of the torchvision architectures with a Linear(D, 128) head;
# the others are their modules' ``original_n_params(128)``, written out from the original
# code's configuration (tests/test_models_patch.py checks both).
MODELS: dict[str, ModelEntry] = {
    "stnet": ModelEntry("spared_lib.models.patch", "ST-Net", 7_085_056, 1e-3),
    "histogene": ModelEntry("spared_lib.models.histogene", "HisToGene", 221_711_488, 1e-5),
    "hist2st": ModelEntry("spared_lib.models.hist2st", "Hist2ST", 892_660_677, 1e-5),
    "egn": ModelEntry("spared_lib.models.egn", "EGN", 132_856_960, 1e-4),
    "eggn": ModelEntry("spared_lib.models.eggn", "EGGN", 11_089_537, 1e-4),
    "bleep": ModelEntry("spared_lib.models.bleep", "BLEEP", 24_198_208, 1e-4),
    "sepal": ModelEntry("spared_lib.models.sepal", "SEPAL", 86_865_025, 1e-4),
    "shufflenet": ModelEntry("spared_lib.models.patch", "ShuffleNet", 472_992, 1e-3),
    "vit_b": ModelEntry("spared_lib.models.patch", "ViT-B", 85_897_088, 1e-4),
    "vit_b_delta": ModelEntry("spared_lib.models.patch", "ViT-B+Δ", 85_897_088, 1e-4),
}

#: The four patch models of ``notebooks/04_patch_models.py``.
PATCH_MODELS = ("shufflenet", "vit_b", "vit_b_delta", "stnet")
#: The six context models of ``notebooks/05_context_models.py`` (slide, neighbourhood, exemplar, retrieval).
CONTEXT_MODELS = ("histogene", "hist2st", "egn", "eggn", "bleep", "sepal")


def get_entry(name: str) -> ModelEntry:
    """The registry entry of ``name``, or a ``KeyError`` listing the valid names."""
    try:
        return MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; valid names: {', '.join(MODELS)}") from None


def build_model(name: str, n_genes: int, pretrained=None, size: str = "paper", **kw):
    """Build a registered model.

    Parameters
    ----------
    name
        One of ``MODELS`` (``shufflenet``, ``vit_b``, ``vit_b_delta``, ``stnet``,
        ``histogene``, ``hist2st``, ``egn``, ``eggn``, ``bleep``, ``sepal``).
    n_genes
        Number of predicted genes (32 or 128 in SpaRED).
    pretrained
        ``None`` (random init), ``'imagenet'`` (the backbone's torchvision ImageNet weights; from
        scratch, with a warning, where the original has no pretrained part: HisToGene, Hist2ST) or
        the path of a checkpoint of this model (``FitResult.checkpoint_path``); see
        :mod:`spared_lib.models.backbones`. Like torchvision's ``weights=None``, the default is
        random init; :func:`spared_lib.training.fit` defaults to ``'imagenet'`` (the paper's).
    size
        ``'paper'`` (the original architecture) or ``'small'`` (CPU-friendly, for fast runs).
    **kw
        Model-specific options passed to the module's ``build``.

    Returns
    -------
    spared_lib.models.base.SpotModel

    Notes
    -----
    Introduced in ``notebooks/04_patch_models.py``.
    """
    entry = get_entry(name)
    if int(n_genes) != n_genes or n_genes < 1:
        raise ValueError(f"n_genes must be a positive integer, got {n_genes!r}")
    if size not in ("paper", "small"):
        raise ValueError(f"size must be 'paper' or 'small', got {size!r}")
    from .backbones import check_pretrained

    check_pretrained(pretrained)  # a clear error before anything is built
    try:
        module = importlib.import_module(entry.module)
    except ModuleNotFoundError as err:
        if err.name != entry.module:
            raise  # a missing dependency inside the module: show the real cause
        raise ImportError(f"model {name!r} ({entry.display}) is registered but its module {entry.module} "
                          "is not available in this version of spared_lib") from err
    return module.build(name, int(n_genes), pretrained=pretrained, size=size, **kw)


def count_parameters(model, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters of a model."""
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only))


__all__ = ["CONTEXT_MODELS", "MODELS", "PATCH_MODELS", "ModelEntry", "build_model", "count_parameters", "get_entry"]
