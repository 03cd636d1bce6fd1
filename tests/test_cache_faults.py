"""Faults of the kernel cache (runtime/core/schedule.py): parallel generation of one new kernel, damaged entries,
an unusable cache folder.  Each test uses its own cache folder (LAZYFLOW_CACHE) and its own schedule."""
from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest
import torch

from lazyflow.errors import LazyflowError
from lazyflow.runtime.core import schedule as schedule_module
from lazyflow.runtime.core.schedule import load_schedule

pytestmark = pytest.mark.usefixtures("one_torch_thread")   # tiny models (tests/conftest.py)

ROOT = Path(__file__).resolve().parents[1]


def _spec(k: int) -> dict:
    """An expression schedule of its own per test (a kernel nobody has generated yet in that cache)."""
    return {"alpha": f"1 - t**{k}", "beta": f"t**{k}", "name": f"cachefault{k}"}


def _entries(cache: Path) -> list[Path]:
    return sorted((cache / "kernels").glob("cachefault*.py"))


def _reference(k: int) -> torch.Tensor:
    """alpha and beta of the schedule at a few times, from the closed forms (independent of any kernel)."""
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    return torch.stack([1 - t**k, t**k])


def _values(schedule) -> torch.Tensor:
    v = schedule.values(torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64))
    return torch.stack([v.alpha, v.beta])


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("LAZYFLOW_CACHE", str(folder))
    monkeypatch.setattr(schedule_module, "_NOTED", set())
    return folder


@pytest.mark.parametrize("damage", ["truncate", *(pytest.param(d, marks=pytest.mark.slow) for d in ("edit", "garbage",
                                                                                                 "empty"))])
def test_a_damaged_entry_is_detected_and_regenerated(cache, capsys, damage):
    k = 2
    first = load_schedule(_spec(k))
    assert torch.allclose(_values(first), _reference(k))
    (entry,) = _entries(cache)
    text = entry.read_text()
    damaged = {"truncate": text[: len(text) // 2], "edit": text.replace("t**2", "t**3", 1),
               "garbage": "\x00\x01 not python", "empty": ""}[damage]
    assert damaged != text
    entry.write_text(damaged)
    capsys.readouterr()
    again = load_schedule(_spec(k))
    assert "lazyflow: regenerated the" in capsys.readouterr().err
    assert schedule_module._intact(entry)
    assert entry.read_text() == text                   # the same entry, whole again
    assert torch.allclose(_values(again), _reference(k))


@pytest.mark.slow
def test_an_entry_that_does_not_load_is_regenerated(cache, capsys):
    """Intact footer but a module that is no kernel (e.g. another runtime's format): written again."""
    k = 3
    load_schedule(_spec(k))
    (entry,) = _entries(cache)
    body = "NAME = 'x'\n"
    entry.write_text(body + schedule_module._FOOTER + schedule_module._digest(body) + "\n")
    again = load_schedule(_spec(k))
    assert "regenerated" in capsys.readouterr().err
    assert torch.allclose(_values(again), _reference(k))


@pytest.mark.parametrize("fault", ["file in its place", "entry is a folder"])
def test_an_unusable_cache_folder_is_one_note_and_sampling_still_works(cache, capsys, fault, tmp_path, monkeypatch):
    monkeypatch.setattr(schedule_module.tempfile, "gettempdir", lambda: str(tmp_path / "spare"))
    k = 4
    if fault == "file in its place":
        cache.write_text("not a folder")
    else:   # the entry's own name is taken by a folder: the write fails, the spare folder takes it
        from lazyflow.derive import from_expressions
        from lazyflow.derive.codegen import kernel_name, spec_key

        spec = from_expressions(**_spec(k))
        (cache / "kernels" / f"{kernel_name(spec.name)}_{spec_key(spec)}.py").mkdir(parents=True)
    got = load_schedule(_spec(k))
    assert torch.allclose(_values(got), _reference(k))
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if "is unusable" in line]
    assert len(notes) == 1 and "LAZYFLOW_CACHE" in notes[0], err
    assert list((tmp_path / "spare").rglob("cachefault4_*.py"))


def test_no_usable_folder_at_all_is_one_line_refusal(cache, tmp_path, monkeypatch):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    cache.write_text("not a folder")
    monkeypatch.setattr(schedule_module.tempfile, "gettempdir", lambda: str(blocker))
    with pytest.raises(LazyflowError, match="set LAZYFLOW_CACHE to a writable folder") as info:
        load_schedule(_spec(5))
    assert "\n" not in str(info.value)


def test_the_command_line_reports_an_unusable_cache_in_one_line(cache, tmp_path, monkeypatch, capsys):
    """Through the shell: a file where the cache should be, and no temporary folder either: exit 2, one line."""
    from lazyflow.cli import main

    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    cache.write_text("not a folder")
    monkeypatch.setattr(schedule_module.tempfile, "gettempdir", lambda: str(blocker))
    argv = ["sample", "--alpha", "1 - t**6", "--beta", "t**6", "--n", "2", "--steps", "2", "--out",
            str(tmp_path / "x.npy")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "LAZYFLOW_CACHE" in err, err
    assert not (tmp_path / "x.npy").exists()


def _generate(k: int, cache: str, barrier, results) -> None:
    os.environ["LAZYFLOW_CACHE"] = cache
    barrier.wait()
    schedule = load_schedule(_spec(k))
    results.put(_values(schedule).tolist())


@pytest.mark.slow
def test_eight_processes_generating_one_new_kernel_leave_a_valid_cache(cache):
    """Eight processes start generating the same new kernel at once (a barrier): every one gets the right
    schedule, and the cache holds one whole entry (its footer matches) and no temporary files."""
    k, n = 7, 8
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(n), context.Queue()
    workers = [context.Process(target=_generate, args=(k, str(cache), barrier, results)) for _ in range(n)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert all(w.exitcode == 0 for w in workers), [w.exitcode for w in workers]
    got = [torch.tensor(results.get(timeout=5), dtype=torch.float64) for _ in range(n)]
    assert all(torch.allclose(g, _reference(k)) for g in got)
    (entry,) = _entries(cache)
    assert schedule_module._intact(entry)
    assert not [p for p in (cache / "kernels").iterdir() if p.name.endswith(".tmp")]
