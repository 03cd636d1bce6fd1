"""What a bench reports: its tables (rows = methods, columns = NFE budgets, one table per metric, with floors
and references under them), the best of each kind per budget, the goals checked, and the fields of its JSON
that say where it ran (:func:`machine`).  Everything here reads a bench's result as its JSON holds it (a run's
result or a committed file alike)."""
from __future__ import annotations

import platform
from typing import Any, Callable

from .data_rows import STATS_SAMPLES
from .goals import best_row, path_goals_markdown, rank_value, versus
from .scorers import PATH_METRIC

__all__ = ["format_table", "format_report", "format_tuned", "best_by_kind", "goals_markdown", "path_check",
           "path_note", "machine", "short_score", "GAUSSIAN_MAP"]

#: the name of the baseline row: mu + Sigma^(1/2) z from 2,000 exact samples' moments (:mod:`.data_rows`)
GAUSSIAN_MAP = "Gaussian map (0 NFE)"


def machine() -> str:
    """The machine a bench ran on, as its JSON records it: processor, torch threads, torch version."""
    import torch

    threads = torch.get_num_threads()
    return f"{platform.processor() or platform.machine()}, {threads} torch threads, torch {torch.__version__}"


def short_score(value: float | None) -> str:
    """A score as the tables and the bench's log lines write it: 3 decimals below 1, 2 below 100, none above."""
    if value is None:
        return "  -  "
    return f"{value:.3f}" if abs(value) < 1 else f"{value:.2f}" if abs(value) < 100 else f"{value:.0f}"


def format_table(result: dict, metric: str = "fd", fmt: Callable[[Any], str] | None = None) -> str:
    """Rows = methods, columns = NFE budgets; each cell the ``metric`` written by ``fmt`` (default 3 decimals
    below 1; actual NFE when it differs from the budget); below, the floor and the converged references in
    the same metric."""
    fmt = fmt or short_score
    budgets = result["nfe_budgets"]
    by_method: dict[str, list[dict]] = {}
    for row in result["rows"]:
        by_method.setdefault((row["method"], row["peer"], row["stochastic"]), []).append(row)
    shown = {key: f"{key[0]} [{rows[0]['grid']}]" if rows[0].get("grid") else key[0] for key, rows in by_method.items()}
    width = max((len(name) for name in shown.values()), default=6) + 2
    header = f"{'method'.ljust(width)}{'peer':>5}{'sde':>5}" + "".join(f"{'nfe ' + str(b):>11}" for b in budgets)
    title = f"{metric} ({result['model']}" + (f", prediction {result['prediction']}" if "prediction" in result else "")
    if metric == PATH_METRIC and "path_reference" in result:
        reference = result["path_reference"]
        title += (f"; mean |x - x*| to x* = the model's own ODE solution from the same noise, {reference['method']} "
                  f"at {reference['steps']} steps in float64")
    lines = [title + ")", header, "-" * len(header)]
    for (method, peer, stochastic), rows in by_method.items():
        cells = []
        for budget, row in zip(budgets, rows):
            text = fmt(row.get(metric))
            if row["nfe"] != budget:
                text += f" ({row['nfe']})"
            cells.append(f" {text:>10}")   # at least one space between cells
        name = shown[method, peer, stochastic]
        lines.append(f"{name.ljust(width)}{'yes' if peer else '':>5}{'yes' if stochastic else '':>5}" + "".join(cells))
    lines.append("")
    if any(r.get("baseline") for r in result["rows"]):
        lines.append(f"{GAUSSIAN_MAP}: a baseline, not a sampler (mu + Sigma^(1/2) x0 with the moments of "
                     f"{STATS_SAMPLES:,} exact samples, no network call); never counted as ours")
    refs = "; ".join(f"{r['kind'].upper()} reference {r['method']} at {r['nfe']} NFE: {_fmt3(r.get(metric))}"
                     for r in result.get("references", [result["reference"]] if "reference" in result else []))
    if metric == PATH_METRIC:
        lines.append(path_note(result) + (f"; {refs}" if refs else ""))
    elif "floors" in result:
        floor = result["floors"][metric]
        lines.append(f"{metric} on {result['n']} samples; floor ({result['n']} exact samples, mean of {floor['sets']} "
                     f"sets, range {floor['min']:.4f}-{floor['max']:.4f}): {floor['mean']:.4f}; {refs}")
        lines.append(result["metric_notes"])
    else:
        against = result.get("fd_reference", "the 1,797 digits")
        lines.append(f"FD on {result['n']} samples vs {against}; floors: two dataset halves "
                     f"{result['floor_split_fd']:.3f}, {result['n']} images drawn from the dataset itself "
                     f"{result.get('floor_bootstrap_fd', float('nan')):.3f}; {refs}")
    if "grid_note" in result:
        lines.append(result["grid_note"])
    if result.get("tuned_rows"):
        lines.append(format_tuned(result, metric))
    lines.append(f"machine: {result['machine']}; date {result['date']}")
    if result["skipped"]:
        lines.append("skipped peers: " + "; ".join(result["skipped"]))
    return "\n".join(lines)


