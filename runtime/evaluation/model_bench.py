"""``lazyflow bench --model CKPT --model-kind KIND``: the bench on the user's own model, with no dataset.

Each deterministic sampler, ours and the peers', is scored by its pathwise error (:mod:`.paths`)

    path = (1/n) sum_i |x_i - x*_i|        (L2 over each sample's coordinates)

against x*, the model's own ODE solution from the same start noise x0_i = standard_normal(seed, i): the
probability-flow ODE of the model's velocity on its source schedule, solved by :data:`~.paths.PATH_REFERENCE_INTEGRATOR`
(multistep3-pc) on a uniform grid of ``reference_steps`` steps in float64 (the model is called in its own
dtype), checked against the same solver at half the steps.  Measured on the tests' random SiT against RK4 at
256 steps: 50/100/200/400 steps are 8.5e-4/2.2e-4/5.6e-5/1.4e-5 away (second order: the grid's end steps), so
x*_N is about check/3 from the exact solution, and the check bounds it.  Stochastic samplers have no
pathwise target and are left out, and so are the data-frame integrators (they need the data's statistics).

It is the built-in bench's machinery (:class:`.bench._Runner`: the same rows, tables and ``lazyflow sample``
flags) with what a checkpoint needs: the conditioning (SiT class labels, given or drawn from a seed; a
diffusers transformer's prompt embeddings) following its samples, everything run ``batch_size`` samples at
a time (bounded memory), a progress bar of network evaluations, and the reference cached in a safetensors
file that records the settings it was made with (:mod:`.reference_cache`; another setting is refused)."""
from __future__ import annotations

import datetime
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import torch

from ...errors import LazyflowError
from ..models.kind import LoadedModel, ModelKind
from .bench import BenchModel, OurMethod, _Runner, format_table, machine, our_methods, sample_args
from .goals import best_row, versus
from .paths import PATH_REFERENCE_GRID, PATH_REFERENCE_INTEGRATOR
from .reference_cache import cached_reference
from .scorers import PATH_METRIC

__all__ = ["run_model_bench", "format_model_report", "model_bench_methods", "load_bench_model", "PathOnlyScorer",
           "MODEL_REFERENCE_STEPS", "CONVERGED"]

#: the reference's default steps (its check runs half of them)
MODEL_REFERENCE_STEPS = 400
#: the kind options that name a file the model depends on (the cache compares their bytes)
FILE_OPTIONS = ("prompt_embeds",)
#: the reference counts as converged when halving its steps moves it by less than this share of the best
#: 4-NFE path (the triangle inequality bounds how far any row's path moves by that distance)
CONVERGED = 0.01


class PathOnlyScorer:
    """No dataset: nothing scores the samples but ``path`` (added by the runner)."""

    metrics: tuple[str, ...] = ()

    def score(self, samples: Any) -> dict[str, float]:
        return {}


class _Metered(torch.nn.Module):
    """The model, reporting each call's batch size (network evaluations) to ``update``; a module so that the
    sampler calls it in its parameters' dtype."""

    def __init__(self, model: Callable, update: Callable[[int], None] | None):
        super().__init__()
        self.net, self.update = model, update

    def forward(self, x: torch.Tensor, t: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        if self.update is not None:
            self.update(x.shape[0])
        return self.net(x, t, **kwargs)


def model_bench_methods(full: bool = True) -> list[OurMethod]:
    """Ours in :func:`.bench.our_methods` that integrate an ODE (path is defined for them), without the
    data-frame integrators (not in that list: they need the data's statistics)."""
    return [m for m in our_methods(full) if not m.target().stochastic]


def _random_labels(loaded: LoadedModel, n: int, label_seed: int) -> LoadedModel:
    """``loaded`` with class labels drawn uniformly from [0, num_classes) by ``label_seed``."""
    classes = int(loaded.metadata.get("num_classes", 0))
    if classes < 1:
        raise LazyflowError("the model records no class count: give --class-labels")
    labels = torch.randint(classes, (n,), generator=torch.Generator().manual_seed(label_seed))
    device = loaded.model_kwargs["y"].device
    return replace(loaded, model_kwargs={**loaded.model_kwargs, "y": labels.to(device)})


def load_bench_model(model: str, kind: str, n: int, *, options: dict[str, Any] | None = None,
                     label_seed: int = 0, device: Any = None) -> tuple[ModelKind, LoadedModel]:
    """The file ``model`` of ``kind`` loaded for ``n`` samples with the kind's ``options``; a kind that
    takes class labels and is given none gets labels drawn by ``label_seed``."""
    from ..models.registry import load_model, model_kind_for

    found = model_kind_for(model, kind)
    options = dict(options or {})
    if options.get("vae"):
        raise LazyflowError("--vae: the bench compares latents, it decodes nothing")
    drawn = "class_labels" in found.options and not options.get("class_labels")
    if drawn:
        options["class_labels"] = "0"          # replaced below by labels drawn from label_seed
    loaded = load_model(model, kind=kind, device=device, num_samples=n, **options)
    if drawn:
        loaded = _random_labels(loaded, n, label_seed)
    if loaded.data_shape is None:
        raise LazyflowError(f"the {found.name} model at {model} does not say its data shape: give --shape, "
                            "e.g. --shape 4,32,32")
    if loaded.prediction != "velocity":
        raise LazyflowError(f"{model} predicts {loaded.prediction}; the bench on a model file compares samplers "
                            "on velocity models")
    return found, loaded


def _kind_flags(kind: str, options: dict[str, Any], loaded: LoadedModel) -> list[str]:
    """The ``lazyflow sample`` flags that load the same model with the same conditioning."""
    flags = ["--model-kind", kind]
    for name, value in options.items():
        if name == "model_params":
            flags += [w for k, v in value.items() for w in ("--model-param", f"{k}={v}")]
        elif name != "class_labels" and value not in (None, ""):
            text = ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)
            flags += ["--" + name.replace("_", "-"), text]
    if "y" in loaded.model_kwargs:
        flags += ["--class-labels", ",".join(str(int(v)) for v in loaded.model_kwargs["y"].tolist())]
    return flags


