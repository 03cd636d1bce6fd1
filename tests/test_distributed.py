"""Sampling across processes with torch.distributed (gloo on the CPU, launched by torchrun): each rank
samples its share of the indices, and the gathered result is the single-process one."""
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from lazyflow.runtime.core.distributed import Ranks, share

SCRIPT = textwrap.dedent('''
    import sys
    import torch
    import torch.distributed as dist
    from lazyflow import sample
    from lazyflow.runtime.core.sampler import sample_batches

    def model(x, t, scale=None):   # element-wise, with per-sample conditioning
        out = -x * t.reshape(-1, 1)
        return out if scale is None else out * scale.reshape(-1, 1)

    results = {}
    for n in (7, 1):   # n = 1: rank 1 has nothing to do
        scale = torch.linspace(0.5, 1.5, n)
        options = dict(schedule="linear-sde", steps=5, seed=3, batch_size=2, distributed=True,
                       model_kwargs={"scale": scale})
        results[f"x{n}"] = sample(model, (n, 5), **options)
        results[f"indices{n}"] = [list(indices) for indices, _ in sample_batches(model, (n, 5), **options)]
    if dist.get_rank() == 0:
        torch.save(results, sys.argv[1])
    dist.barrier()
    dist.destroy_process_group()
''')


def torchrun(*args, processes=2, cwd=None):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes),
               "--standalone", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=cwd,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_share_splits_contiguously_and_evenly():
    for n in (0, 1, 5, 7, 64):
        for world in (1, 2, 3, 8):
            parts = [share(n, Ranks(r, world)) for r in range(world)]
            assert [i for p in parts for i in p] == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_two_processes_give_the_single_process_samples(tmp_path):
    """Bitwise for an element-wise model, with per-sample conditioning, and with an idle rank (n = 1)."""
    import torch

    from lazyflow import sample

    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    torchrun(str(script), str(tmp_path / "out.pt"))
    got = torch.load(tmp_path / "out.pt", weights_only=True)

    def model(x, t, scale=None):
        return -x * t.reshape(-1, 1) * scale.reshape(-1, 1)

    for n, rank0_batches in ((7, [[0, 1], [2, 3]]), (1, [[0]])):
        scale = torch.linspace(0.5, 1.5, n)
        single = sample(model, (n, 5), schedule="linear-sde", steps=5, seed=3, model_kwargs={"scale": scale})
        assert torch.equal(got[f"x{n}"], single)
        assert got[f"indices{n}"] == rank0_batches


@pytest.mark.slow
def test_torchrun_cli_gathers_and_shards(tmp_path):
    """``torchrun -m lazyflow sample --num-samples``: rank 0 writes the gathered samples; ``--shards`` writes
    one file per rank and an index; both equal one process's samples to float tolerance (the MLP's matrix
    products depend on the batch size)."""
    flags = ["-m", "lazyflow", "sample", "--model", "digits", "--schedule", "pointmass", "--steps", "4",
             "--num-samples", "9", "--seed", "2"]
    torchrun(*flags, "--out", "all.npy", cwd=tmp_path)
    torchrun(*flags, "--out", "part.npy", "--shards", cwd=tmp_path)
    subprocess.run([sys.executable, *flags, "--out", "one.npy"], cwd=tmp_path, check=True, capture_output=True)
    one = np.load(tmp_path / "one.npy")
    assert np.allclose(np.load(tmp_path / "all.npy"), one, atol=1e-5)
    index = json.loads((tmp_path / "part.index.json").read_text())
    assert [(s["start"], s["stop"]) for s in index["shards"]] == [(0, 5), (5, 9)]
    parts = np.concatenate([np.load(tmp_path / s["file"]) for s in index["shards"]])
    assert np.allclose(parts, one, atol=1e-5)
    assert np.array_equal(parts, np.load(tmp_path / "all.npy"))
