"""sigma = lambda * sigma_kernel at run time: the drift, the noise and the exact exponential step."""
import pytest
import torch

from lazyflow import LazyflowError, load_schedule, sample

from exact import gaussian_velocity, rk4

pytestmark = pytest.mark.usefixtures("one_torch_thread")   # tiny models (tests/conftest.py)

F64 = torch.float64


def _moments_by_rk4(schedule, t0: float, t1: float, n: int = 250):
    """Mean coefficients (a, b) and variance v of the linear SDE dx = (K_x x + K_e eta) dt + sigma dW over
    [t0, t1] with eta frozen: a' = K_x a, b' = K_x b + K_e, v' = 2 K_x v + sigma^2 (RK4 in t).  250 steps on
    [0.3, 0.55] are within 4e-11 of the closed form for every schedule and scale tested (4000 steps: 1e-13),
    far inside the test's 1e-7 relative tolerance."""
    def rhs(t, y):
        tt = torch.tensor([t], dtype=F64)
        K_x, K_e = schedule.drift(tt)
        sigma = schedule.values(tt).sigma
        a, b, v = y
        return torch.stack([K_x[0] * a, K_x[0] * b + K_e[0], 2 * K_x[0] * v + sigma[0] ** 2])

    return rk4(rhs, torch.tensor([1.0, 0.0, 0.0], dtype=F64), t0, t1, n)


@pytest.mark.parametrize("name", ["linear-sde", "vp-sde", "pointmass"])
@pytest.mark.parametrize("scale", [0.0, pytest.param(0.3, marks=pytest.mark.slow), 1.0,
                                   pytest.param(1.7, marks=pytest.mark.slow)])   # 0.3 and 1.7 in the slow pass
def test_exponential_step_is_the_exact_solution_of_the_scaled_sde(name, scale):
    if scale == 0 and name == "pointmass":
        pytest.skip("a point-mass schedule needs diffusion")
    schedule = load_schedule(name).with_diffusion_scale(scale)
    t0, t1 = 0.3, 0.55
    A, B, C = schedule.exponential(torch.tensor([t0], dtype=F64), torch.tensor([t1], dtype=F64))
    a, b, v = _moments_by_rk4(schedule, t0, t1)
    assert torch.allclose(torch.stack([A[0], B[0], C[0] ** 2]), torch.stack([a, b, v]), rtol=1e-7, atol=1e-10)


def test_scale_one_formula_reproduces_the_kernel_step():
    for name in ("linear-sde", "vp-sde", "pointmass"):
        schedule = load_schedule(name)
        t0 = torch.tensor([0.0, 0.1, 0.5, 0.9], dtype=F64)
        t1 = torch.tensor([0.2, 0.4, 0.7, 1.0], dtype=F64)
        got = schedule._scaled_exponential(t0, t1, schedule.exponential(t0, t1)[0])
        for x, y in zip(got, schedule.exponential(t0, t1)):
            assert torch.allclose(x, y, atol=1e-12), (name, x, y)


@pytest.mark.parametrize("scale", [0.25, 0.5, 2.0])
def test_every_scale_keeps_the_marginals(scale):
    """The SDEs v + eps s with sigma^2 = 2 eps share the interpolant's marginals: on N(0, 1) data, many
    steps end at variance 1 for any scale."""
    schedule = load_schedule("linear-sde").with_diffusion_scale(scale)
    x = sample(gaussian_velocity(1.0), (20000, 1), schedule=schedule, steps=200, integrator="multistep-pc",
               dtype=F64, seed=1)
    assert abs(x.var().item() - 1) < 0.04 and abs(x.mean().item()) < 0.03


def test_zero_scale_is_the_ode_and_names_say_the_scale():
    ode = sample(gaussian_velocity(0.5), (64, 2), schedule="linear", steps=6, integrator="multistep", dtype=F64)
    zero = sample(gaussian_velocity(0.5), (64, 2), schedule=load_schedule("linear-sde").with_diffusion_scale(0),
                  steps=6, integrator="multistep", dtype=F64)
    assert torch.allclose(ode, zero, atol=1e-12)
    assert load_schedule("linear-sde").with_diffusion_scale(0.5).describe() == "linear-sde(diffusion*0.5)"
    assert not load_schedule("linear-sde").with_diffusion_scale(0).stochastic


@pytest.mark.parametrize("name,scale,message", [("linear", 0.5, "no diffusion"), ("pointmass", 0, "needs diffusion"),
                                                ("linear-sde", -1, ">= 0"), ("linear-sde", float("nan"), ">= 0")])
def test_bad_scales_are_refused(name, scale, message):
    with pytest.raises(LazyflowError, match=message):
        load_schedule(name).with_diffusion_scale(scale)
