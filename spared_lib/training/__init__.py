"""The common trainer: one loop, one checkpoint rule and one set of metrics for every model.

Introduced in ``notebooks/04_patch_models.py``. ``fit`` trains a registered model
(:data:`spared_lib.models.MODELS`) on a preprocessed AnnData and returns a
:class:`FitResult`; ``predict`` runs a trained model on any aligned patch array. The loop itself
is :func:`spared_lib.engine.make_trainer`, shared with SpaCKLE's training.
"""
from spared_lib.engine import resolve_device

from .data import normalise, random_dihedral
from .fit import FitOptions, FitResult, accumulation, fit, predict
from .memory import DoesNotFit

__all__ = ["DoesNotFit", "FitOptions", "FitResult", "accumulation", "fit", "normalise",
           "predict", "random_dihedral", "resolve_device"]
