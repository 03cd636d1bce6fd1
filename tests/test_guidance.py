"""Classifier-free guidance as a model wrapper: one call on a doubled batch, scale, interval; guidance
composes with every frame because it acts on the source model's output."""
from __future__ import annotations

import pytest
import torch

from exact import GMMVelocity
from lazyflow import INTEGRATORS, LazyflowError, sample
from lazyflow.runtime.models.guidance import guided

F64 = torch.float64
MEANS = torch.tensor([[-2.0, 0.5], [1.5, -1.0], [0.5, 2.0]], dtype=F64)
STDS = torch.tensor([0.3, 0.5, 0.4], dtype=F64)
WEIGHTS = torch.tensor([0.5, 0.3, 0.2], dtype=F64)
NULL = 3


pytestmark = pytest.mark.usefixtures("one_torch_thread")   # tiny models (tests/conftest.py)


class ClassGMM:
    """Exact class-conditional velocities: class k is the k-th Gaussian, the null class (3) the mixture.
    Records the batch size of every call."""

    def __init__(self):
        self.classes = [GMMVelocity(torch.ones(1, dtype=F64), MEANS[k:k + 1], STDS[k:k + 1]) for k in range(3)]
        self.classes.append(GMMVelocity(WEIGHTS, MEANS, STDS))
        self.batches: list[int] = []

    def __call__(self, x, t, y):
        self.batches.append(x.shape[0])
        out = torch.stack([v(x, t) for v in self.classes])              # (classes + null, n, d)
        return out[y.long(), torch.arange(x.shape[0])]


LABELS = torch.tensor([0, 1, 2, 0, 1, 2])
SHAPE = (6, 2)


def hand_guided(model, scale):
    """The guided velocity computed by hand: two separate calls and the mix."""
    def velocity(x, t, y):
        cond = model(x, t, y)
        null = model(x, t, torch.full_like(y, NULL))
        return null + scale * (cond - null)
    return velocity


@pytest.mark.parametrize("integrator", [n for n, i in INTEGRATORS.items() if i.classic])
def test_guided_sampling_in_a_lazy_frame_equals_the_hand_guided_model(integrator):
    model = ClassGMM()
    options = dict(schedule="pointmass", steps=5, integrator=integrator, seed=3, dtype=F64,
                   model_kwargs={"y": LABELS})
    ours = sample(guided(model, 2.5, null={"y": NULL}), SHAPE, **options)
    by_hand = sample(hand_guided(ClassGMM(), 2.5), SHAPE, **options)
    assert torch.allclose(ours, by_hand, atol=1e-10)
    assert set(model.batches) == {12}                                   # every call: one doubled batch
    assert len(model.batches) == INTEGRATORS[integrator].nfe(5)


def test_guided_euler_in_the_source_frame_is_the_hand_written_loop():
    """In the model's own frame the conversion is the identity: sample's Euler run is x += h v_guided."""
    model = ClassGMM()
    steps, scale = 6, 1.8
    z = torch.randn(SHAPE, dtype=F64, generator=torch.Generator().manual_seed(0))
    ours = sample(guided(model, scale, null={"y": NULL}), SHAPE, schedule="linear", steps=steps, integrator="euler",
                  dtype=F64, initial=z, model_kwargs={"y": LABELS})
    velocity, x = hand_guided(ClassGMM(), scale), z.clone()
    for k in range(steps):
        x = x + velocity(x, torch.full((6,), k / steps, dtype=F64), LABELS) / steps
    assert torch.allclose(ours, x, atol=1e-10)


@pytest.mark.parametrize("schedule", ["pointmass", "vp", "linear-sde"])
def test_scale_one_is_the_conditional_model(schedule):
    options = dict(schedule=schedule, steps=6, integrator="multistep-pc", seed=1, dtype=F64,
                   model_kwargs={"y": LABELS})
    ours = sample(guided(ClassGMM(), 1.0, null={"y": NULL}), SHAPE, **options)
    conditional = sample(ClassGMM(), SHAPE, **options)
    assert torch.allclose(ours, conditional, atol=1e-10)


