"""A ComfyUI custom node: a lazyflow SAMPLER for ``SamplerCustom`` (and ``SamplerCustomAdvanced``).

Install (in ComfyUI's own Python): ``pip install --no-deps /path/to/lazyflow`` (a checkout; the package is
not on PyPI), then ``lazyflow comfyui-node ComfyUI/custom_nodes/lazyflow_sampler`` (or
:func:`write_custom_node`), which writes a one-file custom node::

    from lazyflow.runtime.integrations.comfyui import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

The node "lazyflow sampler" (category sampling/custom_sampling/samplers) takes the target schedule, the
integrator, the diffusion scale, the parameterization (``auto`` reads the model) and optionally the
path of a data statistics file (``lazyflow stats``, for the ``data-*`` integrators), and returns
``comfy.samplers.KSAMPLER(sample_comfy, extra_options)``.  ComfyUI then calls :func:`sample_comfy` as it
calls its k-diffusion samplers: with its denoiser ``model`` (x, sigma -> x0), the noised latent x at
``sigmas[0]`` and ``extra_args`` (model options, seed, denoise mask).  ComfyUI presents flow models
(``model_sampling`` a ``comfy.model_sampling.CONST``: x = (1 - sigma) x0 + sigma n) and every other model
(EPS, V_PREDICTION, EDM, X0: x = x0 + sigma n) to its samplers; ``auto`` picks ``flow`` for the first
and ``diffusion`` for the rest.  Nothing here imports ComfyUI before the node is used.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import torch

from ...atomic_write import write_text_atomic
from ...errors import LazyflowError
from ..core.data_stats import DataStats
from ..core import defaults
from ..core.grid_choice import choose_grid
from ..core.integrators import INTEGRATORS, build_plan
from ..core.schedule import load_schedule
from .. import kernels
from .k_diffusion_samplers import PARAMETERIZATIONS, SOURCE, resolved_integrator, resolved_target, sample_lazyflow

__all__ = ["LazyflowSampler", "sample_comfy", "parameterization_of", "write_custom_node", "NODE_CLASS_MAPPINGS",
           "NODE_DISPLAY_NAME_MAPPINGS", "NODE_FILE"]

#: the one file a ComfyUI custom node folder needs
NODE_FILE = '''"""lazyflow sampler for ComfyUI (written by lazyflow comfyui-node); the node is in lazyflow."""
from lazyflow.runtime.integrations.comfyui import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
'''


def _is_flow(model_sampling: Any) -> bool:
    """True for ComfyUI's CONST model sampling (x = (1 - sigma) x0 + sigma n): ``comfy.model_sampling.CONST``
    where ComfyUI is importable, else a class named CONST in the object's class hierarchy."""
    try:
        from comfy.model_sampling import CONST  # ComfyUI itself, only when the node runs there
    except ImportError:
        return any(cls.__name__ == "CONST" for cls in type(model_sampling).__mro__)
    return isinstance(model_sampling, CONST)


def parameterization_of(model: Any) -> str:
    """``"flow"`` or ``"diffusion"`` for the denoiser ComfyUI hands its samplers: its ``model_sampling`` is
    found where ComfyUI's own samplers read it (``model.inner_model.inner_model.model_sampling``), else on
    the first of the nested ``inner_model`` objects that has one."""
    seen, node = 0, model
    while node is not None and seen < 6:
        sampling = getattr(node, "model_sampling", None)
        if sampling is not None:
            return "flow" if _is_flow(sampling) else "diffusion"
        node, seen = getattr(node, "inner_model", None), seen + 1
    raise LazyflowError("cannot tell the model's parameterization (no model_sampling on it or its inner models); "
                        "set the node's parameterization to flow or diffusion")


def sample_comfy(model: Callable[..., torch.Tensor], x: torch.Tensor, sigmas: torch.Tensor,
                 extra_args: dict[str, Any] | None = None, callback: Callable[[dict], None] | None = None,
                 disable: bool | None = None, *, parameterization: str = "auto", **options: Any) -> torch.Tensor:
    """The function ``KSAMPLER`` calls: :func:`~lazyflow.runtime.integrations.k_diffusion_samplers.sample_lazyflow`
    with the parameterization read from the model (``auto``) and the noise of stochastic schedules drawn
    per sample from ComfyUI's seed (``extra_args["seed"]``; sample i of the batch: stream (seed, i))."""
    extra_args = {} if extra_args is None else extra_args
    if parameterization == "auto":
        parameterization = parameterization_of(model)
    seed = extra_args.get("seed")
    if options.get("noise_sampler") is None and isinstance(seed, int) and not isinstance(seed, bool):
        options.setdefault("seed", seed)
    return sample_lazyflow(model, x, sigmas, extra_args, callback, disable, parameterization=parameterization,
                           **options)


def _schedule_names() -> list[str]:
    return [name.replace("_", "-") for name in kernels.shipped()]


