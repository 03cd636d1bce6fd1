"""Nothing lost, nothing overwritten by surprise, runs that resume: ``lazyflow sample`` checks its output
before sampling, refuses existing output without --force, keeps each finished batch in OUT.partial/
(runtime/core/resume.py) and --resume ends with the bits of an uninterrupted run."""
import json
import os
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from lazyflow import LazyflowError, SamplingError
from lazyflow.cli import main
from lazyflow.runtime.core import resume as resume_module
from lazyflow.runtime.core.output import keep_batches
from lazyflow.runtime.core.resume import WorkDir, settings_mismatch, work_dir
from lazyflow.runtime.models.sampling import sample_to_file

pytestmark = pytest.mark.usefixtures("one_torch_thread")   # tiny models (tests/conftest.py)

RUN = dict(num_samples=12, batch_size=4, steps=3, seed=0, schedule="linear", integrator="euler")


class Stop(KeyboardInterrupt):
    """The interrupt the tests raise after some batches (a Ctrl-C at a chosen moment)."""


def interrupted(monkeypatch, out, after, **options):
    """A run of the digits model stopped by an interrupt once ``after`` batches were kept."""
    keep, calls = WorkDir.keep, []

    def keep_then_stop(self, indices, x):
        keep(self, indices, x)
        calls.append(indices)
        if len(calls) == after:
            raise Stop

    monkeypatch.setattr(WorkDir, "keep", keep_then_stop)
    with pytest.raises(Stop):
        sample_to_file("digits", out, **{**RUN, **options})
    monkeypatch.setattr(WorkDir, "keep", keep)
    return calls


def counting(monkeypatch):
    """The batches kept from now on (their indices)."""
    keep, calls = WorkDir.keep, []

    def counted(self, indices, x):
        calls.append(indices)
        keep(self, indices, x)

    monkeypatch.setattr(WorkDir, "keep", counted)
    return calls


@pytest.mark.parametrize("suffix", [".npy", ".pt", ".png"])
def test_two_step_resume_gives_the_uninterrupted_bytes(tmp_path, monkeypatch, suffix):
    """Interrupted after batch 1 of 3, resumed: only batches 2 and 3 run, the file equals the
    uninterrupted run's byte for byte, and the work folder is gone."""
    reference, out = tmp_path / "ref" / f"x{suffix}", tmp_path / f"x{suffix}"
    sample_to_file("digits", reference, **RUN)
    assert interrupted(monkeypatch, out, after=1) == [range(0, 4)]
    assert not out.exists() and (work_dir(out) / "batch-000000000-000000004.npy").is_file()
    notes, ran = [], counting(monkeypatch)
    sample_to_file("digits", out, resume=True, note=notes.append, **RUN)
    assert ran == [range(4, 8), range(8, 12)]
    assert notes == ["resuming: 1 of 3 batches were finished"]
    assert out.read_bytes() == reference.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, "ref"])


def test_a_resumed_run_removes_what_a_killed_writer_of_its_output_left(tmp_path, monkeypatch):
    """A run killed while writing OUT leaves ``.OUT.PID.RANDOM.tmp`` (a SIGKILL runs no cleanup); the resumed run
    removes it, so that only OUT is left (what the SIGKILL test below checks at random moments)."""
    out = tmp_path / "x.npy"
    interrupted(monkeypatch, out, after=1)
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    (tmp_path / f".x.npy.{ended.pid}.0badc0de.tmp").write_bytes(b"half an array")
    sample_to_file("digits", out, resume=True, **RUN)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy"]


def test_a_damaged_batch_is_run_again(tmp_path, monkeypatch):
    """A finished batch whose file no longer matches the manifest's hash is not trusted."""
    reference, out = tmp_path / "ref.npy", tmp_path / "x.npy"
    sample_to_file("digits", reference, **RUN)
    interrupted(monkeypatch, out, after=2)
    damaged = work_dir(out) / "batch-000000004-000000008.npy"
    data = bytearray(damaged.read_bytes())
    data[-1] ^= 0xFF
    damaged.write_bytes(bytes(data))
    ran = counting(monkeypatch)
    sample_to_file("digits", out, resume=True, **RUN)
    assert ran == [range(4, 8), range(8, 12)]
    assert np.array_equal(np.load(out), np.load(reference))