def test_guidance_interval_makes_plain_calls_outside():
    model = ClassGMM()
    wrapped = guided(model, 3.0, null={"y": NULL}, interval=(0.0, 0.5))
    x = sample(wrapped, SHAPE, schedule="linear", steps=4, integrator="euler", dtype=F64, model_kwargs={"y": LABELS})
    assert model.batches == [12, 12, 12, 6]                             # t = 0, 0.25, 0.5 guided; 0.75 plain
    assert wrapped.calls == 4
    # the plain calls are the conditional model: equal to a hand loop that guides only where t <= 0.5
    velocity, cond = hand_guided(ClassGMM(), 3.0), ClassGMM()
    ref_model = (lambda x_, t_, y: velocity(x_, t_, y) if float(t_[0]) <= 0.5 else cond(x_, t_, y))
    ref = sample(ref_model, SHAPE, schedule="linear", steps=4, integrator="euler", dtype=F64,
                 model_kwargs={"y": LABELS})
    assert torch.allclose(x, ref, atol=1e-10)


def test_per_sample_null_conditioning_and_shared_keywords():
    """Null conditioning passed per sample under another keyword (negative prompts); shared tensors
    with a batch dimension are repeated, others passed as they are; labels follow their samples."""
    seen = {}

    def model(x, t, emb, ids):
        seen.update(emb=emb.clone(), ids=ids)
        return emb[:, :2].to(x.dtype) - x

    emb, neg = torch.randn(6, 3), torch.randn(6, 3)
    wrapped = guided(model, 2.0, null={"emb": "negative"})
    x = torch.randn(6, 2)
    out = wrapped(x, torch.zeros(6), emb=emb, negative=neg, ids=torch.arange(4))
    assert torch.equal(seen["emb"], torch.cat([emb, neg])) and torch.equal(seen["ids"], torch.arange(4))
    assert torch.allclose(out, neg[:, :2] + 2.0 * (emb[:, :2] - neg[:, :2]) - x)
    shared = guided(model, 2.0, null={"emb": torch.zeros(3)})                     # one row for every sample
    assert torch.allclose(shared(x, torch.zeros(6), emb=emb, ids=None), 2.0 * emb[:, :2] - x)
    full = sample(guided(ClassGMM(), 2.0, null={"y": NULL}), SHAPE, steps=4, seed=2, dtype=F64,
                  model_kwargs={"y": LABELS}, schedule="pointmass", integrator="euler")
    halves = sample(guided(ClassGMM(), 2.0, null={"y": NULL}), SHAPE, steps=4, seed=2, dtype=F64,
                    model_kwargs={"y": LABELS}, batch_size=4, schedule="pointmass", integrator="euler")
    assert torch.allclose(full, halves, atol=1e-12)


def test_channels_guides_only_the_first_ones():
    def model(x, t, y):
        return torch.cat([x, x], 1) * (1.0 + y.reshape(-1, 1).to(x.dtype))

    x = torch.ones(2, 2)
    out = guided(model, 3.0, null={"y": 0}, channels=1)(x, torch.zeros(2), y=torch.tensor([1, 1]))
    assert torch.equal(out, torch.tensor([[4.0, 2.0, 2.0, 2.0]] * 2))   # 1 + 3 (2 - 1) = 4, then the conditional


def test_refusals():
    model = ClassGMM()
    with pytest.raises(LazyflowError, match="finite number"):
        guided(model, float("nan"), null={"y": NULL})
    with pytest.raises(LazyflowError, match="non-empty mapping"):
        guided(model, 2.0, null={})
    with pytest.raises(LazyflowError, match="interval"):
        guided(model, 2.0, null={"y": NULL}, interval=(0.8, 0.2))
    with pytest.raises(LazyflowError, match="no conditional 'y'"):
        guided(model, 2.0, null={"y": NULL})(torch.zeros(2, 2), torch.zeros(2))
