"""Runs that survive being killed: every finished batch is kept in a work folder beside the output,
``OUT.partial/``, so that ``--resume`` continues from there and the output equals an uninterrupted run's.

The folder holds one file per finished batch (``batch-000000016-000000032.npy``: the samples of indices
[16, 32) as float32, written to a temporary name and renamed, so a batch file is whole or absent) and
one manifest per process (``manifest.json``; under torchrun ``manifest.rank00001-of-00002.json``): the
lazyflow version, every setting that changes the samples (model and its file's SHA-256, schedules with
their kernels' hashes, integrator, steps and grid times, seed, number of samples, batch size,
processes, device type, ...) and the SHA-256 of each finished batch file.  The manifest is written
whole (temporary file, rename) when a run starts; each batch finished after that appends one line
``NAME SHA256`` to the manifest's ledger (``manifest.log``), after its file is in place, and the next
run folds the ledger into the manifest.  A batch counts as finished only when its file exists and
matches its recorded hash, so a run killed at any moment leaves a folder that a resumed run can trust
(a torn last ledger line only costs that batch).  Since sample i depends only on (seed, i) and the
batches are the same ones, the resumed output is the same bits.

When the output is written the folder is renamed to a hidden name and removed (a removal cut short
leaves only that hidden folder, which the next run clears).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from ...atomic_write import remove_stale_temporaries, write_bytes_atomic, write_text_atomic
from ...errors import LazyflowError

__all__ = ["WorkDir", "work_dir", "file_hash", "check_outputs", "settings_mismatch", "discard", "clear_leftovers"]

_BATCH = "batch-{start:09d}-{stop:09d}.npy"


def work_dir(out: Path) -> Path:
    """The work folder of ``out``: ``OUT.partial/`` beside it."""
    return out.with_name(out.name + ".partial")


def _trash(out: Path) -> Path:
    """Where a finished run's work folder goes to be removed (hidden; cleared by the next run)."""
    return out.with_name(f".{out.name}.partial.removing")


def file_hash(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, hex (read in 1 MiB pieces)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(1 << 20), b""):
            digest.update(piece)
    return digest.hexdigest()


def _manifest_name(rank: int, world: int) -> str:
    return "manifest.json" if world == 1 else f"manifest.rank{rank:05d}-of-{world:05d}.json"


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def settings_mismatch(recorded: Mapping[str, Any], settings: Mapping[str, Any]) -> str | None:
    """The first setting (in ``settings``' order) whose recorded value differs, as
    ``"seed: 3 there, 4 here"``; None when all agree."""
    for key in [*settings, *(k for k in recorded if k not in settings)]:
        there, here = recorded.get(key), settings.get(key)
        if json.dumps(there, sort_keys=True) != json.dumps(here, sort_keys=True):
            return f"{key}: {_shown(there)} there, {_shown(here)} here"
    return None


def _recorded(folder: Path) -> dict[str, Any] | None:
    """The manifest of an earlier run in ``folder`` (this rank's, else any rank's), None where none is readable."""
    for path in sorted(folder.glob("manifest*.json")):
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return None


def check_outputs(out: Path, outputs: Iterable[Path], settings: Mapping[str, Any], *, force: bool,
                  resume: bool) -> str | None:
    """Why this run may not start (None: it may), looked at before any work and changing nothing:
    a target that is a folder, an unwritable folder, an existing output (needs ``force``; ``resume``
    continues only an unfinished run), an unfinished run in ``OUT.partial/`` (needs ``resume`` or
    ``force``), or one made with other settings (named)."""
    if force and resume:
        return "--force starts over and --resume continues: give one of them"
    outputs = list(outputs)
    for path in outputs:
        if path.is_dir():
            return f"{path} is a folder: --out names the file to write"
        if not path.parent.exists():
            continue
        if not path.parent.is_dir():
            return f"cannot write {path}: {path.parent} is not a folder"
        if not os.access(path.parent, os.W_OK | os.X_OK):
            return f"cannot write into {path.parent} (permission denied)"
    folder = work_dir(out)
    if folder.exists() and not folder.is_dir():
        return f"{folder} is in the way of this run's work folder: move it away"
    unfinished = folder.is_dir()
    existing = [p for p in outputs if p.exists()]
    if force:
        return None
    if not resume:
        if unfinished:
            return f"{folder}/ holds an unfinished run: add --resume to continue it or --force to start over"
        if existing:
            return f"{existing[0]} exists: add --force to overwrite it"
        return None
    if not unfinished:
        if existing:
            return f"{existing[0]} exists and no unfinished run is in {folder}/ (it is finished): " \
                   "add --force to make it again"
        return None
    recorded = _recorded(folder)
    if recorded is None:
        return None    # killed before its first manifest: nothing finished, start afresh in the folder
    differs = settings_mismatch({"lazyflow": recorded.get("lazyflow"), **recorded.get("settings", {})}, settings)
    if differs:
        return f"{folder}/ holds a run made with other settings ({differs}): add --force to start over"
    return None


