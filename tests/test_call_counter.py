"""The one call counter: it counts calls and the samples they evaluate, tells ``on_call`` each batch, and leaves
the sampler the wrapped module's dtype and the model's data shape."""
import pytest
import torch

from lazyflow.runtime.core.sampler import resolve_dtypes, sample
from lazyflow.runtime.core.call_counter import CallCounter

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Velocity(torch.nn.Module):
    """v(x, t) = W x + t b in float64."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(3, 3).to(torch.float64)

    def forward(self, x, t):
        return self.layer(x) * (1 + t[:, None])


def test_the_call_counter_counts_and_keeps_the_models_dtype_and_shape():
    net, heard = Velocity(), []

    def velocity(x, t):
        return net(x, t)

    velocity.data_shape = (3,)
    counter = CallCounter(net, on_call=heard.append)
    assert resolve_dtypes(torch.float32, None, counter)[1] == torch.float64   # the module's dtype, seen through
    assert resolve_dtypes(torch.float32, None, CallCounter(velocity))[1] == torch.float32   # no module: the state's
    assert CallCounter(velocity).data_shape == (3,) and counter.data_shape is None
    x = sample(counter, (5, 3), schedule="linear", steps=3, integrator="heun", seed=0, dtype=torch.float64)
    assert x.dtype == torch.float64
    assert counter.calls == 5 and heard == [5] * 5 and counter.evaluations == 25   # Heun, 3 steps: 2 + 2 + 1 calls