def path_check(result: dict) -> dict | None:
    """How far halving the path reference's steps moves it, against the best deterministic ``path`` (ours or
    a peer's, no baseline) at 4 NFE (else the smallest budget): {budget, best, check, ratio}."""
    reference = result.get("path_reference")
    budgets = sorted(result["nfe_budgets"], key=lambda b: (b != 4, b))
    if not reference or not budgets:
        return None
    rows = [best_row(result, PATH_METRIC, budgets[0], peer, False) for peer in (False, True)]
    best = min((r[PATH_METRIC] for r in rows if r is not None), default=None)
    ratio = reference["check"] / best if best else None
    return {"budget": budgets[0], "best": best, "check": reference["check"], "ratio": ratio}


def path_note(result: dict) -> str:
    """The line under the path table: what path is, how its reference is computed, and its convergence."""
    reference, check = result["path_reference"], path_check(result)
    text = (f"path: mean over the {result['n']} samples of |x - x*| (L2 over each sample's coordinates), x* = the "
            f"model's own ODE solution from the same initial noise: {reference['method']} at {reference['steps']} "
            f"steps ({reference['nfe']} NFE) in float64; halving its steps moves it by {reference['check']:.2e}")
    if check and check["ratio"] is not None:
        text += f" ({check['ratio']:.2%} of the best {check['budget']}-NFE path, {check['best']:.4g})"
    scores = ", ".join(f"{k} {_fmt3(v)}" for k, v in reference.get("scores", {}).items())
    return text + (f"; x* itself scores {scores}" if scores else "") + "; stochastic rows: -"


def format_tuned(result: dict, metric: str = "fd") -> str:
    """The tuned rows, apart from the table: each beside its untuned starting grid, with the tuning cost and
    whether the bench's seed was held out from the tuning."""
    lines = [f"tuned grids (lazyflow tune-grid; {metric} on the bench's seed {result['seed']}):"]
    for row in result["tuned_rows"]:
        untuned = row["untuned"]
        lines.append(f"  tuned {row['method']} at {row['nfe']} NFE: {_fmt3(row.get(metric))} (untuned "
                     f"{untuned['grid']}: {_fmt3(untuned.get(metric))}); tuned on seed {row['tuning_seed']}, "
                     f"{row['tuning_samples']} samples, {row['tuning_seconds']} s, {row['tuning_model_calls']} model "
                     f"calls; {'held out' if row['held_out'] else 'NOT held out (same seed)'}")
    return "\n".join(lines)


