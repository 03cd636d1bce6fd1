"""One schedule identity for the whole runtime: ``load_schedule`` and the :class:`Schedule` it returns.

A schedule is named the same way everywhere (``sample``, the CLI, figures, bench): a preset name
(``linear``, ``pointmass``, ...: the kernels shipped in ``runtime/kernels``), the path of a kernel
file written by ``lazyflow emit``, the path of a ``.toml`` schedule, a ``ScheduleSpec`` or a dict of
expressions.  A TOML or expression schedule without a kernel is generated once into the user cache
(:func:`cache_dir`), keyed by a hash of its parsed spec and the generator version, so an edited file
never meets a stale kernel; only that step needs SymPy.  Parameters (sd3's ``shift``, ...) are
run-time arguments: ``load_schedule("sd3", shift=1.7)`` needs no new file.
"""
from __future__ import annotations

import hashlib
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Mapping

import torch

from .. import kernels
from ...atomic_write import write_text_atomic
from ...errors import LazyflowError
from ...predictions import check_prediction

__all__ = ["Schedule", "ScheduleValues", "load_schedule", "param_numbers", "load_schedule_parts", "schedule_text_parts", "cache_dir", "invert_log_snr"]


@dataclass(frozen=True)
class ScheduleValues:
    """alpha, beta, their derivatives and sigma of a schedule at times ``t`` (tensors of one shape)."""

    t: torch.Tensor
    alpha: torch.Tensor
    beta: torch.Tensor
    d_alpha: torch.Tensor
    d_beta: torch.Tensor
    sigma: torch.Tensor

    @property
    def snr(self) -> torch.Tensor:
        """beta / alpha."""
        return self.beta / self.alpha

    @property
    def eps(self) -> torch.Tensor:
        """sigma^2 / 2."""
        return self.sigma**2 / 2

    @property
    def eps_star(self) -> torch.Tensor:
        """The optimal diffusion alpha^2 (log snr)' = alpha^2 beta'/beta - alpha alpha' (MATH.md §1)."""
        return self.alpha**2 * self.d_beta / self.beta - self.alpha * self.d_alpha


def invert_log_snr(log_snr_fn, target: torch.Tensor, iterations: int = 80) -> torch.Tensor:
    """t in [0, 1] with log_snr_fn(t) = target, by vectorised bisection (log snr is increasing)."""
    lo = torch.zeros_like(target)
    hi = torch.ones_like(target)
    for _ in range(iterations):
        mid = (lo + hi) / 2
        below = log_snr_fn(mid) < target
        lo = torch.where(below, mid, lo)
        hi = torch.where(below, hi, mid)
    return (lo + hi) / 2


