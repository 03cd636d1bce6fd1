"""The model zoo: the embedded models and their loader, SiT, exact Gaussian mixtures, training,
guidance and the adapters that turn other conventions into ``model(x, t, **kwargs)``.

    >>> from lazyflow.runtime import models
    >>> net = models.load("digits")
"""
from .embedded import EMBEDDED, WEIGHTS, Classifier, VelocityMLP, load, load_classifier, save, time_features

__all__ = ["VelocityMLP", "Classifier", "load", "load_classifier", "save", "time_features", "WEIGHTS", "EMBEDDED"]
