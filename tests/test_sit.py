"""SiT written from the papers: official key names, strict loading from .pt (weights_only) and
safetensors, the learn_sigma adapter, sampling in a lazy frame, and the ``lazyflow sample`` command.
Only small randomly initialised models; no weights are downloaded."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lazyflow import LazyflowError, sample
from lazyflow.cli import main
from lazyflow.runtime.models.adapters import from_sit
from lazyflow.runtime.models.sit import KINDS, SiT, build_sit, load_sit, save_sit, sincos_2d, sit_config

SMALL = {"input_size": 8, "hidden_size": 32, "depth": 2, "num_heads": 4, "num_classes": 10}


pytestmark = pytest.mark.usefixtures("one_torch_thread")   # tiny models (tests/conftest.py)


def small_sit(seed: int = 0, **overrides) -> SiT:
    """A small SiT-S/2 with every weight random (adaLN-Zero would make the output 0)."""
    torch.manual_seed(seed)
    model = build_sit("sit-s/2", **{**SMALL, **overrides})
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "pos_embed":
                p.normal_(0, 0.1)
    return model.eval()


def official_keys(depth: int) -> set[str]:
    keys = {"pos_embed", "x_embedder.proj.weight", "x_embedder.proj.bias", "y_embedder.embedding_table.weight",
            *(f"t_embedder.mlp.{i}.{w}" for i in (0, 2) for w in ("weight", "bias")),
            *(f"final_layer.{m}.{w}" for m in ("linear", "adaLN_modulation.1") for w in ("weight", "bias"))}
    for n in range(depth):
        keys |= {f"blocks.{n}.{m}.{w}" for m in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2", "adaLN_modulation.1")
                 for w in ("weight", "bias")}
    return keys


def test_sit_xl_2_has_the_official_keys_and_shapes():
    with torch.device("meta"):
        model = build_sit("SiT-XL/2")
    state = model.state_dict()
    assert set(state) == official_keys(28)
    assert state["pos_embed"].shape == (1, 256, 1152) and not model.pos_embed.requires_grad
    assert state["y_embedder.embedding_table.weight"].shape == (1001, 1152)   # row 1000: the null class
    assert state["x_embedder.proj.weight"].shape == (1152, 4, 2, 2)
    assert state["final_layer.linear.weight"].shape == (2 * 2 * 8, 1152)      # learn_sigma: 8 channels
    assert state["blocks.0.adaLN_modulation.1.weight"].shape == (6 * 1152, 1152)
    assert state["blocks.27.mlp.fc1.weight"].shape == (4608, 1152)
    total = sum(v.numel() for k, v in state.items() if k != "pos_embed")
    assert abs(total / 1e6 - 675) < 1.0                                         # SiT-XL/2: 675M parameters


def test_every_kind_resolves():
    assert len(KINDS) == 12
    assert sit_config("sit-b/4")["patch_size"] == 4 and sit_config("SiT-L-8")["depth"] == 24
    with pytest.raises(LazyflowError, match="unknown SiT kind"):
        sit_config("sit-xxl/2")


def test_position_embedding_is_the_fixed_2d_sine_cosine():
    pe = sincos_2d(8, 3)
    assert pe.shape == (9, 8)
    # patch (row 1, column 2): the first half encodes the column, the second the row
    col, row = torch.tensor(2.0), torch.tensor(1.0)
    omega = 1 / 10000 ** (torch.arange(2) / 2)
    expect = torch.cat([torch.sin(col * omega), torch.cos(col * omega), torch.sin(row * omega), torch.cos(row * omega)])
    assert torch.allclose(pe[1 * 3 + 2], expect, atol=1e-6)


@pytest.mark.parametrize("suffix,wrap", [(".pt", None), (".pt", "ema"), (".pt", "model"), (".safetensors", None)])
def test_checkpoint_round_trip_loads_strictly(tmp_path, suffix, wrap):
    model = small_sit()
    path = tmp_path / f"sit{suffix}"
    if wrap:
        torch.save({wrap: model.state_dict(), "step": torch.tensor(7)}, path)
    else:
        save_sit(model, path)
    loaded = load_sit(path, "sit-s/2", hidden_size=32, depth=2, num_heads=4)
    assert loaded.num_classes == 10 and loaded.data_shape == (4, 8, 8) and loaded.learn_sigma
    x, t, y = torch.randn(3, 4, 8, 8), torch.rand(3), torch.tensor([0, 5, 10])
    with torch.no_grad():
        assert torch.equal(loaded(x, t, y), model(x, t, y))


def test_loading_refuses_other_models_and_pickled_code(tmp_path):
    path = save_sit(small_sit(), tmp_path / "sit.pt")
    with pytest.raises(LazyflowError, match="not a sit-s/2 checkpoint"):
        load_sit(path, "sit-s/2", hidden_size=32, depth=3, num_heads=4)
    bad = tmp_path / "code.pt"
    torch.save({"model": torch.nn.Linear(2, 2)}, bad)           # a pickled module, not a state dict
    with pytest.raises(LazyflowError, match="weights_only"):
        load_sit(bad, "sit-s/2")


def test_learn_sigma_adapter_keeps_the_velocity_channels():
    model = small_sit()
    x, t, y = torch.randn(2, 4, 8, 8), torch.rand(2), torch.tensor([1, 2])
    with torch.no_grad():
        raw = model(x, t, y)
        velocity = from_sit(model)(x, t, y=y)
    assert raw.shape == (2, 8, 8, 8) and velocity.shape == (2, 4, 8, 8)
    assert torch.equal(velocity, raw[:, :4])
    plain = small_sit(learn_sigma=False)
    assert plain(x, t, y).shape == (2, 4, 8, 8) and from_sit(plain)(x, t, y=y).shape == (2, 4, 8, 8)


def test_sampling_in_a_lazy_frame():
    model = small_sit()
    labels = torch.tensor([0, 3, 9, 10])
    kwargs = {"y": labels}
    x = sample(from_sit(model), (4, 4, 8, 8), schedule="pointmass", steps=4, integrator="multistep-pc", seed=1,
               model_kwargs=kwargs)
    assert x.shape == (4, 4, 8, 8) and torch.isfinite(x).all()
    by_hand = sample(lambda z, t, y: model(z, t, y)[:, :4], (4, 4, 8, 8), schedule="pointmass", steps=4,
                     integrator="multistep-pc", seed=1, model_kwargs=kwargs)
    assert torch.equal(x, by_hand)
    half = sample(from_sit(model), (4, 4, 8, 8), schedule="pointmass", steps=4, integrator="multistep-pc", seed=1,
                  model_kwargs=kwargs, batch_size=2)                     # labels follow their samples
    assert torch.allclose(half, x, atol=1e-5)


def _tiny_vae(folder):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(4, 4),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        layers_per_block=1, latent_channels=4, norm_num_groups=2)
    vae.save_pretrained(folder)
    return folder


def test_sample_command_writes_latents_and_images(tmp_path, capsys):
    pytest.importorskip("diffusers")
    from PIL import Image

    ckpt = save_sit(small_sit(), tmp_path / "SiT-S-2.pt")
    vae = _tiny_vae(tmp_path / "vae")
    out = tmp_path / "latents.pt"
    argv = ["sample", "--model", str(ckpt), "--model-kind", "sit-s/2", "--model-param", "hidden_size=32",
            "--model-param", "depth=2", "--model-param", "num_heads=4", "--class-labels", "1,2,3", "--n", "5",
            "--guidance", "1.5", "--guidance-interval", "0,0.7", "--steps", "3", "--integrator", "multistep-pc",
            "--vae", str(vae), "--out", str(out)]
    assert main(argv) == 0
    latents = torch.load(out, weights_only=True)
    assert latents.shape == (5, 4, 8, 8) and torch.isfinite(latents).all()
    image = np.asarray(Image.open(out.with_suffix(".png")))
    assert image.shape == (2 * 16, 3 * 16, 3)                                # 5 images of 16x16 in a 3-wide grid
    assert "guidance 1.5" in capsys.readouterr().out
    npy = tmp_path / "latents.npy"
    assert main([*argv[:-4], "--out", str(npy)]) == 0
    assert np.load(npy).shape == (5, 4, 8, 8)


def test_sample_command_refusals(tmp_path, capsys):
    ckpt = save_sit(small_sit(), tmp_path / "sit.pt")
    base = ["sample", "--model", str(ckpt), "--model-kind", "sit-s/2", "--model-param", "hidden_size=32",
            "--model-param", "depth=2", "--model-param", "num_heads=4"]
    assert main([*base, "--out", str(tmp_path / "x.pt")]) == 2                          # no class labels
    assert main([*base, "--class-labels", "11", "--out", str(tmp_path / "x.pt")]) == 2  # out of range
    assert main([*base, "--class-labels", "1", "--out", str(tmp_path / "x.png")]) == 2   # latents are not images
    assert main(["sample", "--guidance", "2", "--out", str(tmp_path / "x.npy")]) == 2    # guidance needs a SiT
    err = capsys.readouterr().err
    assert "--class-labels is needed" in err and "out of range" in err and "--model-kind" in err
