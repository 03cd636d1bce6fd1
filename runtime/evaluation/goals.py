"""The bench's pathwise goals, printed under its tables (:func:`path_goals_markdown`).

Per budget of :data:`PATH_GOAL_BUDGETS` (4 and 6 NFE): the deterministic sampler of ours with the lowest
``path`` (tuned rows count, marked; the Gaussian-map baseline does not) against the deterministic peer
with the lowest ``path``: the ratio path_ours / path_peer (goal: <= :data:`PATH_GOAL`), and whether that
sampler of ours is no worse than the best deterministic peer in each other metric (fd, sw, nll_gap: the
best peer in that metric).  At 4 NFE the likelihood-gap goal: the lowest |nll_gap| of our deterministic
samplers at or below the best deterministic peer's.

Comparisons: ``nll_gap`` counts in absolute value (piling samples onto the modes scores below 0); two
values within :data:`TIE` (5%) of each other are a tie, and so are two values both inside the range
that exact samples score (the result's floors, where measured); a tie is no worse."""
from __future__ import annotations

__all__ = ["TIE", "PATH_GOAL", "PATH_GOAL_BUDGETS", "ABSOLUTE_METRICS", "rank_value", "best_row", "compare", "versus",
           "path_goals_markdown"]

#: two numbers within this relative distance are called a tie (the same algorithm from other noise moves
#: the digits FD by about 0.6 at 2,000 samples: the README shows it)
TIE = 0.05
#: the goal for path_ours / path_best_peer at each budget of PATH_GOAL_BUDGETS
PATH_GOAL = 0.6
PATH_GOAL_BUDGETS = (4, 6)
#: metrics compared in absolute value
ABSOLUTE_METRICS = ("nll_gap",)
PATH = "path"


def rank_value(metric: str, value: float) -> float:
    """What is minimised: |value| for :data:`ABSOLUTE_METRICS`, else the value."""
    return abs(value) if metric in ABSOLUTE_METRICS else value


def best_row(result: dict, metric: str, budget: int, peer: bool, stochastic: bool, tuned: bool = False) -> dict | None:
    """The row of the kind (peer or ours, stochastic or not) with the best ``metric`` at ``budget``; baseline
    rows never count, tuned rows count for ours when ``tuned``."""
    rows = [r for r in result["rows"] if r["peer"] == peer and r["stochastic"] == stochastic and not r.get("baseline")]
    if tuned and not peer:
        rows += [r for r in result.get("tuned_rows", []) if r["stochastic"] == stochastic]
    rows = [r for r in rows if r.get(metric) is not None and r["budget"] == budget]
    return min(rows, key=lambda r: rank_value(metric, r[metric]), default=None)


def _floor_top(result: dict, metric: str) -> float | None:
    floor = result.get("floors", {}).get(metric)
    if floor is None:
        return None
    return max(rank_value(metric, floor["min"]), rank_value(metric, floor["max"]))


def compare(result: dict, metric: str, ours: float, theirs: float) -> tuple[bool, str]:
    """(ours no worse than theirs, a phrase): 'tie (+3%)', 'tie (both within the floor)', 'x% lower/higher'."""
    top = _floor_top(result, metric)
    if top is not None and rank_value(metric, ours) <= top and rank_value(metric, theirs) <= top:
        return True, "tie (both within the floor)"
    return versus(metric, ours, theirs)


def versus(metric: str, ours: float, theirs: float) -> tuple[bool, str]:
    """(ours no worse, 'tie (+3%)' or 'x% lower/higher'): ties within :data:`TIE`, nll_gap in absolute value."""
    a, b = rank_value(metric, ours), rank_value(metric, theirs)
    change = a / b - 1 if b else (0.0 if a == b else float("inf"))
    if abs(change) <= TIE:
        return True, f"tie ({change:+.0%})"
    return change < 0, f"{-change:.0%} lower" if change < 0 else f"{change:.0%} higher"


def _num(value: float) -> str:
    return f"{value:.4f}" if abs(value) < 1 else f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"


def _cell(row: dict | None, metric: str) -> str:
    if row is None:
        return "-"
    return f"{_num(row[metric])} {row['method']}" + (" (tuned)" if row.get("tuned") else "")


