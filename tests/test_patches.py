"""The photo-patch data (32 x 32 patches of scikit-image's photographs), the shipped ``patches`` model trained on
them, its recipe, its measure and its TorchScript export."""
import json
import subprocess
import sys

import pytest
import torch

from lazyflow.cli import main
from lazyflow.errors import LazyflowError
from lazyflow.runtime import models
from lazyflow.runtime.models.registry import load_model

skimage = pytest.importorskip("skimage")

from lazyflow.runtime.models import image_patches as ip  # noqa: E402
from lazyflow.runtime.models.train import PATCHES_RECIPE, RECIPES, train_patches  # noqa: E402


@pytest.fixture(scope="module")
def held_out():
    return ip.image_patches("held-out", 256, seed=3)


def test_patches_have_the_shape_range_and_seed_they_promise():
    a = ip.image_patches("train", 200, seed=5)
    assert a.shape == (200, 1, 32, 32) and a.dtype == torch.float32
    assert a.min() >= -1 and a.max() <= 1 and a.std() > 0.1            # not flat: photographs, shrunk by 2
    assert torch.equal(a, ip.image_patches("train", 200, seed=5))
    assert not torch.equal(a, ip.image_patches("train", 200, seed=6))
    crops = ip.draw_crops("train", 200, seed=5)
    assert len(set(crops.photo.tolist())) == len(ip.PHOTOS)               # every photograph is drawn from
    assert crops.flip.any() and not crops.flip.all()
    # a crop is the photograph's pixels (mirrored where flipped)
    k, r, c = int(crops.photo[0]), int(crops.row[0]), int(crops.col[0])
    pixels = torch.from_numpy(ip.photographs(2)[k][r:r + 32, c:c + 32].copy())
    assert torch.equal(a[0, 0], pixels.flip(1) if crops.flip[0] else pixels)


def test_the_splits_share_no_pixel():
    spec = ip.PatchSpec()
    train, held = ip.draw_crops("train", 3000, seed=0), ip.draw_crops("held-out", 3000, seed=0)
    for k, image in enumerate(ip.photographs(spec.downscale)):
        cut = ip.split_rows(image.shape[0], spec, "held-out")[0]
        assert cut == ip.split_rows(image.shape[0], spec, "train")[1]
        assert (train.row[train.photo == k] + spec.size <= cut).all()
        rows = held.row[held.photo == k]
        assert (rows >= cut).all() and (rows + spec.size <= image.shape[0]).all()
        assert (held.col[held.photo == k] + spec.size <= image.shape[1]).all()
    with pytest.raises(LazyflowError, match="split must be one of"):
        ip.draw_crops("test", 4)


def test_the_photographs_are_grayscale_in_range_and_shrunk_by_block_means():
    full, half = ip.photographs(1), ip.photographs(2)
    assert len(full) == len(ip.PHOTOS)
    for a, b in zip(full, half):
        assert a.ndim == 2 and -1 <= a.min() and a.max() <= 1
        h, w = b.shape
        assert (h, w) == (a.shape[0] // 2, a.shape[1] // 2)
        assert abs(float(b[3, 5]) - float(a[6:8, 10:12].mean())) < 1e-6


def test_the_registered_model_denoises_held_out_patches(held_out):
    """At t = 0.9 the model's estimate of the data, x_t + (1 - t) v(x_t, t), is much closer to the held-out patch
    than the noisy patch x_t / t is (0.32 of its squared error; an untrained network of the same shape is not)."""
    loaded = load_model("patches")
    assert loaded.data_shape == (1, 32, 32) and loaded.source.name == "linear" and loaded.prediction == "velocity"
    x, t = held_out, torch.full((len(held_out),), 0.9)
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    xt = (1 - t.view(-1, 1, 1, 1)) * z + t.view(-1, 1, 1, 1) * x
    with torch.no_grad():
        estimate = xt + 0.1 * loaded.model(xt, t)
        fresh = type(loaded.model)(**{k: v for k, v in loaded.model.config.items() if k != "kind"})
        untrained = xt + 0.1 * fresh(xt, t)
    before = ((xt / 0.9 - x) ** 2).mean()
    assert ((estimate - x) ** 2).mean() < 0.4 * before
    assert ((untrained - x) ** 2).mean() > 0.8 * before


def test_the_shipped_model_is_small_and_carries_its_recipe():
    net = models.load("patches")
    path = models.WEIGHTS / "patches.safetensors"
    assert path.stat().st_size < 10 * 2**20
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["recipe"] == PATCHES_RECIPE and card["command"] == "lazyflow train patches"
    assert net.config["widths"] == PATCHES_RECIPE["net"]["widths"]


def test_the_recipe_is_registered():
    from lazyflow.parsers import build_parser

    assert "patches" in RECIPES
    assert build_parser().parse_args(["train", "patches", "--out-dir", "x"]).what == "patches"
    assert "patches" in models.EMBEDDED and (models.WEIGHTS / "patches.json").is_file()


@pytest.mark.slow
def test_a_short_training_run_is_deterministic(tmp_path):
    runs = [train_patches(tmp_path / name, progress=False, steps=2, batch=4, patches=16) for name in ("a", "b")]
    first, second = (models.load(str(p)) for p in runs)
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)
    card = json.loads(runs[0].with_suffix(".json").read_text())
    assert card["recipe"]["steps"] == 2 and card["command"] == "lazyflow train patches --steps 2"


def test_torchscript_export_is_the_model():
    net = models.load("patches")
    scripted = torch.jit.script(net)
    x, t = torch.randn(3, 1, 32, 32), torch.tensor([0.1, 0.5, 0.95])
    with torch.no_grad():
        assert torch.equal(scripted(x, t), net(x, t))
    assert tuple(scripted.data_shape) == (1, 32, 32)


@pytest.mark.slow
def test_the_measure_tells_patches_from_noise(held_out):
    from lazyflow.runtime.evaluation.patch_metrics import PatchesScorer, patches_fd

    fresh = patches_fd(held_out)
    assert fresh < 0.2 * patches_fd(torch.randn(256, 1, 32, 32) * held_out.std())
    assert patches_fd(ip.image_patches("held-out", 256, seed=3).flip(3)) == pytest.approx(fresh, rel=0.5)
    assert PatchesScorer().score(held_out)["fd"] == fresh


@pytest.mark.slow
def test_without_scikit_image_one_line_and_the_core_still_imports(tmp_path):
    code = ("import sys; sys.modules['skimage'] = None; import lazyflow; from lazyflow.runtime import models; "
            "net = models.load('patches'); from lazyflow.cli import main; "
            f"sys.exit(main(['train', 'patches', '--out-dir', {str(tmp_path)!r}]))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().count("\n") == 0 and "need scikit-image" in run.stderr
    assert not list(tmp_path.iterdir())


def test_the_bench_measures_the_model_and_its_files_by_pixel_fd(tmp_path):
    from lazyflow.runtime.evaluation.bench import bench_metrics, bench_model
    from lazyflow.runtime.evaluation.patch_metrics import PatchesScorer

    assert bench_metrics("patches") == ["fd", "path"]
    assert isinstance(bench_model("patches", None, 16).scorer, PatchesScorer)
    shipped = models.WEIGHTS / "patches.safetensors"
    assert isinstance(bench_model(str(shipped), None, 16).scorer, PatchesScorer)     # a patches model file