@pytest.mark.parametrize("change, named", [
    (dict(seed=1), "seed: 0 there, 1 here"),
    (dict(batch_size=6), "batch size: 4 there, 6 here"),
    (dict(steps=4), "steps: 3 there, 4 here"),
    (dict(integrator="heun"), 'integrator: "euler" there, "heun" here'),
    (dict(num_samples=13), "num samples: 12 there, 13 here"),
])
def test_resume_refuses_other_settings(tmp_path, monkeypatch, change, named):
    out = tmp_path / "x.npy"
    interrupted(monkeypatch, out, after=1)
    before = sorted(p.name for p in work_dir(out).iterdir())
    with pytest.raises(LazyflowError, match="holds a run made with other settings") as refused:
        sample_to_file("digits", out, resume=True, **{**RUN, **change})
    assert named in str(refused.value) and "--force" in str(refused.value)
    assert sorted(p.name for p in work_dir(out).iterdir()) == before     # nothing touched


def test_unfinished_run_needs_resume_or_force(tmp_path, monkeypatch):
    reference, out = tmp_path / "ref.npy", tmp_path / "x.npy"
    sample_to_file("digits", reference, **RUN)
    interrupted(monkeypatch, out, after=1)
    with pytest.raises(LazyflowError, match=r"x.npy.partial/ holds an unfinished run: add --resume"):
        sample_to_file("digits", out, **RUN)
    manifest = work_dir(out) / "manifest.json"
    recorded = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**recorded, "lazyflow": "0.0.1"}))
    with pytest.raises(LazyflowError, match='lazyflow: "0.0.1" there'):
        sample_to_file("digits", out, resume=True, **RUN)
    ran = counting(monkeypatch)
    sample_to_file("digits", out, force=True, **RUN)    # starts over: all three batches
    assert len(ran) == 3 and out.read_bytes() == reference.read_bytes() and not work_dir(out).exists()
    with pytest.raises(LazyflowError, match="give one of them"):
        sample_to_file("digits", out, force=True, resume=True, **RUN)


def test_keep_batches_says_what_is_kept(tmp_path, capsys):
    """A failure or Ctrl-C in batch 3 keeps batches 1 and 2 in the work folder, and the message says so."""
    def batches(error):
        yield range(0, 2), torch.zeros(2, 1, 8, 8)
        yield range(2, 4), torch.ones(2, 1, 8, 8)
        raise error

    out = tmp_path / "x.npy"
    work = WorkDir.open(out, {"seed": 0})
    with pytest.raises(SamplingError, match=r"NaN at step 3 \(the 4 samples of 2 finished batches are kept in "
                                            r".*x.npy.partial/\)$"):
        keep_batches(batches(SamplingError("the model returned NaN at step 3")), work)
    assert [work.load(r).mean().item() for r in (range(0, 2), range(2, 4))] == [0.0, 1.0]
    with pytest.raises(KeyboardInterrupt, match=r"^interrupted; the 4 samples of 2 finished batches are kept in "
                                                r".*x.npy.partial/: run it again with --resume to continue$"):
        keep_batches(batches(KeyboardInterrupt()), WorkDir.open(out, {"seed": 0}))
    assert capsys.readouterr().err == ""            # said once, by whoever catches it (the command line)
    with pytest.raises(SamplingError, match="rank 1 of 2 died; the 2 samples of 1 finished"):
        keep_batches(batches(AssertionError()), WorkDir.open(tmp_path / "y.npy", {}), why=lambda: "rank 1 of 2 died")
    assert not out.exists()


def test_settings_mismatch_names_the_first_difference():
    assert settings_mismatch({"a": 1, "b": [1, 2]}, {"a": 1, "b": [1, 2]}) is None
    assert settings_mismatch({"a": 1, "b": 2}, {"a": 1, "b": 3}) == "b: 2 there, 3 here"
    assert settings_mismatch({"a": 1}, {"a": 1, "c": "x"}) == 'c: null there, "x" here'
    assert settings_mismatch({"a": 1, "old": 0}, {"a": 1}) == "old: 0 there, null here"


