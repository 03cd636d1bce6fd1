"""The model zoo: the embedded models and their loader, SiT, exact Gaussian mixtures, training,
guidance and the adapters that turn other conventions into ``model(x, t, **kwargs)``, and the registry
of model kinds that the command line and the bench load models through.

    >>> from lazyflow.runtime import models
    >>> net = models.load("digits")
"""
from .embedded import EMBEDDED, WEIGHTS, Classifier, VelocityMLP, load, load_classifier, save, time_features
from .kind import LoadedModel, ModelKind
from .registry import MODEL_KINDS, load_model, register_model_kind, unregister_model_kind

__all__ = ["VelocityMLP", "Classifier", "load", "load_classifier", "save", "time_features", "WEIGHTS", "EMBEDDED",
           "MODEL_KINDS", "ModelKind", "LoadedModel", "register_model_kind", "unregister_model_kind", "load_model"]
