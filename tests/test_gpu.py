"""Checks that need CUDA (marked gpu; skipped without it): CPU and GPU agree, half-precision models
keep a float32 state, compile on the GPU, and NCCL distributed sampling with one GPU."""
import subprocess
import sys
import textwrap

import pytest
import torch

from lazyflow import sample
from lazyflow.runtime import models
from lazyflow.runtime.core.noise import CounterNormal

pytestmark = pytest.mark.gpu


def test_noise_words_are_bitwise_equal_and_normals_close_on_cpu_and_gpu():
    cpu, gpu = CounterNormal(3, range(64), (4, 8, 8)), CounterNormal(3, range(64), (4, 8, 8), device="cuda")
    for draw in (0, 5):
        assert torch.equal(cpu.words(draw), gpu.words(draw).cpu())
        assert torch.allclose(cpu(draw), gpu(draw).cpu(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("schedule,integrator", [("pointmass", "multistep-pc"), ("linear-sde", "euler"),
                                                 ("vp", "heun")])
def test_cpu_and_gpu_samples_agree(schedule, integrator):
    net = models.load("digits")
    options = dict(schedule=schedule, integrator=integrator, steps=8, seed=0)
    with torch.no_grad():
        cpu = sample(net, (64, 1, 8, 8), **options)
        gpu = sample(net.cuda(), (64, 1, 8, 8), device="cuda", **options).cpu()
    assert (cpu - gpu).abs().max() < 1e-3


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
def test_half_models_keep_a_float32_state_on_the_gpu(half):
    net = models.load("digits").cuda()
    with torch.no_grad():
        ref = sample(net, (256, 1, 8, 8), schedule="pointmass", steps=8, integrator="multistep-pc", device="cuda")
        low = sample(net.to(half), (256, 1, 8, 8), schedule="pointmass", steps=8, integrator="multistep-pc",
                     device="cuda")
    assert low.dtype == torch.float32
    assert (low - ref).abs().mean() < 0.05


def test_compile_on_the_gpu_equals_eager():
    net = models.load("digits").cuda()
    with torch.no_grad():
        eager = sample(net, (64, 1, 8, 8), schedule="linear-sde", steps=6, device="cuda", integrator="euler")
        compiled = sample(net, (64, 1, 8, 8), schedule="linear-sde", steps=6, device="cuda", compile=True, integrator="euler")
    assert torch.allclose(eager, compiled, atol=1e-5)


def test_nccl_with_one_gpu(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent('''
        import sys, torch, torch.distributed as dist
        from lazyflow import sample
        from lazyflow.runtime import models
        net = models.load("digits").cuda()
        with torch.no_grad():
            x = sample(net, (9, 1, 8, 8), schedule="pointmass", steps=4, device="cuda", distributed=True)
        assert dist.get_backend() == "nccl"
        torch.save(x.cpu(), sys.argv[1])
        dist.destroy_process_group()
    '''))
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
                    str(script), str(tmp_path / "x.pt")], check=True, timeout=300)
    with torch.no_grad():
        single = sample(models.load("digits").cuda(), (9, 1, 8, 8), schedule="pointmass", steps=4, device="cuda", integrator="euler")
    assert torch.allclose(torch.load(tmp_path / "x.pt", weights_only=True), single.cpu(), atol=1e-5)
