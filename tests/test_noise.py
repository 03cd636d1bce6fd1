"""The counter-based device noise: the published SplitMix64 values, bitwise independence of batching,
the moments and independence of the normals, and a fixed-seed regression value."""
import math

import pytest
import torch

from lazyflow import sample
from lazyflow.runtime.core.noise import GOLDEN, CounterNormal, mix64, signed, splitmix, standard_normal

pytestmark = pytest.mark.usefixtures("one_torch_thread")   # tiny models (tests/conftest.py)


def test_splitmix_matches_the_published_sequence():
    """SplitMix64 seeded 1234567 (Vigna's reference implementation) starts with these five outputs."""
    state, out = 1234567, []
    for _ in range(5):
        state = (state + GOLDEN) % (1 << 64)
        out.append(splitmix(state))
    assert out == [6457827717110365317, 3203168211198807973, 9817491932198370423, 4593380528125082431,
                   16408922859458223821]


def test_tensor_mix_equals_the_integer_reference():
    values = [0, 1, 2**63 - 1, 2**63, 2**64 - 1, 0xDEADBEEFCAFEBABE, 12345678901234567]
    got = mix64(torch.tensor([signed(v) for v in values], dtype=torch.int64)).tolist()
    assert got == [signed(splitmix(v)) for v in values]


def test_fixed_seed_regression_value():
    """Pinned so that a change of the stream (which changes every sample) cannot pass unnoticed."""
    z = standard_normal(7, range(2), 1, (3,))
    expected = torch.tensor([[-1.0597651, 0.9927264, -0.2876040], [-0.1613949, 0.4592029, 1.4016391]])
    assert torch.allclose(z, expected, atol=1e-6), z


def test_values_follow_the_documented_construction():
    """key = mix(i G + mix(seed)) ^ mix(d G + D), word j = mix(key + j G), Box-Muller on its halves:
    recomputed with Python integers and math in float64."""
    from lazyflow.runtime.core.noise import DRAW_SALT

    seed, draw, mask = 7, 3, (1 << 64) - 1
    z = standard_normal(seed, range(3), draw, (5,)).double()
    for i in range(3):
        key = splitmix((i * GOLDEN + splitmix(seed)) & mask) ^ splitmix((draw * GOLDEN + DRAW_SALT) & mask)
        values = []
        for j in range(3):
            word = splitmix((key + j * GOLDEN) & mask)
            hi, lo = word >> 32, word & 0xFFFFFFFF
            radius = math.sqrt(-2 * math.log((hi + 0.5) / 2**32))
            angle = 2 * math.pi * lo / 2**32
            values += [radius * math.cos(angle), radius * math.sin(angle)]
        assert torch.allclose(z[i], torch.tensor(values[:5], dtype=torch.float64), atol=2e-6), (z[i], values)


def test_draws_do_not_depend_on_batching_or_order():
    whole = CounterNormal(3, range(10), (5, 3))
    first, rest = CounterNormal(3, range(0, 4), (5, 3)), CounterNormal(3, range(4, 10), (5, 3))
    picked = CounterNormal(3, [7, 2], (5, 3))
    for draw in (0, 1, 9):
        assert torch.equal(whole(draw), torch.cat([first(draw), rest(draw)]))
        assert torch.equal(picked(draw), whole(draw)[[7, 2]])


def test_seeds_samples_and_draws_give_different_streams():
    a = standard_normal(0, range(3), 0, (64,))
    assert not torch.equal(a, standard_normal(1, range(3), 0, (64,)))
    assert not torch.equal(a, standard_normal(0, range(3), 1, (64,)))
    assert not torch.equal(a[1], a[0])


def test_odd_element_counts_and_dtypes():
    z = standard_normal(0, range(2), 0, (3, 1, 5), dtype=torch.float64)
    assert z.shape == (2, 3, 1, 5) and z.dtype == torch.float64
    assert torch.equal(z[:, :, 0, :4].float(), standard_normal(0, range(2), 0, (3, 1, 5))[:, :, 0, :4])
    with pytest.raises(ValueError, match="indices"):
        CounterNormal(0, [-1], (2,))


def test_moments_and_normality():
    z = standard_normal(11, range(2000), 1, (100,)).double().flatten()   # 200,000 normals
    n = z.numel()
    assert abs(z.mean()) < 4 / math.sqrt(n)
    assert abs(z.var() - 1) < 4 * math.sqrt(2 / n)
    assert abs((z**3).mean()) < 4 * math.sqrt(15 / n)
    assert abs((z**4).mean() - 3) < 4 * math.sqrt(96 / n)
    # Kolmogorov-Smirnov against the normal CDF: the 0.1% critical value is 1.95 / sqrt(n)
    cdf = 0.5 * (1 + torch.erf(z.sort().values / math.sqrt(2)))
    grid = torch.arange(1, n + 1, dtype=torch.float64) / n
    assert (cdf - grid).abs().max() < 1.95 / math.sqrt(n)
    # the tails are there (P(|z| > 4) = 6.3e-5: about 13 expected)
    assert 2 <= int((z.abs() > 4).sum()) <= 35


def test_no_correlation_across_samples_steps_and_elements():
    """Correlation between neighbouring samples, draws and elements, and between the two normals of a word."""
    noise = CounterNormal(5, range(4000), (50,))
    a, b = noise(1).double(), noise(2).double()
    bound = 4 / math.sqrt(a.numel())

    def corr(u, v):
        u, v = u.flatten() - u.mean(), v.flatten() - v.mean()
        return float((u * v).mean() / (u.std() * v.std()))

    assert abs(corr(a, b)) < bound                       # the same sample at two steps
    assert abs(corr(a[1:], a[:-1])) < bound              # neighbouring samples
    assert abs(corr(a[:, 1:], a[:, :-1])) < bound         # neighbouring elements (the two halves of a word)
    assert abs(corr(a[:, ::2], a[:, 1::2])) < bound
    assert abs(corr(a**2, b**2)) < bound * 3              # no dependence through the radius either


def test_sampling_is_bitwise_independent_of_batch_size():
    """An element-wise model on a stochastic schedule: the samples are the same bits in any batching."""
    def model(x, t):
        return -x * t.reshape(-1, 1)

    runs = [sample(model, (11, 4), schedule="linear-sde", steps=6, integrator="euler", seed=4, batch_size=b)
            for b in (None, 3, 1)]
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])


def test_noise_option_replaces_the_stream():
    """A user noise factory: here all-zero draws make the SDE run equal its zero-noise limit."""
    def zeros(seed, indices, shape, *, device, dtype):
        return lambda draw: torch.zeros((len(indices), *shape), device=device, dtype=dtype)

    def model(x, t):
        return torch.zeros_like(x)

    x = sample(model, (4, 3), schedule="pointmass", steps=4, noise=zeros, integrator="euler")
    assert torch.equal(x, torch.zeros(4, 3))
    assert not torch.equal(sample(model, (4, 3), schedule="pointmass", steps=4, integrator="euler"), x)
