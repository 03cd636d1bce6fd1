"""One progress bar for every long loop (tqdm when it is installed and the bar is wanted)."""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

__all__ = ["progress_bar"]


@contextlib.contextmanager
def progress_bar(total: int, *, enabled: bool, desc: str, unit: str = "step") -> Iterator[Callable[..., None] | None]:
    """Yield ``update(n=1, **postfix)`` or None when disabled (or tqdm is missing)."""
    if not enabled:
        yield None
        return
    try:
        from tqdm.auto import tqdm
    except ImportError:
        yield None
        return
    with tqdm(total=total, desc=desc, unit=unit, mininterval=1.0) as bar:
        def update(n: int = 1, **postfix) -> None:
            if postfix:
                bar.set_postfix(**postfix, refresh=False)
            bar.update(n)
        yield update
