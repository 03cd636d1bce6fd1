"""The class-conditional test beds (runtime/models/conditional.py, the recipes of ``lazyflow train``): each
shipped file loads as the ``conditional`` model kind with its labels and guidance, is what its recipe says,
and samples in every frame; the recipes train deterministically; the model bench runs the data frames on
a conditional model's own statistics (per label, first call), recommends, tunes and checks a pilot's pick."""
from __future__ import annotations

import json

import pytest
import torch

from lazyflow import sample
from lazyflow.cli import main
from lazyflow.runtime.core.data_stats import ConditionalStats
from lazyflow.runtime.models import data
from lazyflow.runtime.models.builtin import load_conditional
from lazyflow.runtime.models.conditional import TESTBEDS, ConditionalVelocityNet, shipped_testbed
from lazyflow.runtime.models.embedded import load
from lazyflow.runtime.models.sit_checkpoint import load_sit_checkpoint
from lazyflow.runtime.models.train import SIT_TESTBED_PARAMS, TESTBED_RECIPES, train_conditional

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_every_recipe_is_shipped():
    assert set(TESTBED_RECIPES) == set(TESTBEDS) and all(shipped_testbed(n).is_file() for n in TESTBEDS)


def load_testbed(name: str, n: int, labels: str, guidance: float = 1.0):
    """A shipped test bed as ``lazyflow bench --model-kind`` loads it (the SiT with its --model-param sizes)."""
    if name == "sit-digits":
        return load_sit_checkpoint(str(shipped_testbed(name)), kind="sit-s/2", device=torch.device("cpu"),
                                   num_samples=n, class_labels=labels, model_params=SIT_TESTBED_PARAMS,
                                   guidance=guidance)
    return load_conditional(str(shipped_testbed(name)), device=torch.device("cpu"), num_samples=n,
                            class_labels=labels, guidance=guidance)


@pytest.mark.parametrize("name", TESTBEDS)
def test_each_shipped_test_bed_is_its_recipe_and_samples(name):
    recipe = TESTBED_RECIPES[name]
    card = json.loads(shipped_testbed(name).with_suffix(".json").read_text())
    assert card["command"] == f"lazyflow train {name}" and card["recipe"]["steps"] == recipe["steps"]
    if recipe["net"]["arch"] != "sit":
        net = load(shipped_testbed(name))
        assert isinstance(net, ConditionalVelocityNet) and not net.training and net.num_classes == 10
        assert {k: net.config[k] for k in recipe["net"]} == recipe["net"]
    shape = (1, 28, 28) if recipe["data"] == "digits28" else (1, 8, 8)
    loaded = load_testbed(name, 6, "3,7")
    assert loaded.data_shape == shape and loaded.model_kwargs["y"].tolist() == [3, 7, 3, 7, 3, 7]
    x = sample(loaded.model, (6, *shape), steps=4, model_kwargs=loaded.model_kwargs)
    assert torch.isfinite(x).all() and 0.2 < float(x.std()) < 2.0


def test_guidance_makes_the_sit_test_bed_draw_its_labels():
    """The trained SiT with classifier-free guidance: the digits classifier reads the asked label in 10 of 10
    guided samples (9 of 10 unguided), 32 steps."""
    from lazyflow.runtime.models.embedded import load_classifier

    found = {}
    for scale in (1.0, 1.5):
        loaded = load_testbed("sit-digits", 10, "0,1,2,3,4,5,6,7,8,9", scale)
        x = sample(loaded.model, (10, 1, 8, 8), steps=32, model_kwargs=loaded.model_kwargs)
        found[scale] = int((load_classifier()(x).argmax(1) == loaded.model_kwargs["y"]).sum())
    assert found[1.5] >= 9 and found[1.5] >= found[1.0]


def test_labels_and_guidance_change_the_samples():
    path = str(shipped_testbed("guided-mlp"))
    runs = {}
    for labels, scale in (("1", 1.0), ("2", 1.0), ("1", 2.0)):
        loaded = load_conditional(path, device=torch.device("cpu"), num_samples=4, class_labels=labels, guidance=scale)
        runs[labels, scale] = sample(loaded.model, (4, 1, 8, 8), steps=6, model_kwargs=loaded.model_kwargs)
        assert ("guidance" in loaded.note) == (scale != 1.0)
    assert (runs["1", 1.0] - runs["2", 1.0]).abs().mean() > 0.1
    assert (runs["1", 1.0] - runs["1", 2.0]).abs().mean() > 0.01


def test_the_recipes_train_deterministically_with_label_dropout_and_batchnorm(tmp_path):
    points, labels = data.digits()[:64], data.digits_labels()[:64]
    net = {"arch": "unet", "width": 8, "time": "gaussian", "time_freqs": 4, "norm": "batch", "label_dropout": 0.5}
    first, second = (train_conditional(points, labels, net=net, steps=3, batch=8, lr=1e-3, ema=None, seed=2,
                                       progress=False) for _ in range(2))
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in first.modules())
    assert int(first.unet.down1.norm1.num_batches_tracked) == 3        # running statistics kept (no average)
    x = data.digits28(copies=2)
    assert x.shape == (2 * 1797, 1, 28, 28) and float(x.min()) >= -1 and float(x.max()) <= 1
    assert torch.equal(x, data.digits28(copies=2))