class LazyflowSampler:
    """ComfyUI node: a lazyflow SAMPLER for SamplerCustom (schedule, integrator, diffusion scale,
    parameterization, data statistics file)."""

    CATEGORY = "sampling/custom_sampling/samplers"
    RETURN_TYPES = ("SAMPLER",)
    FUNCTION = "get_sampler"
    DESCRIPTION = ("Integrates the model in a lazyflow schedule with a lazyflow integrator over the sigmas it is given "
                   "(default linear + data-2m-pc: the ODE in a frame exact for N(E[X | c], 0.03 I) without statistics; "
                   "pointmass + multistep-pc: the optimal SDE).")

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, dict[str, tuple]]:
        return {"required": {
            "schedule": (_schedule_names(), {"default": defaults.SCHEDULE}),
            "integrator": ([n for n, m in INTEGRATORS.items() if not m.needs_solver_file], {"default": defaults.SIGMAS_INTEGRATOR}),
            "diffusion_scale": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 4.0, "step": 0.05,
                                          "tooltip": "sigma = scale * the schedule's sigma (stochastic schedules; "
                                                     "0 = their ODE)"}),
            "parameterization": (["auto", *PARAMETERIZATIONS], {"default": "auto"}),
        }, "optional": {
            "data_stats": ("STRING", {"default": "",
                                      "tooltip": "a file written by lazyflow stats (data-* integrators)"}),
        }}

    def get_sampler(self, schedule: str, integrator: str, diffusion_scale: float, parameterization: str = "auto",
                    data_stats: str = "") -> tuple[Any]:
        """Check the choices now (a bad one fails when the node runs, not mid-sampling) and wrap
        :func:`sample_comfy` in ComfyUI's KSAMPLER."""
        import comfy.samplers  # ComfyUI's, present where the node runs

        options = sampler_options(schedule, integrator, diffusion_scale, parameterization, data_stats)
        return (comfy.samplers.KSAMPLER(sample_comfy, extra_options=options),)


def sampler_options(schedule: str, integrator: str, diffusion_scale: float, parameterization: str = "auto",
                    data_stats: str = "") -> dict[str, Any]:
    """The node's inputs, checked, as :func:`sample_comfy`'s options (the statistics file read once here)."""
    if parameterization not in ("auto", *PARAMETERIZATIONS):
        raise LazyflowError(f"unknown parameterization {parameterization!r}; choose auto, flow or diffusion")
    target = resolved_target(schedule, None, float(diffusion_scale))
    probe = torch.tensor([0.25, 0.5, 1.0], dtype=torch.float64)   # a small grid of the node's kind (sigmas later)
    method = choose_grid(probe, None, target=target, integrator=integrator,
                         times_of="the lazyflow ComfyUI node").integrator
    stats = DataStats.load(data_stats.strip()) if data_stats and data_stats.strip() else None
    if not isinstance(stats, (DataStats, type(None))):
        raise LazyflowError(f"{data_stats.strip()}: statistics per class label; ComfyUI conditions on prompts, so "
                            "give statistics with the first call's mean (lazyflow stats --condition first-call)")
    # the pairing of schedule and integrator, refused now rather than mid-sampling: a plan on a small grid (a data
    # frame without a file integrates in N(E[X | c], v I), of the latent's shape once it runs, as sample_lazyflow does)
    check, check_stats = resolved_integrator(method, stats, probe, target, (1,), times_of="the lazyflow ComfyUI node")
    build_plan(target, load_schedule(SOURCE), probe,
               integrator=check, final_step="euler", prediction="x", device="cpu", dtype=torch.float64,
               data_stats=check_stats)
    return {"schedule": schedule, "integrator": method.name, "diffusion_scale": float(diffusion_scale),
            "parameterization": parameterization, "data_stats": stats}


def write_custom_node(directory: str | os.PathLike, *, force: bool = False) -> Path:
    """Write ``directory/__init__.py``, the one-file custom node that imports the node from this package
    (for ``ComfyUI/custom_nodes/lazyflow_sampler``).  Refused inside the lazyflow package folder, in a folder
    named ``lazyflow`` (ComfyUI loaders that import a node by its folder's name would shadow the installed
    package with it), and over an existing different file unless ``force``."""
    folder = Path(directory).expanduser().resolve()
    package = Path(__file__).resolve().parents[2]
    if folder == package or package in folder.parents:
        raise LazyflowError(f"{folder} is inside the lazyflow package folder; write the node into ComfyUI's "
                            "custom_nodes folder, e.g. ComfyUI/custom_nodes/lazyflow_sampler")
    if folder.name == "lazyflow":
        raise LazyflowError(f"{folder}: a node folder named lazyflow would shadow the installed package under "
                            "ComfyUI loaders that import a node by its folder's name; use another name, e.g. "
                            f"{folder.with_name('lazyflow_sampler')}")
    target = folder / "__init__.py"
    if target.exists() and target.read_text() != NODE_FILE and not force:
        raise LazyflowError(f"{target} exists and is not lazyflow's node file; remove it or pass force")
    folder.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(target, NODE_FILE)


NODE_CLASS_MAPPINGS = {"LazyflowSampler": LazyflowSampler}
NODE_DISPLAY_NAME_MAPPINGS = {"LazyflowSampler": "lazyflow sampler"}
