"""The common trainer: one loop, one checkpoint rule and one set of metrics for every model.

Introduced in ``notebooks/04_patch_models.py``. ``fit`` trains a registered model
(:data:`spared_lib.models.MODELS`) on a preprocessed AnnData and returns a
:class:`FitResult`; ``predict`` runs a trained model on any aligned patch array.
"""
from .fit import FitResult, fit, predict, resolve_device

__all__ = ["FitResult", "fit", "predict", "resolve_device"]
