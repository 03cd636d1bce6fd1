"""The documentation site (mkdocs.yml, docs/): it builds with ``mkdocs build --strict`` and no warning,
its API reference documents every public name, docs/math.md includes derive/MATH.md rather than a copy,
and every ```python block of every page runs as written (tests/markdown_blocks.py says the convention)."""
import importlib
import importlib.util
import os
import re
import subprocess
import sys
import types

import pytest

from markdown_blocks import ROOT, blocks, run_python_page

DOCS = ROOT / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md") if "api" not in p.relative_to(DOCS).parts)
DIRECTIVE = re.compile(r"^::: ([\w.]+)\s*$", re.M)

#: the public lists users import from, and the modules whose names they re-export on first use
PUBLIC = {"lazyflow": None, "lazyflow.runtime": None, "lazyflow.derive": None, "lazyflow.runtime.models": None,
          "lazyflow.errors": None, "lazyflow.runtime.integrations.diffusers": "diffusers",
          "lazyflow.runtime.integrations.flow_convention": None, "lazyflow.runtime.core.integrators": None,
          "lazyflow.runtime.core.grids": None, "lazyflow.runtime.models.guidance": None,
          "lazyflow.runtime.models.sit": None, "lazyflow.runtime.evaluation.bench": None,
          "lazyflow.figures.plots": None, "lazyflow.runtime.integrations.k_diffusion_samplers": None,
          "lazyflow.runtime.integrations.comfyui": None, "lazyflow.runtime.evaluation.model_bench": None,
          "lazyflow.figures.catalog": None}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _directives() -> list[str]:
    return [name for page in sorted((DOCS / "api").glob("*.md")) for name in DIRECTIVE.findall(page.read_text())]


def _documented(obj, directives) -> bool:
    """True when a directive names ``obj`` itself or a module whose ``__all__`` binds it."""
    for target in directives:
        module_name, _, attr = target.rpartition(".")
        try:
            documented = importlib.import_module(target)
        except ImportError:
            documented = getattr(importlib.import_module(module_name), attr)
        if documented is obj:
            return True
        if isinstance(documented, types.ModuleType):
            if any(getattr(documented, name, None) is obj for name in getattr(documented, "__all__", ())):
                return True
    return False


def test_every_public_name_is_in_the_api_reference():
    directives = _directives()
    missing = []
    for module_name, needs in PUBLIC.items():
        if needs is not None:
            pytest.importorskip(needs)
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            if isinstance(obj, types.ModuleType) or name == "__version__":
                continue
            if not _documented(obj, directives):
                missing.append(f"{module_name}.{name}")
    assert not missing, f"not in docs/api/*.md: {missing}"


def test_math_page_includes_math_md_instead_of_copying_it():
    page = (DOCS / "math.md").read_text()
    assert '--8<-- "derive/MATH.md"' in page
    assert "## 1. Conventions" not in page


def test_docs_are_not_in_the_installed_package():
    setup = (ROOT / "setup.cfg").read_text()
    packages = re.search(r"^packages =\n((?:[ \t]+\S+\n)+)", setup, re.M).group(1).split()
    assert all("docs" not in p for p in packages) and not (DOCS / "__init__.py").exists()


@pytest.mark.slow      # every page's examples: about 15 s in all (the README's run in the default pass)
@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(DOCS)) for p in PAGES])
def test_python_blocks_run(page, tmp_path, monkeypatch):
    """A page's ```python blocks run in order in one namespace, in an empty folder, offline."""
    page_blocks = blocks(page)
    for block in page_blocks:
        if block.not_run is not None:
            assert block.not_run, f"{block.where}: <!-- not run: REASON --> needs a reason"
    code = "".join(b.code for b in page_blocks if b.language == "python" and b.not_run is None)
    if not code:
        pytest.skip("no python block")
    for peer in ("diffusers", "k_diffusion"):
        if re.search(rf"^\s*(from|import) {peer}\b", code, re.M) or f"lazyflow.{peer} import" in code and peer == "diffusers":
            pytest.importorskip(peer)
    if "load_k_diffusion_sampling()" in code and importlib.util.find_spec("k_diffusion") is None:
        pytest.skip("k-diffusion is not installed")  # the page runs its samplers from the README's --no-deps install
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    run_python_page(page_blocks)


@pytest.mark.slow      # 3 to 10 s: mkdocs, mkdocstrings and every module's docstrings
def test_mkdocs_build_strict(tmp_path):
    """``mkdocs build --strict`` passes with no warning; the API pages and the math were rendered."""
    for module in ("mkdocs", "material", "mkdocstrings_handlers.python"):
        pytest.importorskip(module)
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                          "-d", str(site)], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "WARNING" not in run.stdout + run.stderr, run.stdout + run.stderr
    assert 'id="lazyflow.runtime.core.sampler.sample"' in (site / "api" / "sampling" / "index.html").read_text()
    math = (site / "math" / "index.html").read_text()
    assert "Gaussian data and lazy schedules" in math and "--8&lt;--" not in math
    roles = [(page.parent.name, found) for page in (site / "api").rglob("*.html")
             for found in re.findall(r":(?:mod|meth|func|class|data|attr):<code>", page.read_text())]
    assert not roles, roles[:5]                      # the hook renders Sphinx roles as links (or code spans)
    _check_role_links(site)


#: roles of the docstrings and the entries they must link to (page, shown text, target), one per kind of name:
#: absolute, ``~`` absolute, relative with a leading dot, bare, a method, a package's re-export
KNOWN_LINKS = [("sampling", "DataStats", "lazyflow.runtime.core.data_stats.DataStats"),
               ("sampling", "CounterNormal", "lazyflow.runtime.core.noise.CounterNormal"),
               ("sampling", "atomic_path", "lazyflow.atomic_write.atomic_path"),
               ("schedules", "TunedGrid", "lazyflow.runtime.core.gridfile.TunedGrid"),
               ("sampling", "DataStats.load", "lazyflow.runtime.core.data_stats.DataStats.load"),
               ("integrations", "lazyflow.sample", "lazyflow.runtime.core.sampler.sample")]


def _check_role_links(site) -> None:
    """Every link the hook made from a role reaches an entry that exists on its page, the known roles link
    where they must, and most roles are links (the rest name what the site does not document)."""
    from urllib.parse import urljoin

    pages = {p.parent.relative_to(site).as_posix() + "/": p.read_text() for p in (site / "api").rglob("index.html")}
    link = re.compile(r'<a class="autorefs autorefs-internal" href="([^"#]*)#([^"]*)" title="([^"]*)"><code>([^<]*)</code></a>')
    made = [(url, *found.groups()) for url, html in pages.items() for found in link.finditer(html)]
    assert len(made) >= 200, len(made)
    for url, href, anchor, title, shown in made:
        target = urljoin(url, href or url)
        assert anchor == title and f'id="{anchor}"' in pages[target], (url, shown, href, anchor)
    for page, shown, target in KNOWN_LINKS:
        assert any(u == f"api/{page}/" and s == shown and a == target for u, _, a, _, s in made), (page, shown, target)
