"""Sampling across processes with torch.distributed (gloo on the CPU, launched by torchrun): each rank
samples its share of the indices, and the gathered result is the single-process one."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

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


@pytest.mark.slow   # 5 s: two processes
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


def test_watchdog_stops_on_a_silent_rank_not_on_a_slow_one(monkeypatch):
    """In-process store: rank 1 never beats (declared dead after the limit, named), rank 2 said it
    finished (not watched); then a rank that keeps beating for longer than the limit is waited for."""
    import threading
    import time as clock

    import torch.distributed as dist

    from lazyflow import SamplingError
    from lazyflow.runtime.core import distributed

    store = dist.HashStore()
    monkeypatch.setattr(distributed, "_STORE", [store])
    with distributed.Watchdog(Ranks(0, 3), beat=0.02, limit=0.2) as dog:
        store.set(dog._key("done", 2), "1")
        with pytest.raises(SamplingError, match="rank 1 of 3 gave no sign of life for 0.2 s"):
            dog.finished()
    assert store.add(dog._key("beat", 0), 0) >= 5      # this rank beat meanwhile

    store = dist.HashStore()
    monkeypatch.setattr(distributed, "_STORE", [store])
    with distributed.Watchdog(Ranks(0, 2), beat=0.02, limit=0.2) as dog:
        def slow_peer():
            for _ in range(30):    # 0.6 s of beats, three times the limit, then done
                store.add(dog._key("beat", 1), 1)
                clock.sleep(0.02)
            store.set(dog._key("done", 1), "1")

        peer = threading.Thread(target=slow_peer)
        peer.start()
        dog.finished()
        peer.join()
    assert dog.failure is None


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


LONG = ["-m", "lazyflow", "sample", "--model", "digits", "--steps", "32", "--num-samples", "320", "--batch-size", "8",
        "--seed", "4"]   # 2 x 20 batches of 8: each batch the same 8 samples as in one process, so bitwise equal


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn_ranks(cwd, *flags, timeout="3"):
    """Two ranks started as torchrun starts them (RANK, WORLD_SIZE, MASTER_ADDR/PORT), without its agent
    (which would end the other rank itself)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port()), "LAZYFLOW_PEER_TIMEOUT": timeout}
    return [subprocess.Popen([sys.executable, *LONG, *flags], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, text=True) for r in range(2)]


def _when_batches(folder, count, processes, limit=120.0):
    """Wait until ``count`` batch files are in ``folder`` (or a process ended)."""
    start = time.monotonic()
    while len(list(folder.glob("batch-*.npy"))) < count:
        assert time.monotonic() - start < limit and all(p.poll() is None for p in processes)
        time.sleep(0.01)


def _single(cwd, out):
    subprocess.run([sys.executable, *LONG, "--out", out], cwd=cwd, check=True, capture_output=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    return np.load(cwd / out)


@pytest.mark.slow
@pytest.mark.parametrize("dead", [1, 0])
def test_a_dead_rank_stops_the_other_with_a_message_then_resume(tmp_path, dead):
    """Rank ``dead`` SIGKILLed mid-run: the other exits (rc 2) within the peer timeout (3 s) plus the
    watchdog's beat (1 s) and one batch, saying which rank died or that the store's host went away;
    rank 1 dead: torchrun --resume then ends with one process's samples, bitwise."""
    ranks = _spawn_ranks(tmp_path, "--out", "x.npy")
    _when_batches(tmp_path / "x.npy.partial", 4, ranks)
    ranks[dead].kill()
    killed = time.monotonic()
    other = ranks[1 - dead]
    _, err = other.communicate(timeout=60)
    took = time.monotonic() - killed
    ranks[dead].wait()
    last = err.strip().splitlines()[-1]
    said = "rank 1 of 2 gave no sign of life for 3 s" if dead == 1 else "lost the launcher's store"
    assert other.returncode == 2 and said in last and "--resume" in last, err[-2000:]
    assert took < 3 + 1 + 1 + 3, took    # timeout + beat + last-seen granularity + a batch and exit, generously
    if dead == 1:
        reference = _single(tmp_path, "one.npy")
        torchrun(*LONG, "--out", "x.npy", "--resume", cwd=tmp_path)
        assert np.array_equal(np.load(tmp_path / "x.npy"), reference)
        assert not (tmp_path / "x.npy.partial").exists()


@pytest.mark.slow
def test_torchrun_shards_resume_after_sigkill(tmp_path):
    """``torchrun ... --shards`` with both workers SIGKILLed mid-run, then ``--resume``: the shards hold
    one process's samples, bitwise; a resume with other settings is refused before any work."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
               *LONG, "--out", "x.npy", "--shards"]
    agent = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    _when_batches(tmp_path / "x.npy.partial", 6, [agent])
    workers = [int(line.split()[0]) for line in subprocess.run(["ps", "-o", "pid=", "--ppid", str(agent.pid)],
                                                              capture_output=True, text=True).stdout.splitlines()]
    assert len(workers) == 2
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    agent.wait(timeout=60)
    kept = sorted(p.name for p in (tmp_path / "x.npy.partial").glob("batch-*.npy"))
    assert 6 <= len(kept) < 40 and not (tmp_path / "x.index.json").exists()
    done = subprocess.run(command[:-3] + ["--seed", "5", "--out", "x.npy", "--shards", "--resume"], cwd=tmp_path,
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode != 0 and "seed: 4 there, 5 here" in done.stderr
    torchrun(*LONG, "--out", "x.npy", "--shards", "--resume", cwd=tmp_path)
    index = json.loads((tmp_path / "x.index.json").read_text())
    parts = np.concatenate([np.load(tmp_path / s["file"]) for s in index["shards"]])
    assert np.array_equal(parts, _single(tmp_path, "one.npy"))
