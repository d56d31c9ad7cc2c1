"""SpaCKLE completion of missing gene expression, with the median and stLearn-SME baselines.

Introduced in the chapter ``notebooks/03_spackle.py``. Heavy imports (torch) happen inside the
submodules, so ``import spared_lib.completion`` only pays for them when a name is used.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "SpaCKLE": "model",
    "train_spackle": "train",
    "masking_probabilities": "train",
    "load_spackle": "train",
    "complete": "infer",
    "predict_centres": "infer",
    "median_complete": "baselines",
    "sme_complete": "baselines",
    "image_features": "baselines",
    "colour_features": "baselines",
    "evaluate_completion": "evaluate",
    "random_observed_mask": "evaluate",
    "complete_masked": "evaluate",
    "train_mean_complete": "evaluate",
    "METHODS": "evaluate",
    "TRAIN_INPUTS": "train",
    "LOSSES": "train",
    "PAPER_STEPS": "train",
    "INFERENCE_RULES": "infer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return __all__
