"""Saliency Lab's engine: where a vision-language model looks, and how faithful each map is.

from explainers import explain
result = explain("assets/chelsea.jpg", "a cat")
"""

from . import _threads  # noqa: F401 - first: OMP_WAIT_POLICY before torch loads (explainers/_threads.py)
from ._version import __version__
from .api import DEFAULTS, PARAMS, candidate_targets, explain
from .errors import ModelLoadError, UserError
from .methods import list_methods
from .models import ClassifierAdapter, ModelAdapter, list_models
from .types import Curve, Curves, MethodResult, RandomReference, Result, SaliencyMap, Target

__all__ = [
    "DEFAULTS",
    "PARAMS",
    "ClassifierAdapter",
    "Curve",
    "Curves",
    "MethodResult",
    "ModelAdapter",
    "ModelLoadError",
    "RandomReference",
    "Result",
    "SaliencyMap",
    "Target",
    "UserError",
    "__version__",
    "candidate_targets",
    "explain",
    "list_methods",
    "list_models",
]
