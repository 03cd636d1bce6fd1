"""The one call counter (of the evaluation layer, the command line and `lazyflow stats`): a model that counts its batched calls
and the samples they evaluate (the cost of a run in network evaluations), and is seen by the sampler as the
model it wraps (a module, so that ``sample`` calls it in the wrapped module's parameters' dtype; its
``data_shape``)."""
from __future__ import annotations

from typing import Any, Callable

import torch

__all__ = ["CallCounter"]


class CallCounter(torch.nn.Module):
    """``model`` counted: ``calls`` (batched calls) and ``evaluations`` (the samples they evaluate, the sum of
    x.shape[0]); ``on_call(batch)``, where given, hears each call's batch size (a progress bar).  A wrapped
    module is a submodule, so its parameters' dtype is the counter's (:func:`~lazyflow.runtime.core.sampler.
    resolve_dtypes`)."""

    def __init__(self, model: Callable[..., torch.Tensor], on_call: Callable[[int], None] | None = None):
        super().__init__()
        self.model, self.on_call = model, on_call
        self.calls, self.evaluations = 0, 0

    @property
    def data_shape(self) -> tuple[int, ...] | None:
        """The wrapped model's ``data_shape`` (None where it has none)."""
        return getattr(self.model, "data_shape", None)

    def forward(self, x: torch.Tensor, t: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        self.calls += 1
        self.evaluations += x.shape[0]
        if self.on_call is not None:
            self.on_call(x.shape[0])
        return self.model(x, t, **kwargs)
