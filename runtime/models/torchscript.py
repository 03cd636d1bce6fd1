"""The ``torchscript`` model kind: a velocity model saved with ``torch.jit.save``.

Expected call: ``model(x, t) -> v`` with ``x`` of shape (batch, *data_shape), ``t`` of shape (batch,)
in lazyflow's time (0 = noise, 1 = data) and ``v`` = d/dt x_t of the linear path
x_t = (1 - t) z + t x (the flow_matching / SiT convention: v = x - z), in the input's dtype.  The data
shape comes from ``--shape`` or the scripted module's ``data_shape`` attribute.  TorchScript archives hold
code and tensors, no pickled Python objects; nothing is downloaded."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ...errors import LazyflowError
from .kind import LoadedModel, ModelKind, data_shape_option

__all__ = ["TORCHSCRIPT_KIND", "load_torchscript"]


def load_torchscript(path: str, *, device: torch.device, num_samples: int,
                     shape: str | Sequence[int] | None = None) -> LoadedModel:
    """The TorchScript velocity model at ``path`` on ``device`` (linear source, velocity prediction)."""
    file = Path(path)
    if not file.is_file():
        raise LazyflowError(f"--model {path}: no such TorchScript file")
    try:
        model = torch.jit.load(str(file), map_location=device).eval()
    except RuntimeError as err:
        raise LazyflowError(f"{path}: not a TorchScript archive ({str(err).splitlines()[0]}); save the model "
                            "with torch.jit.save(torch.jit.script(model), path)") from None
    found = data_shape_option(shape)
    if found is None and hasattr(model, "data_shape"):
        found = data_shape_option(list(model.data_shape), "the module's data_shape")
    return LoadedModel(kind="torchscript", model=model, data_shape=found, source="linear", prediction="velocity",
                       metadata={"file": str(file)})


TORCHSCRIPT_KIND = ModelKind(name="torchscript", description="a torch.jit.save'd velocity model v = model(x, t) on "
                             "the linear path (t: 0 noise, 1 data); --shape gives its data shape",
                             load=load_torchscript, options=("shape",), takes_file=True)