def _budget_line(result: dict, budget: int, others: list[str]) -> tuple[str, list[str]]:
    ours = best_row(result, PATH, budget, False, False, tuned=True)
    peer = best_row(result, PATH, budget, True, False)
    if ours is None or peer is None:
        return f"| {budget} | {_cell(ours, PATH)} | {_cell(peer, PATH)} | - |" + " - |" * len(others), []
    ratio = ours[PATH] / peer[PATH] if peer[PATH] else float("inf")
    cells, verdicts = [], []
    for metric in others:
        theirs = best_row(result, metric, budget, True, False)
        if ours.get(metric) is None or theirs is None:
            cells.append("-")
            continue
        ok, how = compare(result, metric, ours[metric], theirs[metric])
        cells.append(f"{_num(ours[metric])} vs {_num(theirs[metric])}: {'no worse' if ok else 'worse'} ({how})")
    verdicts.append(f"- {budget} NFE, path of ours at most {PATH_GOAL} x the best peer's: "
                    f"{'met' if ratio <= PATH_GOAL else 'missed'} ({_num(ours[PATH])} {ours['method']} against "
                    f"{_num(peer[PATH])} {peer['method']}, ratio {ratio:.2f}); in "
                    + ", ".join(f"{m} {c.split(': ', 1)[-1]}" for m, c in zip(others, cells)))
    line = f"| {budget} | {_cell(ours, PATH)} | {_cell(peer, PATH)} | {ratio:.2f} | " + " | ".join(cells) + " |"
    return line, verdicts


def _no_worse_everywhere(result: dict, row: dict, budget: int, metrics: list[str]) -> bool:
    """``row`` is no worse than the best deterministic peer (per metric) in each of ``metrics`` it reports."""
    for metric in metrics:
        theirs = best_row(result, metric, budget, True, False)
        if row.get(metric) is not None and theirs is not None and not compare(result, metric, row[metric],
                                                                                 theirs[metric])[0]:
            return False
    return True


def _likelihood_goal(result: dict, others: list[str], budget: int = 4) -> list[str]:
    """One sampler for both goals: a deterministic row of ours whose path is at most PATH_GOAL x the best
    peer's and which is no worse than the best peer in every other metric, the likelihood gap included
    (the lowest path among those); a row that wins in path and another that wins in likelihood do not count."""
    peer = best_row(result, PATH, budget, True, False)
    if peer is None or not peer[PATH]:
        return []
    rows = [r for r in result["rows"] + result.get("tuned_rows", [])
            if not r["peer"] and not r["stochastic"] and not r.get("baseline") and r["budget"] == budget
            and r.get(PATH) is not None and r.get("nll_gap") is not None]
    both = [r for r in rows if r[PATH] <= PATH_GOAL * peer[PATH] and _no_worse_everywhere(result, r, budget, others)]
    verdict = f"- {budget} NFE, one sampler of ours meeting the path goal and no worse than the best peer in " \
              + ", ".join(others) + ": "
    if not both:
        return [verdict + "missed (no row of ours does both)"]
    row = min(both, key=lambda r: r[PATH])
    return [verdict + f"met by {row['method']}" + (" (tuned)" if row.get("tuned") else "")
            + f" (path {_num(row[PATH])}, ratio {row[PATH] / peer[PATH]:.2f}; "
            + ", ".join(f"{m} {_num(row[m])}" for m in others if row.get(m) is not None) + ")"]


def path_goals_markdown(result: dict) -> str:
    """The pathwise goals as a markdown table and verdicts (see the module's docstring)."""
    others = [m for m in result.get("metrics", []) if m != PATH and m != "weight_tv"]
    budgets = [b for b in PATH_GOAL_BUDGETS if b in result["nfe_budgets"]]
    lines = ["pathwise goals (ours = the deterministic sampler with the lowest path; the peer = the best "
             "deterministic peer in each column; ties within 5% or both within the floor):",
             "| NFE | ours, lowest path | best peer, path | ratio (goal <= 0.6) | "
             + " | ".join(f"{m}: ours vs best peer" for m in others) + " |",
             "|---|---|---|---|" + "---|" * len(others)]
    verdicts: list[str] = []
    for budget in budgets:
        line, said = _budget_line(result, budget, others)
        lines.append(line)
        verdicts += said
    if 4 in budgets and "nll_gap" in others:
        verdicts += _likelihood_goal(result, others)
    return "\n".join(lines + [""] + verdicts)
