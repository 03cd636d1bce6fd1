"""``lazyflow bench --model FILE --model-kind KIND`` on models built here with random weights (a SiT
checkpoint, a TorchScript file, a tiny diffusers SD3 transformer with saved prompt embeddings): the
printed pathwise errors equal an independent computation (our own Euler / midpoint loops against our
own RK4 solution), the reference is batched, cached, reused and refused when the settings differ."""
from __future__ import annotations

import json
import math

import pytest
import torch

from lazyflow.cli import main
from lazyflow.runtime.core.noise import standard_normal
from lazyflow.runtime.evaluation.bench_references import PathReferences
from lazyflow.runtime.models.adapters import from_sit
from lazyflow.runtime.models.sit import build_sit, save_sit

pytestmark = pytest.mark.usefixtures("one_torch_thread")   # tiny models (tests/conftest.py)

SIT_PARAMS = ["--model-param", "hidden_size=32", "--model-param", "depth=2", "--model-param", "num_heads=4"]
QUICK = ["--quick", "--no-progress", "--json", "--no-data-frames"]   # the data frames: tests/test_testbeds.py


def small_sit(seed: int = 0):
    """A SiT-S/2 of depth 2 on 8x8 latents, every weight random (adaLN-Zero would make the output 0)."""
    torch.manual_seed(seed)
    model = build_sit("sit-s/2", input_size=8, hidden_size=32, depth=2, num_heads=4, num_classes=10)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "pos_embed":
                p.normal_(0, 0.1)
    return model.eval()


