"""mkdocs hook: let mkdocstrings find the package ``lazyflow`` from this checkout.

The repository root *is* the package (setup.cfg maps ``lazyflow`` to ``.``), so no folder named
``lazyflow`` exists for griffe to find, whatever the checkout's folder is called.  At start-up this hook
makes a temporary folder holding one link, ``lazyflow`` -> the repository root, and puts it first on
``sys.path`` (mkdocstrings reads its search paths from ``sys.path`` when it starts); the link and its
folder are removed when mkdocs exits.  Nothing is written into the repository.

The images of ``figures/`` (outside ``docs/``) are added to the site as ``figures/NAME.png``, so a page
shows one with ``![...](figures/NAME.png)`` and mkdocs checks the link.

The docstrings cross-reference in Sphinx's roles (``:func:`sample```, ``:class:`~.gridfile.TunedGrid```),
which mkdocstrings' Google style leaves as text.  Each role becomes a link to the object's entry in the API
pages, found as Sphinx finds it (:func:`resolve`): the name itself, else the documented objects whose full
name ends with it, the one nearest the docstring it stands in where several do; ``~`` shows the last dotted
name alone.  A role whose target the site does not document (a standard-library module, a private helper)
stays a code span.  The targets are known once every page is rendered: the roles are marked per page and
linked after all pages (``on_post_page``).
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


_ROLE = re.compile(r":(?:py:)?(?:mod|meth|func|class|data|attr|obj|exc|const):<code>(~?)([^<]*)</code>")
_ANCHOR = re.compile(r'id="(lazyflow(?:\.\w+)*)"')
_MARK = re.compile(r'<code data-lazyflow-ref="([^"]*)" data-lazyflow-near="([^"]*)">([^<]*)</code>')

#: every documented object's full name -> the URL of the page that documents it (filled as pages render)
_ANCHORS: dict[str, str] = {}


def on_page_content(html: str, page, config, files) -> str:
    """Record the page's API entries; mark each Sphinx role, ``:func:<code>~.a.b</code>``, as a code span
    showing ``b`` that remembers its target and the entry it stands under (linked in :func:`on_post_page`)."""
    for name in _ANCHOR.findall(html):
        _ANCHORS.setdefault(name, page.url)

    def mark(found: re.Match) -> str:
        tilde, name = found.groups()
        above = _ANCHOR.findall(html, 0, found.start())
        shown = name.lstrip(".").rsplit(".", 1)[-1] if tilde else name.lstrip(".")
        return f'<code data-lazyflow-ref="{name}" data-lazyflow-near="{above[-1] if above else ""}">{shown}</code>'

    return _ROLE.sub(mark, html)


#: the packages whose re-exported names the docstrings write as ``lazyflow.sample``
_PACKAGES = ("lazyflow", "lazyflow.runtime", "lazyflow.runtime.models", "lazyflow.k_diffusion", "lazyflow.diffusers")


def resolve(name: str, near: str, anchors: dict[str, str]) -> str | None:
    """The documented object a role ``name`` written under the entry ``near`` names, or None: the name itself,
    else the documented names ending with it (with a package's re-export, ``lazyflow.sample``, its own name),
    the one sharing the longest prefix with ``near`` (then the shortest) where several do."""
    bare = name.lstrip(".")
    if bare in anchors:
        return bare
    package, _, own = bare.rpartition(".")
    for tail in ("." + bare, "." + own if package in _PACKAGES else None):
        found = [full for full in anchors if tail and full.endswith(tail)]
        if found:
            return max(found, key=lambda full: (len(os.path.commonprefix([full, near])), -len(full)))
    return None


def on_post_page(output: str, page, config) -> str:
    """Each marked role as a link to its target's entry (relative to this page), or a plain code span."""
    from mkdocs.utils import get_relative_url

    def link(found: re.Match) -> str:
        name, near, shown = found.groups()
        target = resolve(name, near, _ANCHORS)
        if target is None:
            return f"<code>{shown}</code>"
        href = get_relative_url(_ANCHORS[target], page.url) + "#" + target
        return f'<a class="autorefs autorefs-internal" href="{href}" title="{target}"><code>{shown}</code></a>'

    return _MARK.sub(link, output)