def format_report(result: dict, metrics: list[str], markdown: bool = False) -> str:
    """What ``lazyflow bench`` prints: per metric the table and the best of each kind per budget (and with
    ``markdown`` the goals table; for ``path`` always its own goals, :func:`.goals.path_goals_markdown`), each
    followed by an empty line."""
    parts = []
    for metric in metrics:
        parts += [format_table(result, metric), best_by_kind(result, metric), ""]
        if metric == PATH_METRIC:
            parts += [path_goals_markdown(result), ""]   # path's own goals (its references score ~0 by design)
        elif markdown:
            parts += [goals_markdown(result, metric), ""]
    return "\n".join(parts)


def _fmt3(value) -> str:
    return "-" if value is None else f"{value:.4f}" if abs(value) < 1 else f"{value:.3f}"


def best_by_kind(result: dict, metric: str = "fd") -> str:
    """The best deterministic and stochastic sampler, ours and peers', at each budget (baseline rows left out;
    nll_gap by its absolute value)."""
    lines = [f"best {metric} per budget:      ours ODE | peer ODE | ours SDE | peer SDE"]
    for budget in result["nfe_budgets"]:
        cells = []
        for stochastic in (False, True):
            for peer in (False, True):
                best = best_row(result, metric, budget, peer, stochastic)
                cells.append(f"{short_score(best[metric])} {best['method']}" if best else "-")
        lines.append(f"  nfe {budget:>3}: " + " | ".join(cells))
    return "\n".join(lines)


def goals_markdown(result: dict, metric: str = "fd") -> str:
    """The best of each kind per budget as a markdown table, with the bench's goals checked: at 4 and 6 NFE
    the best deterministic sampler of ours 20% below the best deterministic peer; at 4 NFE the best
    stochastic of ours at or below that peer; at 8 NFE each family within 10% of its converged reference.
    Tuned rows (if any) count for ours and are marked; nll_gap counts in absolute value."""
    refs = {r["kind"]: r.get(metric) for r in result.get("references", [])}
    lines = ["| NFE | ours, deterministic | best deterministic peer | ours vs peer | ours, stochastic | "
             "best stochastic peer |", "|---|---|---|---|---|---|"]
    verdicts = []
    for budget in result["nfe_budgets"]:
        ours = best_row(result, metric, budget, False, False, tuned=True)
        peer = best_row(result, metric, budget, True, False)
        ours_sde = best_row(result, metric, budget, False, True, tuned=True)
        peer_sde = best_row(result, metric, budget, True, True)

        def cell(row):
            if row is None:
                return "-"
            mark = " (tuned)" if row.get("tuned") else ""
            return f"{_fmt3(row[metric])} {row['method']}{mark}"
        against = versus(metric, ours[metric], peer[metric])[1] if ours and peer else "-"
        lines.append(f"| {budget} | {cell(ours)} | {cell(peer)} | {against} | {cell(ours_sde)} | {cell(peer_sde)} |")
        if budget in (4, 6) and ours and peer:
            met = rank_value(metric, ours[metric]) <= 0.8 * rank_value(metric, peer[metric])
            verdicts.append(f"- {budget} NFE, deterministic 20% below the best deterministic peer: "
                            f"{'met' if met else 'missed'} ({_fmt3(ours[metric])} against {_fmt3(peer[metric])}, "
                            f"{versus(metric, ours[metric], peer[metric])[1]})")
        if budget == 4 and ours_sde and peer:
            met = rank_value(metric, ours_sde[metric]) <= rank_value(metric, peer[metric])
            verdicts.append(f"- 4 NFE, stochastic at or below the best deterministic peer: {'met' if met else 'missed'}"
                            f" ({_fmt3(ours_sde[metric])} against {_fmt3(peer[metric])})")
        if budget == 8:
            for kind, row in (("ode", ours), ("sde", ours_sde)):
                if row and refs.get(kind) is not None:
                    met = rank_value(metric, row[metric]) <= 1.1 * rank_value(metric, refs[kind])
                    verdicts.append(f"- 8 NFE, {kind.upper()} within 10% of its converged reference: "
                                    f"{'met' if met else 'missed'} ({_fmt3(row[metric])} against "
                                    f"{_fmt3(refs[kind])})")
    return "\n".join(lines + [""] + verdicts)