def clear_leftovers(out: Path, *, force: bool, outputs: Iterable[Path] = ()) -> None:
    """Remove a cut-short removal's hidden folder, the temporaries a killed writer of ``out`` or ``outputs`` left
    beside them, and with ``force`` the unfinished run's work folder."""
    for path in {out, *outputs}:
        remove_stale_temporaries(path)
    if _trash(out).exists():
        shutil.rmtree(_trash(out), ignore_errors=True)
    if force and work_dir(out).is_dir():
        discard(out)


def discard(out: Path) -> None:
    """Remove the work folder of ``out``: renamed to a hidden name first, so it is whole or gone."""
    folder, trash = work_dir(out), _trash(out)
    if not folder.exists():
        return
    if trash.exists():
        shutil.rmtree(trash, ignore_errors=True)
    os.replace(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


@dataclass
class WorkDir:
    """This process's part of ``OUT.partial/``: its manifest (``settings``, the lazyflow version, the
    hash of every batch it finished) and its batch files."""

    folder: Path
    rank: int
    world: int
    settings: dict[str, Any]
    version: str
    finished: dict[str, str] = field(default_factory=dict)

    @classmethod
    def open(cls, out: Path, settings: Mapping[str, Any], *, rank: int = 0, world: int = 1) -> "WorkDir":
        """The work folder of ``out`` (created), with the batches an earlier run of the same settings
        finished (a batch whose file is missing or does not match its hash is not counted)."""
        from ... import __version__

        folder = work_dir(out)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise LazyflowError(f"cannot create {folder}/: {err.strerror or err}") from None
        settings = dict(settings)
        work = cls(folder, rank, world, {k: v for k, v in settings.items() if k != "lazyflow"}, __version__)
        work.finished = {name: digest for name, digest in work._recorded_batches().items()
                         if (folder / name).is_file() and file_hash(folder / name) == digest}
        work._save_manifest()
        work._ledger().unlink(missing_ok=True)    # its lines are in the manifest now
        return work

    def _ledger(self) -> Path:
        """The batches finished since the manifest was written, one ``NAME SHA256`` line each (appended:
        writing a whole manifest per batch would cost O(batches^2))."""
        return self.folder / (_manifest_name(self.rank, self.world)[:-len(".json")] + ".log")

    def _recorded_batches(self) -> dict[str, str]:
        """The batches this rank's manifest and ledger name (a torn last ledger line is left out)."""
        try:
            recorded = dict(json.loads((self.folder / _manifest_name(self.rank, self.world)).read_text())["batches"])
        except (OSError, ValueError, KeyError, TypeError):
            recorded = {}
        try:
            lines = self._ledger().read_text().splitlines()
        except OSError:
            lines = []
        for line in lines:
            parts = line.split()
            if len(parts) == 2 and len(parts[1]) == 64:
                recorded[parts[0]] = parts[1]
        return recorded

    def _save_manifest(self) -> None:
        manifest = {"lazyflow": self.version, "settings": self.settings, "batches": self.finished}
        write_text_atomic(self.folder / _manifest_name(self.rank, self.world), json.dumps(manifest, indent=1) + "\n")

    @staticmethod
    def name(indices: range) -> str:
        return _BATCH.format(start=indices.start, stop=indices.stop)

    def done(self, indices: range) -> bool:
        """Whether the batch of ``indices`` was finished (and its file checked against its hash)."""
        return self.name(indices) in self.finished

    def keep(self, indices: range, x: torch.Tensor) -> None:
        """Keep one finished batch: its file (float32 .npy, temporary name then rename), then its line
        in the ledger."""
        import io

        import numpy as np

        buffer = io.BytesIO()
        np.save(buffer, x.detach().float().cpu().numpy())
        data, name = buffer.getvalue(), self.name(indices)
        digest = hashlib.sha256(data).hexdigest()
        try:
            write_bytes_atomic(self.folder / name, data)
            with open(self._ledger(), "a") as ledger:
                ledger.write(f"{name} {digest}\n")
        except OSError as err:
            raise LazyflowError(f"cannot keep the batch {name} in {self.folder}/: {err.strerror or err}") from None
        self.finished[name] = digest

    def load(self, indices: range) -> torch.Tensor:
        """The samples of a finished batch."""
        import numpy as np

        return torch.from_numpy(np.load(self.folder / self.name(indices)))

    def count(self) -> int:
        """Samples in the finished batches of this process."""
        return sum(int(n.split("-")[2].split(".")[0]) - int(n.split("-")[1]) for n in self.finished)