def test_existing_output_is_refused_without_force(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["sample", "--model", "digits", "--steps", "2", "--n", "3", "--out", "x.npy"]
    assert main(argv) == 0
    first = (tmp_path / "x.npy").read_bytes()
    capsys.readouterr()
    assert main([*argv[:-1], "y.npy", "--seed", "1"]) == 0
    (tmp_path / "y.npy").rename(tmp_path / "x.npy")
    other = (tmp_path / "x.npy").read_bytes()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == "lazyflow sample: error: x.npy exists: add --force to overwrite it\n"
    assert (tmp_path / "x.npy").read_bytes() == other != first
    assert main([*argv, "--force"]) == 0
    assert (tmp_path / "x.npy").read_bytes() == first
    assert main([*argv, "--resume"]) == 2
    assert "it is finished): add --force to make it again" in capsys.readouterr().err


def test_refused_before_sampling(tmp_path, capsys, monkeypatch):
    """A format that cannot hold the samples, a folder as --out, a file as the folder: one line, exit 2,
    nothing written, and no model call."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "folder.npy").mkdir()
    (tmp_path / "file").write_text("")
    called = []
    monkeypatch.setattr(resume_module.WorkDir, "open", lambda *a, **k: called.append(a))
    cases = [(["--model", "gmm:3", "--out", "flat.png"], "an image grid needs image samples (C, H, W), these "
              "have shape (32,): write .npy or .pt"),
             (["--out", "folder.npy"], "folder.npy is a folder: --out names the file to write"),
             (["--out", "file/x.npy"], "cannot write file/x.npy: file is not a folder")]
    for argv, message in cases:
        assert main(["sample", "--steps", "2", "--n", "3", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert called == [] and sorted(p.name for p in tmp_path.iterdir()) == ["file", "folder.npy"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_unwritable_folder_is_refused(tmp_path, capsys):
    folder = tmp_path / "locked"
    folder.mkdir(mode=0o500)
    assert main(["sample", "--steps", "2", "--n", "3", "--out", str(folder / "x.npy")]) == 2
    assert "permission denied" in capsys.readouterr().err


def test_missing_folders_are_made(tmp_path):
    out = tmp_path / "a" / "b" / "x.npy"
    sample_to_file("digits", out, **RUN)
    assert np.load(out).shape == (12, 1, 8, 8)


KILLER = textwrap.dedent('''
    """Fork a ``lazyflow sample`` run and SIGKILL it at random moments until KILLS kills landed, resuming
    each time; prints one JSON line per run: rc (-9 killed) and the seconds it ran."""
    import json, os, random, signal, sys, time
    from lazyflow.cli import main
    from lazyflow.runtime.models import sampling, builtin   # imported once, before the forks

    argv, kills, seed = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])

    def run(extra, kill_at):
        start, status = time.monotonic(), None
        pid = os.fork()
        if pid == 0:
            sys.stdout = open(os.devnull, "w")
            os.dup2(sys.stdout.fileno(), 1), os.dup2(sys.stdout.fileno(), 2)
            os._exit(main(argv + extra))
        while kill_at is not None and status is None and time.monotonic() - start < kill_at:
            got, code = os.waitpid(pid, os.WNOHANG)
            status = code if got else None
            time.sleep(0.002)
        if status is None and kill_at is not None:
            os.kill(pid, signal.SIGKILL)
        if status is None:
            status = os.waitpid(pid, 0)[1]
        rc = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        return rc, time.monotonic() - start

    rng = random.Random(seed)
    rc, whole = run(["--out", "ref.npy"], None)
    print(json.dumps({"rc": rc, "seconds": whole}), flush=True)
    landed = 0
    while landed < kills:
        rc, took = run(["--out", "x.npy", "--resume"], rng.uniform(0, 1.1 * whole))
        landed += rc == -9
        print(json.dumps({"rc": rc, "seconds": took}), flush=True)
        if rc != -9:   # finished (0) or already finished (2): the output must be the reference; start again
            assert open("x.npy", "rb").read() == open("ref.npy", "rb").read(), "differs"
            os.remove("x.npy")
    rc, took = run(["--out", "x.npy", "--resume"], None)
    print(json.dumps({"rc": rc, "seconds": took}), flush=True)
''')


@pytest.mark.slow
def test_sigkill_at_20_random_moments_then_resume_gives_the_same_bytes(tmp_path):
    """A run of 24 batches SIGKILLed at 20 random moments (startup, sampling, writing a batch or the
    manifest, assembling, removing the work folder), resumed each time: the final file is byte for byte
    the uninterrupted one (also at every finish in between), and nothing is left beside it."""
    (tmp_path / "killer.py").write_text(KILLER)
    argv = ["sample", "--model", "digits", "--steps", "24", "--n", "192", "--batch-size", "8", "--seed", "5"]
    done = subprocess.run([sys.executable, "killer.py", json.dumps(argv), "20", str(random.randrange(1 << 30))],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    runs = [json.loads(line) for line in done.stdout.splitlines()]
    assert runs[0]["rc"] == 0 and sum(r["rc"] == -9 for r in runs) == 20
    assert runs[-1]["rc"] in (0, 2)    # 2: the last kill came after the output was complete
    assert (tmp_path / "x.npy").read_bytes() == (tmp_path / "ref.npy").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["killer.py", "ref.npy", "x.npy"]


def test_a_full_disk_is_one_message_that_says_what_is_kept(tmp_path, monkeypatch):
    """An OSError while keeping batch 2 (no space left): a LazyflowError naming the batch and the
    reason, batch 1 kept and counted, no temporary file left."""
    from pathlib import Path

    work, real, calls = WorkDir.open(tmp_path / "x.npy", {}), Path.write_bytes, []

    def full(self, data):
        calls.append(self)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(self, data)

    def batches():
        yield range(0, 2), torch.zeros(2, 3)
        yield range(2, 4), torch.ones(2, 3)

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(LazyflowError, match=r"cannot keep the batch batch-000000002-000000004.npy in .*: No space "
                                            r"left on device \(the 2 samples of 1 finished batches are kept"):
        keep_batches(batches(), work)
    monkeypatch.undo()
    assert sorted(p.name for p in work.folder.iterdir()) == ["batch-000000000-000000002.npy", "manifest.json",
                                                            "manifest.log"]
    assert WorkDir.open(tmp_path / "x.npy", {}).finished.keys() == {"batch-000000000-000000002.npy"}


def test_shards_need_a_sample_for_every_rank(tmp_path, monkeypatch):
    """Four processes and three samples: one rank would have no shard to write (an image shard cannot be
    empty): refused before anything is sampled or written."""
    from lazyflow.runtime.core import distributed

    monkeypatch.setattr(distributed, "launched_by_torchrun", lambda: True)
    monkeypatch.setattr(distributed, "ranks_of", lambda flag, device: distributed.Ranks(rank=0, world=4))
    with pytest.raises(LazyflowError, match="3 samples on 4 processes leave a rank without a shard"):
        sample_to_file("digits", tmp_path / "d.png", num_samples=3, shards=True)
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_is_one_line_that_says_what_is_kept(tmp_path, monkeypatch, capsys):
    """Ctrl-C after a finished batch: ``lazyflow sample`` prints one line (what is kept, how to continue) and
    exits 130; before any batch finished, the line says it was interrupted."""
    keep = WorkDir.keep

    def keep_then_stop(self, indices, x):
        keep(self, indices, x)
        raise KeyboardInterrupt

    monkeypatch.setattr(WorkDir, "keep", keep_then_stop)
    argv = ["sample", "--model", "digits", "--steps", "2", "--n", "8", "--batch-size", "4", "--out", str(tmp_path / "x.npy")]
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lazyflow sample: interrupted; the 4 samples of 1 finished batches ")
    def stop(self, indices, x):
        raise KeyboardInterrupt

    monkeypatch.setattr(WorkDir, "keep", stop)
    assert main([*argv, "--force"]) == 130
    assert capsys.readouterr().err == "lazyflow: interrupted\n"