@dataclass(frozen=True)
class Schedule:
    """A kernel module with its parameters bound: the schedule's values and derivatives at any times.

    Build it with :func:`load_schedule` (a discrete diffusion table: ``discrete_schedule``, whose kernel is a
    table-backed object with the same functions).  Two schedules are equal when they use the same kernel with
    the same parameters."""

    kernel: ModuleType | kernels.Kernel
    params: tuple[tuple[str, float], ...] = ()
    origin: str = ""
    #: lambda in sigma = lambda * sigma_kernel (run time; 1 = the kernel's own diffusion, 0 = its ODE)
    diffusion_scale: float = 1.0

    # --- what the kernel says about itself ----------------------------------------------------
    @property
    def name(self) -> str:
        """The schedule's own name (``linear-sde``; the kernel module is ``linear_sde``)."""
        return self.kernel.SPEC.get("name", self.kernel.NAME)

    @property
    def stochastic(self) -> bool:
        return bool(self.kernel.STOCHASTIC) and self.diffusion_scale > 0

    @property
    def point_mass(self) -> bool:
        return bool(self.kernel.POINT_MASS)

    @property
    def singular_start(self) -> bool:
        return bool(self.kernel.SINGULAR_START)

    @property
    def has_exponential(self) -> bool:
        return self.kernel.exponential is not None

    def describe(self) -> str:
        """``name`` plus its parameters and diffusion scale, e.g. ``sd3(shift=1.7)``, ``linear-sde(diffusion*0.5)``."""
        parts = [f"{k}={v:g}" for k, v in self.params]
        if self.diffusion_scale != 1:
            parts.append(f"diffusion*{self.diffusion_scale:g}")
        return f"{self.name}({', '.join(parts)})" if parts else self.name

    def with_diffusion_scale(self, scale: float) -> "Schedule":
        """The same path with sigma = scale * sigma: eps = scale^2 eps, so the drift is
        K = K_ode + scale^2 (K - K_ode) and the exponential step's D = exp(G - G') becomes D^(scale^2)
        (derive/MATH.md §5).  0 gives the probability-flow ODE; a point-mass schedule needs scale > 0."""
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale < 0:
            raise LazyflowError(f"the diffusion scale must be a finite number >= 0, got {scale!r}")
        if scale != 1 and not self.kernel.STOCHASTIC:
            raise LazyflowError(f"schedule {self.name!r} is an ODE (sigma = 0): it has no diffusion to scale")
        if scale == 0 and self.point_mass:
            raise LazyflowError(f"schedule {self.name!r} starts from the point 0: it needs diffusion (scale > 0)")
        return Schedule(self.kernel, self.params, self.origin, float(scale))

    def with_params(self, **values: float) -> "Schedule":
        """The same kernel with some parameters changed (checked numerically on (0, 1))."""
        if not values:
            return self
        known = dict(self.kernel.PARAMS)
        unknown = sorted(set(values) - set(known))
        if unknown:
            have = ", ".join(known) or "none"
            raise LazyflowError(f"schedule {self.name!r} has no parameter {', '.join(map(repr, unknown))} "
                                f"(its parameters: {have})")
        merged = dict(self.params)
        for key, value in values.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise LazyflowError(f"parameter {key!r} of {self.name!r} must be a finite number, got {value!r}")
            merged[key] = float(value)
        bound = Schedule(self.kernel, tuple(sorted(merged.items())), self.origin, self.diffusion_scale)
        bound.check_numerically()
        return bound

    @property
    def _kw(self) -> dict[str, float]:
        return dict(self.params)

    # --- values -----------------------------------------------------------------------------------
    def values(self, t: torch.Tensor) -> ScheduleValues:
        """alpha, beta, alpha', beta', sigma at times t."""
        alpha, beta, d_alpha, d_beta, sigma = self.kernel.schedule(t, **self._kw)
        if self.diffusion_scale != 1:
            sigma = sigma * self.diffusion_scale
        return ScheduleValues(t, alpha, beta, d_alpha, d_beta, sigma)

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        return self.kernel.log_snr(t, **self._kw)

    def time_of_log_snr(self, lam: torch.Tensor) -> torch.Tensor:
        """t with log_snr(t) = lam: the kernel's closed form, else bisection; the limits 0 and 1
        where lam is -inf or +inf (or the closed form overflows there)."""
        if self.kernel.time_of_log_snr is None:
            return invert_log_snr(self.log_snr, lam)
        t = self.kernel.time_of_log_snr(lam, **self._kw)
        bad = ~torch.isfinite(t)
        return torch.where(bad, (lam > 0).to(t.dtype), t)

    def drift(self, t: torch.Tensor, *, ode: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(K_x, K_e) of the drift b = K_x x + K_e eta_X (of the probability-flow ODE if ``ode``)."""
        if ode or self.diffusion_scale == 0:
            return self.kernel.ode_drift(t, **self._kw)
        K_x, K_e = self.kernel.drift(t, **self._kw)
        if self.diffusion_scale == 1:
            return K_x, K_e
        # the drift v + eps s is affine in eps: K(lambda) = K_ode + lambda^2 (K - K_ode)
        K_x0, K_e0 = self.kernel.ode_drift(t, **self._kw)
        w = self.diffusion_scale**2
        return K_x0 + w * (K_x - K_x0), K_e0 + w * (K_e - K_e0)

    def eta(self, prediction: str, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(p, q) with eta_X = p x + q m for a network trained on this schedule that outputs m."""
        check_prediction(prediction, known=self.kernel.PREDICTIONS)
        return getattr(self.kernel, f"eta_{prediction}")(t, **self._kw)

    def exponential(self, t0: torch.Tensor, t1: torch.Tensor, *, ode: bool = False):
        """(A, B, C) of the exact step with eta_X frozen over [t0, t1] (MATH.md §5)."""
        ode = ode or self.diffusion_scale == 0
        fn = self.kernel.ode_exponential if ode else self.kernel.exponential
        if fn is None:
            raise LazyflowError(self.kernel.EXPONENTIAL)
        A, B, C = fn(t0, t1, **self._kw)
        if ode or self.diffusion_scale == 1:
            return A, B, C
        return self._scaled_exponential(t0, t1, A)

    def _scaled_exponential(self, t0: torch.Tensor, t1: torch.Tensor, A: torch.Tensor):
        """The exact step with eps scaled by lambda^2: D = A alpha/alpha' -> D_l = D^(lambda^2), then
        A = alpha'/alpha D_l, B = beta' - alpha' snr D_l, C = alpha' sqrt(1 - D_l^2) (MATH.md §5)."""
        now, end = self.kernel.schedule(t0, **self._kw), self.kernel.schedule(t1, **self._kw)
        alpha0, beta0, alpha1, beta1 = now[0], now[1], end[0], end[1]
        start = alpha0 > 0                                 # where alpha = 0 (the point mass) D = 0
        safe0 = torch.where(start, alpha0, torch.ones_like(alpha0))
        D = torch.where(start & (alpha1 > 0), A * safe0 / torch.where(alpha1 > 0, alpha1, torch.ones_like(alpha1)),
                        torch.zeros_like(A)).clamp(0, 1)
        D = D ** (self.diffusion_scale**2)
        A = torch.where(start, alpha1 / safe0 * D, A)    # alpha = 0: x = 0 there, A is the kernel's (unused)
        B = torch.where(start, beta1 - alpha1 * beta0 / safe0 * D, beta1)
        C = alpha1 * torch.sqrt(torch.clamp(1 - D * D, min=0))
        return A, B, C

    # --- where a run starts and the noise of its steps ---------------------------------------------
    def starts_at_point(self, t0: float) -> bool:
        """True for a run from t0 that starts at the point 0: a point-mass schedule at t0 = 0."""
        return self.point_mass and float(t0) <= 0

    def initial_state(self, t0: float, first_draw: Callable[[], torch.Tensor], like: torch.Tensor) -> torch.Tensor:
        """The state at t0: 0 at the point-mass start (``like``'s shape and dtype, no draw made), else
        I_t0 = alpha(t0) Z from the standard-normal ``first_draw()`` (exact at t0 = 0; the data term
        beta(t0) X is dropped if t0 > 0)."""
        if self.starts_at_point(t0):
            return torch.zeros_like(like)
        t = torch.tensor([float(t0)], dtype=torch.float64)
        return first_draw() * float(self.values(t).alpha[0])

    def step_noise(self, t0: float, draws: Callable[[int], torch.Tensor], first: torch.Tensor | None,
                   like: torch.Tensor) -> Callable[[int], torch.Tensor]:
        """Step k's xi of a run from t0: draw 1 + k of ``draws`` (draw 0 is the start), drawn when the step
        runs; zeros for an ODE.  A point-mass run has no start draw: ``first``, when given, is its first
        step's noise (the draw that a standard schedule would start from)."""
        if not self.stochastic:
            zeros = torch.zeros_like(like)
            return lambda k: zeros
        if first is not None and self.starts_at_point(t0):
            return lambda k: first if k == 0 else draws(1 + k)
        return lambda k: draws(1 + k)

    def same_path(self, other: "Schedule") -> bool:
        """True when both have the same alpha and beta (the conversion between them is the identity)."""
        keys = ("alpha", "beta", "params", "data_var")
        return (self.kernel is other.kernel or all(self.kernel.SPEC.get(k) == other.kernel.SPEC.get(k) for k in keys)) \
            and dict(self.params) == dict(other.params)

    def check_numerically(self, points: int = 2001) -> None:
        """Boundary values and a strictly increasing snr on a float64 grid: the check for parameter
        values other than the defaults the kernel was validated at."""
        t = torch.linspace(0.0, 1.0, points, dtype=torch.float64)
        v = self.values(t)
        inner = slice(1, -1)
        alpha, beta, lam = v.alpha[inner], v.beta[inner], self.log_snr(t[inner])
        where = None
        if not (torch.isfinite(alpha).all() and torch.isfinite(beta).all()):
            where = "alpha or beta is not finite"
        # alpha or beta may underflow to 0 where the kernel's log snr (from log alpha, log beta) is finite
        elif (alpha < 0).any() or (beta < 0).any() or (((alpha == 0) | (beta == 0)) & ~torch.isfinite(lam)).any():
            where = "alpha or beta is not positive"
        elif not (lam[1:] > lam[:-1]).all():
            where = "the signal-to-noise ratio is not strictly increasing"
        elif abs(v.alpha[-1].item()) > 1e-6 or abs(v.beta[-1].item() - 1) > 1e-6:
            where = f"alpha_1 = {v.alpha[-1].item():.4g}, beta_1 = {v.beta[-1].item():.4g} (need 0 and 1)"
        if where:
            raise LazyflowError(f"schedule {self.describe()} is not valid: {where} on (0, 1)")


# --- resolving a schedule identity ---------------------------------------------------------------

def cache_dir() -> Path:
    """Where generated kernels of TOML and expression schedules go: ``$LAZYFLOW_CACHE``, else
    ``$XDG_CACHE_HOME/lazyflow``, else ``~/.cache/lazyflow`` (plus ``/kernels``)."""
    root = os.environ.get("LAZYFLOW_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "lazyflow")
    return Path(root) / "kernels"


def _module_name(name: str) -> str:
    return name.strip().replace("-", "_").lower()


def load_schedule(schedule: Any, /, **params: float) -> Schedule:
    """Resolve a schedule identity to a :class:`Schedule`, with ``params`` bound.

    ``schedule``: a :class:`Schedule`; a preset name (``linear``, ``linear-sde``, ``vp``, ``vp-sde``,
    ``pointmass``, ``sd3``, ``score-vp``, ``poly``); the path of a kernel ``.py`` file; the path of a
    ``.toml`` schedule; a ``lazyflow.derive.ScheduleSpec``; a kernel module; or a dict of expressions
    ``{"alpha": ..., "beta": ..., "sigma": ...}``.  The last three kinds without a kernel are
    generated once into :func:`cache_dir` (SymPy; the one-time cost is printed on stderr)."""
    if isinstance(schedule, Schedule):
        resolved = schedule
    elif isinstance(schedule, ModuleType):
        resolved = _bound(kernels.check(schedule), getattr(schedule, "__file__", schedule.__name__))
    elif isinstance(schedule, (str, os.PathLike)):
        resolved = _from_text(str(schedule))
    elif isinstance(schedule, Mapping):
        from ...derive import from_expressions  # SymPy, only for expression schedules

        extra = sorted(set(schedule) - {"alpha", "beta", "sigma", "params", "name", "data_var"})
        if extra or not {"alpha", "beta"} <= set(schedule):
            raise LazyflowError(f"an expression schedule is a dict with alpha, beta (and sigma, params, name, data_var); "
                                f"got keys {sorted(schedule)}")
        resolved = _generated(from_expressions(**schedule), "expressions")
    elif type(schedule).__name__ == "ScheduleSpec":
        resolved = _generated(schedule, "a ScheduleSpec")
    else:
        raise LazyflowError(f"a schedule is a name, a .toml or kernel .py path, a ScheduleSpec or a dict of "
                            f"expressions; got {type(schedule).__name__}")
    return resolved.with_params(**params)


def load_schedule_parts(schedule: Any = None, /, *, alpha: str | None = None, beta: str | None = None,
                        sigma: str | None = None, params: Mapping[str, str] | None = None,
                        data_var: str | None = None, name: str | None = None, default: Any = None) -> Schedule:
    """The schedule the command line's parts name: ``schedule`` (anything :func:`load_schedule` takes) with
    ``params`` (NAME -> number text) bound, or expressions ``alpha``/``beta`` (with ``params`` as their
    parameters' defaults); ``default`` when neither is given (a default never counts as given).  A changed
    diffusion ``sigma``, a ``data_var`` or expressions need SymPy
    (:func:`lazyflow.derive.flags.spec_from_parts`; the kernel is generated once into :func:`cache_dir`)."""
    if alpha is not None or beta is not None or sigma or data_var is not None:
        from ...derive.flags import spec_from_parts  # SymPy, only for what needs a new kernel

        return load_schedule(spec_from_parts(schedule, alpha=alpha, beta=beta, sigma=sigma, params=params,
                                             data_var=data_var, name=name, default=default))
    if schedule is None:
        schedule = default
    if schedule is None or (isinstance(schedule, str) and not schedule.strip()):
        raise LazyflowError("give --schedule NAME, or both --alpha and --beta")
    return load_schedule(schedule, **param_numbers(params))


def schedule_text_parts(schedule: str | None = None, /, *, alpha: str | None = None, beta: str | None = None,
                        sigma: str | None = None, params: Mapping[str, str] | None = None,
                        data_var: str | None = None, name: str | None = None, default: str | None = None) -> str:
    """The parts of :func:`load_schedule_parts` as one text that :func:`load_schedule` resolves to the same
    schedule (for what names schedules by text: bench rows, plots): the preset or file itself when nothing
    else is given, else the path of the kernel generated for them (parameters bound as its defaults)."""
    if alpha is None and beta is None and not sigma and data_var is None and not params:
        load_schedule_parts(schedule, default=default)   # refused here if it names no schedule
        return str(default if schedule is None else schedule)
    from ...derive.flags import spec_from_parts  # SymPy: the bound spec gets its own kernel

    return str(load_schedule(spec_from_parts(schedule, alpha=alpha, beta=beta, sigma=sigma, params=params,
                                             data_var=data_var, name=name, default=default)).kernel.__file__)


def param_numbers(params: Mapping[str, str] | None, flag: str = "--param") -> dict[str, float]:
    """``params`` (NAME -> text) as numbers; text that is not a number is refused naming ``flag`` (the
    derive layer, below this one, has its own for spec parameters)."""
    try:
        return {key: float(value) for key, value in (params or {}).items()}
    except ValueError:
        raise LazyflowError(f"{flag}: values must be numbers, got {dict(params or {})}") from None


def _bound(module: ModuleType, origin: str) -> Schedule:
    return Schedule(module, tuple(sorted((k, float(v)) for k, v in module.PARAMS.items())), origin)


def _from_text(text: str) -> Schedule:
    if text.endswith(".py"):
        return _bound(kernels.load_file(text), text)
    if text.endswith(".toml"):
        if not Path(text).is_file():
            raise LazyflowError(f"schedule file {text!r} does not exist")
        from ...derive import from_toml  # SymPy, only for TOML schedules

        return _generated(from_toml(text), text)
    module = _module_name(text)
    if module in kernels.shipped():
        return _bound(kernels.load_shipped(module), f"preset {text}")
    presets = ", ".join(name.replace("_", "-") for name in kernels.shipped())
    raise LazyflowError(f"unknown schedule {text!r}: not a preset ({presets}) nor a .toml or kernel .py file")


def _generated(spec, origin: str) -> Schedule:
    """The cached kernel of ``spec``, generated on first use, and again when the cached entry is damaged
    (its footer's SHA-256 does not match: truncated, edited, half written) or does not load.  Written to a
    temporary name and moved into place (``os.replace``), so parallel runs never read half a file; an unusable
    cache folder gives one note and a per-user temporary folder instead."""
    from ...derive.codegen import kernel_name, spec_key

    file = f"{kernel_name(spec.name)}_{spec_key(spec)}.py"
    folder = _writable_cache()
    path = folder / file
    if not _intact(path):
        path = _write_entry(path, spec, origin, found=_what_is_there(path))
    try:
        return _bound(kernels.load_file(path), origin)
    except kernels.KernelError:   # intact but not loadable (another runtime's entry): write it again, once
        return _bound(kernels.load_file(_write_entry(path, spec, origin, found="damaged")), origin)


#: the last line of a cache entry: the SHA-256 of everything above it
_FOOTER = "# lazyflow cache entry, sha256 of the text above: "
_NOTED: set[str] = set()


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _intact(path: Path) -> bool:
    """True when ``path`` is a cache entry whose footer matches its text."""
    try:
        data = path.read_text()
    except (OSError, UnicodeDecodeError):
        return False
    body, found, digest = data.rpartition(_FOOTER)
    return bool(found) and digest.strip() == _digest(body) and data.endswith("\n")


def _what_is_there(path: Path) -> str:
    """What stands at a cache entry's place that is not intact: nothing, an entry of an older lazyflow (no
    footer), or a damaged one."""
    if not path.exists():
        return "nothing"
    try:
        return "damaged" if _FOOTER in path.read_text() else "old"
    except (OSError, UnicodeDecodeError):
        return "damaged"


def _write_entry(path: Path, spec, origin: str, *, found: str) -> Path:
    """Render the kernel of ``spec`` into ``path`` atomically (:func:`.write_text_atomic`); an
    unusable folder falls back to the temporary one.  Returns where it went."""
    from ...derive.codegen import kernel_name, render_kernel

    start = time.perf_counter()
    text = render_kernel(spec, name=kernel_name(spec.name),
                         command=f"generated on first use from {origin} (lazyflow.runtime.core.schedule)")
    text = f"{text}{_FOOTER}{_digest(text)}\n"
    try:
        write_text_atomic(path, text)   # a parallel run sees the old entry or the whole new one
    except OSError as err:
        path = _fallback_folder(path.parent, err) / path.name
        write_text_atomic(path, text)
    what = {"damaged": "regenerated the damaged cached kernel", "old": "regenerated the cached kernel (damaged, or "
            "written by an older lazyflow)"}.get(found, "generated the kernel")
    print(f"lazyflow: {what} of schedule {spec.name!r} in {time.perf_counter() - start:.1f} s "
          f"(once; cached as {path})", file=sys.stderr)
    return path


def _writable_cache() -> Path:
    """:func:`cache_dir`, created if needed; when it cannot be (a file in its place, no access), the
    per-user temporary folder, with one note on stderr."""
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(13, "not writable", str(folder))
        return folder
    except OSError as err:
        return _fallback_folder(folder, err)


def _fallback_folder(folder: Path, err: OSError) -> Path:
    """The temporary kernel folder used when ``folder`` is unusable (``err``), noted once per process; a
    LazyflowError (one line) when that one is unusable too."""
    spare = Path(tempfile.gettempdir()) / f"lazyflow-{getattr(os, 'getuid', lambda: 'user')()}" / "kernels"
    reason = err.strerror or str(err)
    try:
        spare.mkdir(parents=True, exist_ok=True)
        if not os.access(spare, os.W_OK | os.X_OK):
            raise PermissionError(13, "not writable", str(spare))
    except OSError as spare_err:
        raise LazyflowError(f"the kernel cache {folder} is unusable ({reason}) and so is {spare} "
                            f"({spare_err.strerror or spare_err}): set LAZYFLOW_CACHE to a writable folder") from None
    if str(folder) not in _NOTED:
        _NOTED.add(str(folder))
        print(f"lazyflow: the kernel cache {folder} is unusable ({reason}); generating into {spare} instead "
              "(set LAZYFLOW_CACHE to a writable folder)", file=sys.stderr)
    return spare
