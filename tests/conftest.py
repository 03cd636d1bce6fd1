"""Test options: ``--update-kernels`` rewrites runtime/kernels from the generator (golden test)."""


def pytest_addoption(parser):
    parser.addoption("--update-kernels", action="store_true", default=False,
                     help="rewrite the shipped kernels in runtime/kernels instead of failing the golden test")
