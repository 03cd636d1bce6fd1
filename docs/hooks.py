"""mkdocs hook: let mkdocstrings find the package ``lazyflow`` from this checkout.

The repository root *is* the package (setup.cfg maps ``lazyflow`` to ``.``), so no folder named
``lazyflow`` exists for griffe to find, whatever the checkout's folder is called.  At start-up this hook
makes a temporary folder holding one link, ``lazyflow`` -> the repository root, and puts it first on
``sys.path`` (mkdocstrings reads its search paths from ``sys.path`` when it starts); the link and its
folder are removed when mkdocs exits.  Nothing is written into the repository.

The images of ``figures/`` (outside ``docs/``) are added to the site as ``figures/NAME.png``, so a page
shows one with ``![...](figures/NAME.png)`` and mkdocs checks the link.

The docstrings cross-reference in Sphinx's roles (``:func:`sample```, ``:class:`~.gridfile.TunedGrid```),
which mkdocstrings' Google style leaves as text: each rendered page's roles become the code span alone,
``~`` keeping the last dotted name as Sphinx shows it.
"""
from __future__ import annotations

import atexit
import os
import re
import sys
import tempfile
from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent


def _remove(folder: str, link: str) -> None:
    if os.path.islink(link):
        os.unlink(link)                 # the link only: never the repository it points to
    os.rmdir(folder)


def on_startup(command: str, dirty: bool) -> None:
    """Put a folder holding ``lazyflow`` -> the repository root first on ``sys.path``."""
    folder = tempfile.mkdtemp(prefix="lazyflow-docs-")
    link = os.path.join(folder, "lazyflow")
    os.symlink(ROOT, link, target_is_directory=True)
    sys.path.insert(0, folder)
    atexit.register(_remove, folder, link)


def on_files(files: Files, config) -> Files:
    """Add the committed figures (``figures/*.png``) to the site under ``figures/``."""
    for image in sorted((ROOT / "figures").glob("*.png")):
        files.append(File(f"figures/{image.name}", src_dir=str(ROOT), dest_dir=config.site_dir,
                          use_directory_urls=config.use_directory_urls))
    return files


_ROLE = re.compile(r":(?:py:)?(?:mod|meth|func|class|data|attr|obj|exc|const):(<code>)(~?)\.?([^<]*)(</code>)")


def _role_text(found: re.Match) -> str:
    open_tag, tilde, name, close_tag = found.groups()
    return open_tag + (name.rsplit(".", 1)[-1] if tilde else name) + close_tag


def on_page_content(html: str, page, config, files) -> str:
    """Sphinx roles in the rendered docstrings, ``:func:<code>~.a.b</code>``, as ``<code>b</code>``."""
    return _ROLE.sub(_role_text, html)
