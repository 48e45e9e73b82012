"""Saliency Lab's engine: where a vision-language model looks, and how faithful each map is.

    from explainers import explain
    result = explain("assets/chelsea.jpg", "a cat")
"""
from .api import DEFAULTS, explain
from .errors import ModelLoadError, UserError
from .methods import list_methods
from .models import list_models
from .types import Curve, MethodResult, Result, SaliencyMap, Target

__all__ = ["explain", "list_methods", "list_models", "DEFAULTS", "UserError", "ModelLoadError",
           "Curve", "MethodResult", "Result", "SaliencyMap", "Target"]