class Velocity(torch.nn.Module):
    """v(x, t) = tanh(W [x, t]) reshaped: a smooth velocity for TorchScript."""

    def __init__(self, dim: int = 6):
        super().__init__()
        torch.manual_seed(3)
        self.layer = torch.nn.Linear(dim + 1, dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        flat = torch.cat([x.reshape(x.shape[0], -1), t.reshape(-1, 1).to(x.dtype)], dim=1)
        return torch.tanh(self.layer(flat)).reshape(x.shape)


def run_bench(capsys, *argv: str) -> dict:
    assert main(["bench", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def rows_of(result: dict, method: str) -> dict[int, dict]:
    return {r["budget"]: r for r in result["rows"] if r["method"] == method}


@torch.no_grad()
def rk4(v, x0: torch.Tensor, steps: int = 200) -> torch.Tensor:
    """x(1) of dx/dt = v(x, t) from x(0) = x0: classical RK4, float64 state, the model in float32."""
    x, h = x0.double(), 1.0 / steps
    f = (lambda x, t: v(x.float(), torch.full((len(x),), t)).double())   # noqa: E731
    for k in range(steps):
        t = k * h
        a = f(x, t)
        b = f(x + h / 2 * a, t + h / 2)
        c = f(x + h / 2 * b, t + h / 2)
        d = f(x + h * c, t + h)
        x = x + h / 6 * (a + 2 * b + 2 * c + d)
    return x


@torch.no_grad()
def euler(v, x0: torch.Tensor, steps: int) -> torch.Tensor:
    x = x0.clone()
    for k in range(steps):
        x = x + v(x, torch.full((len(x),), k / steps)) / steps
    return x


@torch.no_grad()
def midpoint(v, x0: torch.Tensor, steps: int) -> torch.Tensor:
    x, h = x0.clone(), 1.0 / steps
    for k in range(steps):
        t = torch.full((len(x),), k * h)
        x = x + h * v(x + h / 2 * v(x, t), t + h / 2)
    return x


def mean_distance(x: torch.Tensor, reference: torch.Tensor) -> float:
    return float((x.double() - reference.double()).reshape(len(x), -1).norm(dim=1).mean())


def test_sit_checkpoint_path_equals_an_independent_euler_loop_and_sample_reproduces_it(tmp_path, capsys):
    net = small_sit()
    ckpt = save_sit(net, tmp_path / "sit.pt")
    cache = tmp_path / "ref.safetensors"
    result = run_bench(capsys, "--model", str(ckpt), "--model-kind", "sit-s/2", *SIT_PARAMS, "--class-labels", "1,2",
                       "--n", "4", "--nfe", "4,6", "--batch-size", "3", "--reference-steps", "64",
                       "--reference-cache", str(cache), "--no-peers", *QUICK)
    assert result["data_shape"] == [4, 8, 8] and result["conditioning"]["class_labels"] == [1, 2, 1, 2]
    labels = torch.tensor([1, 2, 1, 2])
    v = (lambda x, t: from_sit(net)(x, t, y=labels))   # noqa: E731
    x0 = standard_normal(0, range(4), 0, (4, 8, 8))
    exact = rk4(v, x0, 64)
    from safetensors.torch import load_file
    assert (load_file(str(cache))["samples"] - exact).abs().max() < 1e-3        # the reference is x*
    row = rows_of(result, "linear/euler/uniform")[4]
    check = result["path_reference"]["check"]       # |x*_N - x*_N/2| bounds |x*_N - x*| (measured)
    assert row["nfe"] == 4 and row["path"] == pytest.approx(mean_distance(euler(v, x0, 4), exact), abs=check)
    assert all(r["path"] is not None and r["nfe"] <= r["budget"] for r in result["rows"])
    assert result["path_reference"]["steps"] == 64 and result["path_reference"]["check_steps"] == 32
    out = tmp_path / "x.pt"                                                    # the row's flags reproduce it
    assert main(["sample", *row["sample_args"], "--out", str(out)]) == 0
    capsys.readouterr()
    assert mean_distance(torch.load(out, weights_only=True), load_file(str(cache))["samples"]) == \
        pytest.approx(row["path"], rel=1e-6)


def test_sit_labels_drawn_from_the_label_seed(tmp_path, capsys):
    ckpt = save_sit(small_sit(), tmp_path / "sit.pt")
    result = run_bench(capsys, "--model", str(ckpt), "--model-kind", "sit-s/2", *SIT_PARAMS, "--n", "3", "--nfe", "2",
                       "--label-seed", "5", "--reference-steps", "8", "--no-peers", "--schedule", "linear", *QUICK)
    drawn = torch.randint(10, (3,), generator=torch.Generator().manual_seed(5)).tolist()
    assert result["conditioning"]["class_labels"] == drawn and "--label-seed 5" in result["conditioning"]["labels"]
    assert {r["method"] for r in result["rows"]} == {"linear/euler/uniform", "linear/multistep/uniform",
                                                     "linear/multistep-pc/uniform"}


@pytest.mark.slow   # 2-4 s: a model bench with every peer
def test_torchscript_file_with_the_peers_batched(tmp_path, capsys):
    pytest.importorskip("flow_matching")
    path = tmp_path / "v.pt"
    torch.jit.save(torch.jit.script(Velocity()), str(path))
    argv = ["--model", str(path), "--model-kind", "torchscript", "--n", "5", "--nfe", "4", "--batch-size", "2",
            "--reference-steps", "64", *QUICK]
    assert main(["bench", *argv]) == 2                                      # no data shape: refused
    assert "--shape" in capsys.readouterr().err
    result = run_bench(capsys, *argv, "--shape", "2,3")
    v = torch.jit.load(str(path))
    x0 = standard_normal(0, range(5), 0, (2, 3))
    exact = rk4(v, x0, 64)
    ours, peer = rows_of(result, "linear/euler/uniform")[4], rows_of(result, "flow_matching midpoint")[4]
    check = result["path_reference"]["check"]
    assert 0 < check < 1e-3
    assert ours["path"] == pytest.approx(mean_distance(euler(v, x0, 4), exact), abs=check)
    assert peer["peer"] and peer["nfe"] == 4
    assert peer["path"] == pytest.approx(mean_distance(midpoint(v, x0, 2), exact), abs=check)
    assert not any(r["stochastic"] for r in result["rows"])


def test_diffusers_transformer_with_saved_prompt_embeddings(tmp_path, capsys):
    pytest.importorskip("diffusers")
    from diffusers import SD3Transformer2DModel
    from safetensors.torch import save_file

    from lazyflow.runtime.integrations.flow_convention import from_diffusers_flow

    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8,
                                        num_attention_heads=2, caption_projection_dim=16, joint_attention_dim=16,
                                        pooled_projection_dim=16, out_channels=4).eval()
    transformer.save_pretrained(tmp_path / "transformer")
    g = torch.Generator().manual_seed(1)
    embeds = {"prompt_embeds": torch.randn(2, 5, 16, generator=g),
              "pooled_prompt_embeds": torch.randn(2, 16, generator=g)}
    save_file(embeds, str(tmp_path / "prompts.safetensors"))
    base = ["--model", str(tmp_path / "transformer"), "--model-kind", "diffusers-transformer"]
    assert main(["bench", *base, *QUICK]) == 2 and "--prompt-embeds" in capsys.readouterr().err
    cache = tmp_path / "ref.safetensors"
    result = run_bench(capsys, *base, "--prompt-embeds", str(tmp_path / "prompts.safetensors"), "--n", "3",
                       "--nfe", "4", "--batch-size", "2", "--reference-steps", "32", "--reference-cache", str(cache),
                       "--no-peers", *QUICK)
    prompt = torch.tensor([0, 1, 0])
    flow = from_diffusers_flow(transformer)
    v = (lambda x, t: flow(x, t, encoder_hidden_states=embeds["prompt_embeds"][prompt],   # noqa: E731
                           pooled_projections=embeds["pooled_prompt_embeds"][prompt]))
    x0 = standard_normal(0, range(3), 0, (4, 8, 8))
    row = rows_of(result, "linear/euler/uniform")[4]
    assert result["data_shape"] == [4, 8, 8] and result["conditioning"]["prompts"] == 2
    # a random transformer's velocity oscillates in t (timestep 1000 sigma): the reference is not converged at
    # 32 steps, so the row is checked against the reference it was scored by (the SiT test checks x* itself)
    from safetensors.torch import load_file
    assert row["path"] == pytest.approx(mean_distance(euler(v, x0, 4), load_file(str(cache))["samples"]), rel=1e-5)
    save_file({**embeds, "pooled_prompt_embeds": embeds["pooled_prompt_embeds"] + 1},
              str(tmp_path / "prompts.safetensors"))                        # other embeddings, same file name
    assert main(["bench", *base, "--prompt-embeds", str(tmp_path / "prompts.safetensors"), "--n", "3", "--nfe", "4",
                 "--reference-steps", "32", "--reference-cache", str(cache), *QUICK]) == 2
    assert "prompt_embeds" in capsys.readouterr().err


def test_reference_cache_is_reused_and_refused_when_settings_differ(tmp_path, capsys, monkeypatch):
    path = tmp_path / "v.pt"
    torch.jit.save(torch.jit.script(Velocity()), str(path))
    cache = tmp_path / "ref.safetensors"
    argv = ["--model", str(path), "--model-kind", "torchscript", "--shape", "6", "--n", "4", "--nfe", "2,4",
            "--reference-steps", "32", "--reference-cache", str(cache), "--no-peers", *QUICK]
    first = run_bench(capsys, *argv)
    assert cache.exists() and not first["path_reference"]["read_from_cache"]

    def never(self, steps):
        raise AssertionError("the reference was computed again")
    monkeypatch.setattr(PathReferences, "solve", never)
    second = run_bench(capsys, *argv, "--batch-size", "3")                 # the batch size is not a setting
    assert second["path_reference"]["read_from_cache"]
    assert [r["path"] for r in second["rows"]] == pytest.approx([r["path"] for r in first["rows"]], rel=1e-5)
    assert second["path_reference"]["check"] == first["path_reference"]["check"]
    for flag, value, named in (("--seed", "1", "seed"), ("--n", "5", "n"), ("--reference-steps", "64", "steps")):
        changed = [*argv, flag, value]
        assert main(["bench", *changed]) == 2
        err = capsys.readouterr().err
        assert "made with other settings" in err and f"{named} " in err
    other = Velocity()
    other.layer.bias.data += 1
    torch.jit.save(torch.jit.script(other), str(path))                      # same path, other weights
    assert main(["bench", *argv]) == 2 and "model '" in capsys.readouterr().err


def test_model_file_refusals(tmp_path, capsys):
    path = tmp_path / "v.pt"
    torch.jit.save(torch.jit.script(Velocity()), str(path))
    base = ["bench", "--model", str(path), "--model-kind", "torchscript", "--shape", "6", *QUICK]
    for extra, said in ((["--metric", "fd"], "--metric"), (["--prediction", "x"], "--prediction"),
                        (["--class-labels", "1"], "--class-labels"), (["--schedule", "linear-sde"], "deterministic"),
                        (["--reference-steps", "2"], "--reference-steps")):
        assert main([*base, *extra]) == 2
        assert said in capsys.readouterr().err
    with pytest.raises(SystemExit, match="2"):                             # refused by the parser, in one line
        main([*base, "--shape", "0"])
    assert "argument --shape: cannot read '0' as a data shape" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not an archive")
    assert main(["bench", "--model", str(bad), "--model-kind", "torchscript", *QUICK]) == 2
    assert "TorchScript" in capsys.readouterr().err


@pytest.mark.slow
def test_full_sit_bench_with_peers_converges(tmp_path, capsys):
    """Every default row and the deterministic peers on a random SiT; the verdict on the reference's
    convergence follows its check, and the text report names the sampler to use at each budget."""
    ckpt = save_sit(small_sit(), tmp_path / "sit.pt")
    argv = ["bench", "--model", str(ckpt), "--model-kind", "sit-s/2", *SIT_PARAMS, "--n", "8", "--nfe", "4,6,8",
            "--reference-steps", "400", "--no-progress"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "which sampler at each budget" in text and "mean norm" in text
    assert main([*argv, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    check = result["path_reference"]["check"]
    assert 0 < check < 1e-4                         # 400 -> 200 steps on this smooth random field
    verdict = "reference converged" if check <= 0.01 * min(r["path"] for r in result["rows"] if r["budget"] == 4) \
        else "reference NOT converged"
    assert verdict in text
    assert {r["method"] for r in result["rows"] if r["peer"]} >= {"diffusers UniPC", "diffusers DPM-Solver++ 2M"}
    assert all(r["path"] is not None and math.isfinite(r["path"]) for r in result["rows"])


@pytest.mark.slow
def test_flux_transformer_with_packed_latents_and_shared_ids(tmp_path, capsys):
    """FLUX takes sigma (timestep scale 1), packed latents (--shape) and ids passed to every call as they are."""
    pytest.importorskip("diffusers")
    from diffusers import FluxPipeline, FluxTransformer2DModel
    from safetensors.torch import load_file, save_file

    from lazyflow.runtime.integrations.flow_convention import from_diffusers_flow

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, axes_dims_rope=[4, 4, 8]).eval()
    transformer.save_pretrained(tmp_path / "flux")
    g = torch.Generator().manual_seed(2)
    ids = FluxPipeline._prepare_latent_image_ids(1, 4, 4, "cpu", torch.float32).contiguous()
    cond = {"prompt_embeds": torch.randn(2, 5, 32, generator=g), "pooled_prompt_embeds": torch.randn(2, 32, generator=g),
            "txt_ids": torch.zeros(5, 3), "img_ids": ids}
    save_file(cond, str(tmp_path / "prompts.safetensors"))
    cache = tmp_path / "ref.safetensors"
    result = run_bench(capsys, "--model", str(tmp_path / "flux"), "--model-kind", "diffusers-transformer",
                       "--prompt-embeds", str(tmp_path / "prompts.safetensors"), "--shape", "16,4", "--n", "3",
                       "--nfe", "4", "--reference-steps", "16", "--reference-cache", str(cache), "--no-peers", *QUICK)
    prompt = torch.tensor([0, 1, 0])
    flow = from_diffusers_flow(transformer, timestep_scale=1)
    v = (lambda x, t: flow(x, t, encoder_hidden_states=cond["prompt_embeds"][prompt], txt_ids=cond["txt_ids"],   # noqa: E731
                           pooled_projections=cond["pooled_prompt_embeds"][prompt], img_ids=ids, guidance=None))
    x0 = standard_normal(0, range(3), 0, (16, 4))
    row = rows_of(result, "linear/euler/uniform")[4]
    assert row["path"] == pytest.approx(mean_distance(euler(v, x0, 4), load_file(str(cache))["samples"]), rel=1e-5)


@pytest.mark.slow
def test_the_built_in_bench_and_the_model_bench_are_one_code_path(tmp_path):
    """The embedded digits model exported to TorchScript: the model bench's path equals the built-in bench's
    on the same rows (same noise, same reference solver and steps), to the last bit."""
    from lazyflow.runtime.evaluation.bench import OurMethod, run_quality_bench
    from lazyflow.runtime.evaluation.model_bench import run_model_bench
    from lazyflow.runtime.models import embedded

    path = tmp_path / "digits.pt"
    torch.jit.save(torch.jit.script(embedded.load("digits")), str(path))
    methods = [OurMethod("linear", "euler", "uniform"), OurMethod("vp", "multistep-pc", "logsnr")]
    built_in = run_quality_bench("digits", [4], 16, 0, include_peers=False, methods=methods, log=lambda *a: None)
    model = run_model_bench(str(path), "torchscript", [4], 16, 0, methods=methods, include_peers=False,
                            reference_steps=800, log=lambda *a: None, progress=False)
    assert [r["path"] for r in model["rows"]] == [r["path"] for r in built_in["rows"]]
    assert model["path_reference"]["check"] == built_in["path_reference"]["check"]


def test_the_recommendation_is_the_lowest_path_of_ours_and_the_pilot_check_scores_the_first_halfs_pick():
    from lazyflow.runtime.evaluation.model_bench import recommendations

    def row(method, peer, path, halves, budget=4, **extra):
        return {"method": method, "peer": peer, "stochastic": False, "budget": budget, "nfe": budget, "path": path,
                "path_halves": halves, "sample_args": ["--x"] if not peer else None, **extra}

    result = {"nfe_budgets": [4], "rows": [row("linear/multistep-pc/uniform", False, 1.0, [1.0, 1.0]),
                                           row("a", False, 0.8, [0.7, 0.9], choice={"grid": "uniform"}),
                                           row("b", False, 0.75, [0.8, 0.7]),
                                           row("peer", True, 0.9, [0.95, 0.85])],
              "tuned_rows": [row("a/tuned", False, 0.85, [0.6, 1.1], tuned=True)]}
    rec = recommendations(result)["4"]
    assert rec["method"] == "b" and rec["path"] == 0.75 and rec["best_peer"] == "peer"
    assert abs(rec["ratio_to_peer"] - 0.75 / 0.9) < 1e-12
    pilot = rec["pilot"]                      # chosen on the first half: the tuned row (0.6), scored on the second
    assert pilot["method"] == "a/tuned" and pilot["second_half"] == 1.1 and pilot["best_second_half"] == 0.7
    assert abs(pilot["ratio_to_peer"] - 1.1 / 0.85) < 1e-12
    assert rec["path"] <= min(r["path"] for r in result["rows"] if not r["peer"])   # never worse than multistep-pc


@pytest.mark.slow   # 4 s: fits bespoke solvers
def test_bespoke_rows_are_fitted_on_other_noise_and_recommended_where_lowest(tmp_path, capsys):
    """--bespoke: per budget a solver fitted on the noise of seed + 1, written next to --save, scored here as a
    tuned row; on the digits model it follows the ODE more closely than the midpoint rule it starts from."""
    from pathlib import Path

    import lazyflow

    save = tmp_path / "bench.json"
    digits = Path(lazyflow.__file__).parent / "runtime" / "models" / "weights" / "digits.safetensors"
    args = ["bench", "--model", str(digits), "--model-kind", "file", "--nfe", "2", "--n", "32", "--seed", "0",
            "--reference-steps", "64", "--no-peers", "--bespoke", *QUICK]
    assert main(args) == 2 and "give --save" in capsys.readouterr().err
    assert main([*args, "--save", str(save)]) == 0
    result = json.loads(save.read_text())
    (row,) = result["tuned_rows"]
    assert row["method"] == "linear/bespoke/tuned:bench.bespoke-2.json" and row["held_out"] and row["tuning_seed"] == 1
    midpoint = next(r for r in result["rows"] if r["method"] == "linear/midpoint/uniform")
    assert row["path"] < 0.9 * midpoint["path"]
    assert result["recommendation"]["2"]["method"] == row["method"]
    assert json.loads((tmp_path / "bench.bespoke-2.json").read_text())["integrator"] == "bespoke"


def test_the_report_is_stdout_and_the_progress_stderr(tmp_path, capsys):
    """``lazyflow bench ... > report.txt`` keeps the report alone: the per-row lines go to stderr."""
    path = tmp_path / "v.pt"
    torch.jit.save(torch.jit.script(Velocity()), str(path))
    assert main(["bench", "--model", str(path), "--model-kind", "torchscript", "--shape", "2,3", "--n", "4",
                 "--nfe", "2", "--reference-steps", "16", "--no-peers", "--quick", "--no-progress",
                 "--no-data-frames"]) == 0
    out, err = capsys.readouterr()
    assert "path reference" in err and "linear/euler/uniform: 2->" in err
    assert "path reference" not in out and "linear/euler/uniform: 2->" not in out
    assert out.startswith("path (") and "which sampler at each budget" in out