def _settings(model: str, kind: ModelKind, options: dict[str, Any], loaded: LoadedModel, n: int, seed: int,
              steps: int) -> dict[str, Any]:
    """What the reference depends on (a cache made with other settings is refused)."""
    from .reference_cache import content_digest, tensors_digest

    files = {k: content_digest(options[k]) for k in FILE_OPTIONS if options.get(k)}   # by content, not by name
    given = {k: (files[k] if k in files else v if isinstance(v, (int, float, str)) else repr(v))
             for k, v in sorted(options.items()) if k != "class_labels"}
    return {"model": content_digest(model), "kind": kind.name, "options": given,
            "conditioning": tensors_digest(loaded.model_kwargs), "shape": list(loaded.data_shape), "n": n,
            "seed": seed, "source": getattr(loaded.source, "name", str(loaded.source)),
            "method": f"{PATH_REFERENCE_INTEGRATOR}/{PATH_REFERENCE_GRID}", "steps": steps,
            "check_steps": steps // 2, "dtype": "float64"}


def run_model_bench(model: str, kind: str, nfes: list[int], n: int, seed: int, *,
                    options: dict[str, Any] | None = None, label_seed: int = 0, batch_size: int | None = None,
                    device: Any = None, reference_steps: int = MODEL_REFERENCE_STEPS,
                    reference_cache: str | Path | None = None, include_peers: bool = True, full: bool = True,
                    methods: list[OurMethod] | None = None, log: Callable = print, progress: bool = True) -> dict:
    """Every deterministic sampler of ours (``methods``, default :func:`model_bench_methods`) and the installed
    peers' at each budget of ``nfes`` on ``n`` samples of the model file ``model`` of ``kind``, scored by
    ``path`` (see the module's docstring)."""
    from ..core.progress import progress_bar
    from ..core.sampler import resolve_device
    from .peers import available_peers

    if reference_steps < 4:
        raise LazyflowError(f"--reference-steps must be at least 4, got {reference_steps}")
    if batch_size is not None and batch_size < 1:
        raise LazyflowError(f"--batch-size must be positive, got {batch_size}")
    device = resolve_device(device)
    options = dict(options or {})
    found, loaded = load_bench_model(model, kind, n, options=options, label_seed=label_seed, device=device)
    methods = model_bench_methods(full) if methods is None else list(methods)
    if not methods:
        raise LazyflowError("no deterministic sampler of ours to run (a stochastic schedule has no pathwise target)")
    usable, skipped = available_peers() if include_peers else ({}, [])
    peers = sum(not stochastic for stochastic, _ in usable.values())
    cached = reference_cache is not None and Path(reference_cache).exists()
    total = n * ((len(methods) + peers) * sum(nfes) + (0 if cached else reference_steps + reference_steps // 2))
    flags = _kind_flags(found.name, options, loaded) + (["--device", str(device)] if device.type != "cpu" else [])

    def args_for(method: OurMethod, steps: int, _stats: str | None) -> list[str]:
        return [*sample_args(model, method, steps, n, seed), *flags]
    with progress_bar(total, enabled=progress, desc="model evaluations", unit="eval") as update:
        metered = _Metered(loaded.model, update)
        bench = BenchModel(model, found, replace(loaded, model=metered), PathOnlyScorer())
        run = _Runner(bench, (n, *loaded.data_shape), seed, args_for, None, batch_size=batch_size, device=device)
        settings = _settings(model, found, options, loaded, n, seed, reference_steps)
        with torch.no_grad():
            run.path, reused = cached_reference(reference_cache, settings, lambda: run.reference(reference_steps))
            log(f"  path reference {run.path.method}, {run.path.steps} steps in float64 "
                f"{'read from ' + str(reference_cache) if reused else f'({run.path.seconds:.1f} s)'}: halving "
                f"its steps moves it by {run.path.check:.2e}")
            rows = run.ours(methods, nfes, log)
            rows += run.peers(metered, nfes, log, stochastic_too=False) if include_peers else []
    size = float(run.path.samples.reshape(n, -1).norm(dim=1).mean())   # the scale path is read against
    return {"rows": rows, "model": model, "model_kind": found.name, "n": n, "seed": seed, "nfe_budgets": nfes,
            "metrics": [PATH_METRIC], "data_shape": list(loaded.data_shape), "batch_size": batch_size,
            "conditioning": _conditioning(loaded, options, label_seed), "references": [],
            "path_reference": {**run.path.fields(), "cache": None if reference_cache is None else str(reference_cache),
                               "read_from_cache": reused, "mean_norm": size, "settings": settings},
            "skipped": [s for s in skipped if "needs" in s] + ["stochastic samplers (no pathwise target)"],
            "machine": machine(), "device": str(device), "date": datetime.date.today().isoformat(),
            "command": "lazyflow " + " ".join(sys.argv[1:])}


def _conditioning(loaded: LoadedModel, options: dict[str, Any], label_seed: int) -> dict[str, Any]:
    if "y" in loaded.model_kwargs:
        labels = [int(v) for v in loaded.model_kwargs["y"].tolist()]
        how = "given" if options.get("class_labels") else f"drawn uniformly with --label-seed {label_seed}"
        return {"class_labels": labels, "labels": how}
    if "prompt" in loaded.model_kwargs:
        return {"prompt_embeds": str(options.get("prompt_embeds")), "prompts": loaded.metadata.get("prompts"),
                "rule": "sample i gets prompt i mod P"}
    return {}


def _sig(value: float | None) -> str:
    """Three significant digits ('-' for None): path errors span decades between 4 and 8 NFE."""
    return "  -  " if value is None else f"{value:.3g}"


def _converged(result: dict) -> str:
    """The reference's convergence verdict against the best 4-NFE (else smallest-budget) path."""
    from .bench import path_check

    reference, check = result["path_reference"], path_check(result)
    if not check or check["ratio"] is None:
        return f"reference check: halving its steps moves x* by {reference['check']:.2e}"
    ok = check["ratio"] <= CONVERGED
    text = (f"reference {'converged' if ok else 'NOT converged'}: {reference['steps']} -> {reference['check_steps']} "
            f"steps moves x* by {reference['check']:.2e}, {check['ratio']:.2%} of the best {check['budget']}-NFE "
            f"path {check['best']:.4g} (bound {CONVERGED:.0%})")
    return text if ok else text + f"; rerun with --reference-steps {2 * reference['steps']}"


def format_model_report(result: dict) -> str:
    """The path table (:func:`.bench.format_table`), the convergence verdict, and per budget the lowest path
    of ours beside the lowest of the peers: which sampler to use at that budget on this model."""
    scale = f"the samples x* have mean norm {result['path_reference']['mean_norm']:.4g} (path is in the same units)"
    lines = [format_table(result, PATH_METRIC, _sig), _converged(result), scale, "",
             "which sampler at each budget (lowest path; deterministic):"]
    for budget in result["nfe_budgets"]:
        ours = best_row(result, PATH_METRIC, budget, False, False)
        peer = best_row(result, PATH_METRIC, budget, True, False)
        text = f"  nfe {budget:>3}: " + (f"ours {ours['method']} {_sig(ours[PATH_METRIC])}" if ours else "-")
        if peer:
            text += f" | best peer {peer['method']} {_sig(peer[PATH_METRIC])}"
            if ours:
                text += f" (ours {versus(PATH_METRIC, ours[PATH_METRIC], peer[PATH_METRIC])[1]})"
        lines.append(text)
    if ours:
        lines.append(f"  lazyflow sample {' '.join(ours['sample_args'])} --out samples.pt   # ours at {budget} NFE")
    return "\n".join(lines)
