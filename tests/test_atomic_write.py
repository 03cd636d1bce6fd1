"""The one atomic-write helper (atomic_write.py) and the writers that go through it: a write that fails
leaves the old file as it was and no temporary behind; a write that succeeds leaves the new file alone."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from lazyflow import atomic_write
from lazyflow.atomic_write import atomic_path, write_bytes_atomic, write_text_atomic

OLD = "the old content\n"


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_write_replaces_the_file_and_leaves_nothing_else(tmp_path):
    target = tmp_path / "a.json"
    target.write_text(OLD)
    assert write_text_atomic(target, "new\n") == target
    assert target.read_text() == "new\n"
    assert write_bytes_atomic(str(target), b"\x00\x01") == target
    assert target.read_bytes() == b"\x00\x01"
    assert _files(tmp_path) == ["a.json"]


def test_the_temporary_is_hidden_beside_the_target_and_unique(tmp_path):
    with atomic_path(tmp_path / "x.npy") as first, atomic_path(tmp_path / "x.npy") as second:
        assert first.parent == tmp_path and first.name.startswith(".x.npy.") and first.name.endswith(".tmp")
        assert first != second
        first.write_text("1"), second.write_text("2")
    assert (tmp_path / "x.npy").read_text() == "1"    # the first block ended last: its content stands
    assert _files(tmp_path) == ["x.npy"]


@pytest.mark.parametrize("error", [ValueError("half written"), KeyboardInterrupt()])
def test_a_block_that_raises_leaves_the_old_file_and_no_temporary(tmp_path, error):
    target = tmp_path / "a.txt"
    target.write_text(OLD)
    with pytest.raises(type(error)):
        with atomic_path(target) as temporary:
            temporary.write_text("half")
            raise error
    assert target.read_text() == OLD
    assert _files(tmp_path) == ["a.txt"]


def test_a_failed_rename_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "in-the-way"
    target.mkdir()                                   # os.replace cannot put a file over a folder
    with pytest.raises(OSError):
        write_text_atomic(target, "new")
    assert target.is_dir() and _files(tmp_path) == ["in-the-way"]


def test_a_missing_folder_is_an_error_with_nothing_written(tmp_path):
    with pytest.raises(OSError):
        write_text_atomic(tmp_path / "absent" / "a.txt", "new")
    assert _files(tmp_path) == []


def _grid_file(path: Path) -> Path:
    from lazyflow.runtime.core.gridfile import TunedGrid, save_grid_file

    return save_grid_file(TunedGrid(times=(0.0, 0.5, 1.0), schedule="linear"), path)


def _data_stats(path: Path) -> Path:
    from lazyflow.runtime.core.data_stats import DataStats

    return DataStats.from_samples(torch.randn(8, 3, generator=torch.Generator().manual_seed(0))).save(path)


def _kernel(path: Path) -> Path:
    from lazyflow.derive import preset
    from lazyflow.derive.codegen import write_kernel

    return write_kernel(preset("linear"), path.parent, name=path.stem, command="test", force=True)


def _figure(path: Path) -> Path:
    import matplotlib.pyplot as plt

    from lazyflow.figures.plots import save_figure

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    return save_figure(fig, path)


def _reference(path: Path) -> Path:
    from lazyflow.runtime.evaluation.paths import PathReference
    from lazyflow.runtime.evaluation.reference_cache import write_reference

    write_reference(path, {"seed": 0}, PathReference(torch.zeros(2, 3), "heun", 8, 16, 4, 0.0, 1.0))
    return path


def _samples(path: Path) -> Path:
    from lazyflow.runtime.core.output import write_shard_index

    return write_shard_index(path.with_name("out.npy"), 4, 2)


def _refuse_rename(source, destination):
    raise OSError(28, "refused by the test", str(destination))


WRITERS = {"grid file": (_grid_file, "g.json"), "data statistics": (_data_stats, "s.safetensors"),
           "kernel": (_kernel, "k.py"), "figure": (_figure, "f.png"), "path reference": (_reference, "r.safetensors"),
           "shard index": (_samples, "out.index.json")}


@pytest.mark.parametrize("writer", WRITERS)
def test_every_writer_writes_through_the_helper(tmp_path, monkeypatch, writer):
    """Each writer's file appears whole; when the final rename fails the old file stays and nothing is left."""
    write, name = WRITERS[writer]
    target = tmp_path / name
    assert write(target) == target and target.stat().st_size > 0 and _files(tmp_path) == [name]
    target.write_text(OLD)
    monkeypatch.setattr(atomic_write.os, "replace", _refuse_rename)
    with pytest.raises(OSError, match="refused by the test"):
        write(target)
    assert target.read_text() == OLD
    assert _files(tmp_path) == [name]


def test_a_resumable_run_keeps_its_batches_through_the_helper(tmp_path, monkeypatch):
    """A batch whose file cannot be put in place is refused in one line and leaves no temporary in OUT.partial/."""
    from lazyflow.errors import LazyflowError
    from lazyflow.runtime.core.resume import WorkDir

    work = WorkDir.open(tmp_path / "x.npy", {"seed": 0})
    work.keep(range(0, 2), torch.ones(2, 3))
    assert sorted(p.name for p in work.folder.iterdir()) == ["batch-000000000-000000002.npy", "manifest.json",
                                                            "manifest.log"]
    monkeypatch.setattr(atomic_write.os, "replace", _refuse_rename)
    with pytest.raises(LazyflowError, match="cannot keep the batch batch-000000002-000000004.npy"):
        work.keep(range(2, 4), torch.ones(2, 3))
    assert sorted(p.name for p in work.folder.iterdir()) == ["batch-000000000-000000002.npy", "manifest.json",
                                                            "manifest.log"]
    assert json.loads((work.folder / "manifest.json").read_text())["settings"] == {"seed": 0}
    assert os.path.getsize(work.folder / "manifest.log") > 0


def test_a_killed_writers_temporary_is_removed_and_a_live_ones_kept(tmp_path):
    """``.NAME.PID.RANDOM.tmp`` of a process that has ended goes; this process's, another target's and a file of
    another pattern stay."""
    import subprocess
    import sys

    from lazyflow.atomic_write import remove_stale_temporaries

    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    target = tmp_path / "x.npy"
    dead = tmp_path / f".x.npy.{ended.pid}.0badc0de.tmp"
    live = tmp_path / f".x.npy.{os.getpid()}.12345678.tmp"
    other = tmp_path / f".y.npy.{ended.pid}.0badc0de.tmp"
    for path in (dead, live, other, tmp_path / ".x.npy.notapid.tmp"):
        path.write_bytes(b"partial")
    assert remove_stale_temporaries(target) == [dead]
    assert _files(tmp_path) == sorted([live.name, other.name, ".x.npy.notapid.tmp"])

