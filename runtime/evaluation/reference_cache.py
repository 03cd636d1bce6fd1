"""The path reference x* cached in a safetensors file, with the settings it was made with.

The file holds ``samples`` (float64, (n, *data_shape)) and, in its metadata, ``settings`` (JSON: the
model file's or folder's SHA-256, the kind and its options, a digest of the conditioning tensors, the
data shape, n, seed, source schedule, the solver and its steps) and ``fields`` (what
:meth:`.paths.PathReference.fields` records: steps, NFE, the half-steps check, seconds).  A file made with
other settings is refused, naming what differs; the batch size and the device are not settings (sample
i depends only on (seed, i); CPU and GPU agree to float rounding)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import torch

from ...atomic_write import atomic_path
from ...errors import LazyflowError
from .paths import PathReference

__all__ = ["content_digest", "tensors_digest", "cached_reference", "read_reference", "write_reference"]


def content_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes, or of a folder's files (their relative names and bytes, sorted)."""
    path, digest = Path(path), hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def tensors_digest(tensors: dict[str, Any]) -> str:
    """SHA-256 of named tensors (names, shapes, dtypes and values, on the CPU)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        value = tensors[name]
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().contiguous()
            digest.update(f"{name}:{tuple(value.shape)}:{value.dtype}".encode())
            digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
        else:
            digest.update(f"{name}={value!r}".encode())
    return digest.hexdigest()


def write_reference(file: str | Path, settings: dict[str, Any], reference: PathReference) -> None:
    """Write ``reference`` with its ``settings`` atomically (:func:`lazyflow.atomic_write.atomic_path`)."""
    from safetensors.torch import save_file

    fields = {**reference.fields(), "seconds": reference.seconds}
    with atomic_path(file) as temporary:
        save_file({"samples": reference.samples.to(torch.float64).contiguous().cpu()}, str(temporary),
                  metadata={"settings": json.dumps(settings, sort_keys=True), "fields": json.dumps(fields)})


def _differences(found: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    return [f"{key} {found.get(key)!r} (now {wanted.get(key)!r})" for key in sorted(set(found) | set(wanted))
            if found.get(key) != wanted.get(key)]


def read_reference(file: str | Path, settings: dict[str, Any]) -> PathReference:
    """The reference in ``file``; refused unless it was made with ``settings``."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="pt") as handle:
            meta = handle.metadata() or {}
            samples = handle.get_tensor("samples")
        found, fields = json.loads(meta["settings"]), json.loads(meta["fields"])
    except (OSError, SafetensorError, KeyError, json.JSONDecodeError) as err:
        raise LazyflowError(f"--reference-cache {file}: not a lazyflow reference file ({err})") from None
    differ = _differences(found, settings)
    if differ:
        raise LazyflowError(f"--reference-cache {file} was made with other settings: {'; '.join(differ)}; "
                            "remove the file or name another")
    return PathReference(samples, fields["method"], fields["steps"], fields["nfe"], fields["check_steps"],
                         fields["check"], fields["seconds"])


def cached_reference(file: str | Path | None, settings: dict[str, Any],
                     compute: Callable[[], PathReference]) -> tuple[PathReference, bool]:
    """(the reference, whether it was read from ``file``): read when ``file`` exists (refused if made with
    other settings), else computed and, with a ``file``, written there."""
    if file is not None and Path(file).exists():
        return read_reference(file, settings), True
    reference = compute()
    if file is not None:
        write_reference(file, settings, reference)
    return reference, False