def test_train_seed_gives_another_network_and_the_card_says_how(tmp_path, capsys):
    """``lazyflow train NAME --seed S``: the recipe with another seed (another network; the same seed the same
    weights), recorded in the card's recipe and command; a bad seed is refused in one line."""
    from safetensors.torch import load_file

    for seed, folder in ((7, "a"), (7, "b"), (8, "c")):
        assert main(["train", "bn-unet", "--steps", "2", "--seed", str(seed), "--out-dir", str(tmp_path / folder)]) == 0
    card = json.loads((tmp_path / "a" / "bn-unet.json").read_text())
    assert card["recipe"]["seed"] == 7 and card["command"] == "lazyflow train bn-unet --steps 2 --seed 7"
    a, b, c = (load_file(tmp_path / folder / "bn-unet.safetensors") for folder in "abc")
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert any(not torch.equal(a[key], c[key]) for key in a)
    capsys.readouterr()
    assert main(["train", "bn-unet", "--seed", "-1", "--out-dir", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--seed must be an integer" in err[0]


def test_the_conditional_kind_refuses_what_it_cannot_run(tmp_path, capsys):
    out = str(tmp_path / "x.pt")
    base = ["sample", "--model", str(shipped_testbed("cond-mlp")), "--model-kind", "conditional"]
    assert main([*base, "--out", out]) == 2                                          # no labels
    assert main([*base, "--class-labels", "10,11", "--out", out]) == 2               # out of range
    assert main(["sample", "--model", "runtime/models/weights/digits.safetensors", "--model-kind", "conditional",
                 "--class-labels", "1", "--out", out]) == 2
    err = capsys.readouterr().err
    assert "--class-labels is needed" in err and "out of range" in err and "not a ConditionalVelocityNet" in err


@pytest.fixture(scope="module")
def pilot(tmp_path_factory):
    """A quick model bench of cond-mlp (linear rows only, 4 NFE) with the data frames and one tuned grid."""
    folder = tmp_path_factory.mktemp("bench")
    argv = ["bench", "--model", str(shipped_testbed("cond-mlp")), "--model-kind", "conditional", "--class-labels",
            "0,1,2,3,4,5,6,7,8,9", "--nfe", "4", "--quick", "--no-progress", "--json", "--no-peers", "--n", "20",
            "--seed", "1", "--reference-steps", "40", "--stats-samples", "300", "--tune", "1",
            "--save", str(folder / "pilot.json")]
    return argv, folder


@pytest.mark.slow   # a bench with statistics and a tuned grid (about a minute)
def test_the_model_bench_runs_the_data_frames_recommends_tunes_and_checks_a_pilot(pilot, capsys):
    argv, folder = pilot
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    names = {r["method"] for r in result["rows"]}
    assert {"linear/data-multistep/uniform[diag]", "linear/data-multistep-pc/logsnr:-1,2.5[diag|first-call]",
            "linear/data-multistep3-pc/uniform[diag|label]"} <= names
    assert "linear/data-multistep/uniform[full]" in names                     # 300 samples >= 2 x 64
    assert "linear/data-multistep/uniform[full|label]" not in names           # 30 per label < 2 x 64: diag only
    info = result["data_stats"]["diag|label"]
    assert info["samples"] == 300 and info["model_calls"] == 32 and info["condition"] == "label"
    assert isinstance(ConditionalStats.load(folder / "pilot.stats-diag-label.safetensors"), ConditionalStats)
    tuned = result["tuned_rows"]
    assert len(tuned) == 1 and tuned[0]["tuning_seed"] == 2 and "/tuned:pilot.grid-0.json" in tuned[0]["method"]
    rec = result["recommendation"]["4"]
    best = min([*result["rows"], *tuned], key=lambda r: r["path"])
    assert rec["method"] == best["method"] and rec["choice"]["schedule"] == "linear" and "pilot" in rec
    # the pick reproduces from its printed flags
    args = rec["sample_args"]
    assert main(["sample", *args, "--out", str(folder / "x.pt")]) == 0
    capsys.readouterr()
    # a second bench (other noise) runs the pilot's pick and checks it
    at = argv.index("--tune")
    main_argv = argv[:at] + argv[at + 2:]
    main_argv[main_argv.index("--seed") + 1] = "0"
    main_argv[main_argv.index("--save") + 1] = str(folder / "main.json")
    assert main([*main_argv, "--pilot", str(folder / "pilot.json")]) == 0
    checked = json.loads(capsys.readouterr().out)["pilot"]["budgets"]["4"]
    assert checked["method"] == rec["method"] and checked["ratio_to_best_of_ours"] >= 1.0
