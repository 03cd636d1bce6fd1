"""Test options: ``--update-kernels`` rewrites runtime/kernels from the generator (golden test)."""


def pytest_addoption(parser):
    parser.addoption("--update-kernels", action="store_true", default=False,
                     help="rewrite the shipped kernels in runtime/kernels instead of failing the golden test")


import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _kernel_cache(tmp_path_factory):
    """Kernels generated on first use go to a temporary cache, never into the user's."""
    import os

    previous = os.environ.get("LAZYFLOW_CACHE")
    os.environ["LAZYFLOW_CACHE"] = str(tmp_path_factory.mktemp("lazyflow-cache"))
    yield
    if previous is None:
        del os.environ["LAZYFLOW_CACHE"]
    else:
        os.environ["LAZYFLOW_CACHE"] = previous


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models: one thread is hundreds of times faster than two contending ones on a busy machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items):
    """Tests marked gpu are skipped (with the reason) where torch has no CUDA device."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
