"""Classifier-free guidance as a model wrapper: ``guided(model, scale, null=...)``.

Guidance acts on the source model's output, before any conversion, so it composes with every schedule
and integrator: the guided model is one more source model,

    m = m_null + scale (m_cond - m_null)

with both terms from ONE network call on a doubled batch (the conditional half first, then the null
half).  Each prediction (velocity, x, noise, score) is affine in eta_X at a fixed input, so guiding
any of them guides eta_X the same way.  NFE counts network calls: a guided call is one call on a doubled
batch (twice the work of a plain call); outside the guidance ``interval`` a call is one plain
conditional call on the undoubled batch.

    >>> from lazyflow.runtime.models.guidance import guided
    >>> model = guided(from_sit(net), 1.5, null={"y": 1000}, interval=(0.0, 0.7))
    >>> x = sample(model, (8, 4, 32, 32), model_kwargs={"y": labels}, schedule="pointmass", steps=8)
"""
from __future__ import annotations

import numbers
from typing import Any, Callable, Mapping

import torch

from ...errors import LazyflowError

__all__ = ["guided", "Guided"]


class Guided(torch.nn.Module):
    """The guided model (see :func:`guided`); ``model``, ``scale``, ``null``, ``interval`` and
    ``channels`` are its settings, ``calls`` counts the network calls made (guided or plain)."""

    def __init__(self, model: Callable[..., torch.Tensor], scale: float, null: Mapping[str, Any],
                 interval: tuple[float, float] | None, channels: int | None):
        super().__init__()
        self.model, self.scale, self.null, self.interval, self.channels = model, scale, dict(null), interval, channels
        self.calls = 0
        if hasattr(model, "data_shape"):
            self.data_shape = tuple(model.data_shape)

    def forward(self, x: torch.Tensor, t: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        n = x.shape[0]
        t = t.reshape(-1).expand(n) if t.numel() == 1 else t
        null = {}
        for name, value in self.null.items():
            if isinstance(value, str):          # per-sample null conditioning passed under another name
                if value not in kwargs:
                    raise LazyflowError(f"guided: the null value of {name!r} is the keyword {value!r}, "
                                        "which the call did not get")
                null[name] = kwargs.pop(value)
            else:
                null[name] = value
        missing = sorted(set(null) - set(kwargs))
        if missing:
            raise LazyflowError(f"guided: the model call has no conditional {', '.join(map(repr, missing))} "
                                "(pass it in model_kwargs)")
        inside = None
        if self.interval is not None:
            lo, hi = self.interval
            inside = (t >= lo) & (t <= hi)
            if not bool(inside.any()):          # one plain conditional call on the undoubled batch
                self.calls += 1
                return self.model(x, t, **kwargs)
        doubled = {}
        for name, value in kwargs.items():
            if name in null:
                doubled[name] = torch.cat([value, _batch(null[name], value, n, name)])
            elif isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == n:
                doubled[name] = torch.cat([value, value])
            else:
                doubled[name] = value
        self.calls += 1
        out = self.model(torch.cat([x, x]), torch.cat([t, t]), **doubled)
        cond, uncond = out[:n], out[n:]
        k = self.channels if self.channels is not None else out.shape[1]
        mixed = uncond[:, :k] + self.scale * (cond[:, :k] - uncond[:, :k])
        result = torch.cat([mixed, cond[:, k:]], dim=1) if k < out.shape[1] else mixed
        if inside is not None and not bool(inside.all()):
            result = torch.where(inside.reshape(-1, *([1] * (result.dim() - 1))), result, cond)
        return result


def _batch(null: Any, cond: torch.Tensor, n: int, name: str) -> torch.Tensor:
    """The null conditioning for a batch of n, shaped like the conditional one."""
    value = torch.as_tensor(null, device=cond.device)
    if value.dtype != cond.dtype and (value.is_floating_point() or cond.is_floating_point()):
        value = value.to(cond.dtype)
    if value.dim() == cond.dim() and value.shape[0] == n:
        return value
    if value.dim() == cond.dim() and value.shape[0] == 1:
        return value.expand(n, *cond.shape[1:])
    if value.dim() == cond.dim() - 1:
        return value.unsqueeze(0).expand(n, *cond.shape[1:])
    raise LazyflowError(f"guided: the null value of {name!r} has shape {tuple(value.shape)}, which does not fit "
                        f"the conditional {tuple(cond.shape)} (give one entry, or one per sample)")


def guided(model: Callable[..., torch.Tensor], scale: float, *, null: Mapping[str, Any],
           interval: tuple[float, float] | None = None, channels: int | None = None) -> Guided:
    """``model`` with classifier-free guidance of strength ``scale`` (1 is the conditional model).

    The conditional conditioning comes with each call (``sample(..., model_kwargs=...)``, so per-sample
    tensors follow their samples into each batch).  ``null`` names, for each conditioning keyword, its
    null value: a value shared by every sample (a class index such as SiT's ``num_classes``, or a tensor
    shaped like one sample's conditioning, or with a first dimension of 1), a tensor with one entry per
    sample, or a string naming another keyword of the call that carries per-sample null conditioning
    (``null={"encoder_hidden_states": "negative_encoder_hidden_states"}``; that keyword is not passed
    on).  Other keywords are shared; their tensors whose first dimension is the batch are repeated for
    the doubled batch.  ``interval=(lo, hi)``: guide only where the source time t is in [lo, hi], else
    one plain conditional call.  ``channels``: guide only the first ``channels`` output channels (the
    rest is the conditional output), as the DiT/SiT reference code does with 3; default all."""
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not torch.isfinite(torch.tensor(float(scale))):
        raise LazyflowError(f"guidance scale must be a finite number, got {scale!r}")
    if not isinstance(null, Mapping) or not null:
        raise LazyflowError("guided: null must be a non-empty mapping from conditioning keyword to its null value")
    if interval is not None:
        try:
            lo, hi = (float(v) for v in interval)
        except (TypeError, ValueError):
            raise LazyflowError(f"guidance interval must be two numbers (lo, hi), got {interval!r}") from None
        if not 0 <= lo < hi <= 1:
            raise LazyflowError(f"guidance interval must satisfy 0 <= lo < hi <= 1 (source time), got {interval!r}")
        interval = (lo, hi)
    if channels is not None and (isinstance(channels, bool) or not isinstance(channels, numbers.Integral) or channels < 1):
        raise LazyflowError(f"guided: channels must be a positive integer, got {channels!r}")
    return Guided(model, float(scale), null, interval, channels)
