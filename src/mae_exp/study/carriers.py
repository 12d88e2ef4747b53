"""Which change carries what: one line per measure, the full recipe's tested difference beside each
single-change arm's, by the rule params.yaml's design fixed before the runs: a change "carries" an effect of
the full recipe when its own difference on that measure (against the baseline's curve at its FLOPs, Holm
family 3 in stats.FAMILIES) is beyond noise with the full recipe's sign. A single change beyond noise where
the full recipe is not is named too: it is an effect the full recipe does not show."""

from __future__ import annotations

import pandas as pd

from .metrics import METRICS, label_of, number, with_unit
from .stats import FAMILIES

HEADER = (
    "**Which change carries what** (each measure: the full recipe at the primary's reading, then each single "
    "change against the {baseline}'s curve at its own FLOPs; * = beyond noise after Holm's correction in its "
    "family; a change carries an effect of the full recipe when it is beyond noise with the same sign)"
)


def _cell(row: dict, name: str) -> str:
    metric = row["metric"]
    star = "*" if row["beyond_noise"] else ""
    return f"{name} {with_unit(number(row['diff_mean'], metric), metric)}{star}"


def carrier_lines(diffs: pd.DataFrame, *, pair, names: dict[str, str]) -> list[str]:
    """One line per measure that has a tested full-recipe row: its difference, each single change's, and
    what carries it; then a closing line when nothing is beyond noise. `names`: arm -> how a line names it
    (report.DESCRIPTIONS' subjects); `diffs`: stats.holm's frame (family, beyond_noise)."""
    tested = diffs[diffs["family"].isin(FAMILIES[:2]) & (diffs["n"] >= 2)]
    singles = diffs[(diffs["family"] == FAMILIES[2]) & (diffs["n"] >= 2)]

    def name(row: dict) -> str:
        return names.get(row["ablation"], row["ablation"])

    lines, any_beyond = [], False
    for metric, m in METRICS.items():
        full = tested[tested["metric"] == metric].to_dict("records")
        if not full:
            continue
        full = full[0]
        alone = singles[singles["metric"] == metric].sort_values("ablation").to_dict("records")
        cells = [_cell(full, "full recipe")] + [_cell(r, name(r)) for r in alone]
        beyond = [r for r in alone if r["beyond_noise"]]
        any_beyond |= bool(full["beyond_noise"] or beyond)
        same_sign = [r for r in beyond if (r["diff_mean"] > 0) == (full["diff_mean"] > 0)]
        if full["beyond_noise"]:
            better = (full["diff_mean"] > 0) == m.higher_better
            carried = ", ".join(name(r) for r in same_sign)
            verdict = f"the full recipe is {'better' if better else 'worse'} beyond noise; " + (
                f"carried by {carried}" if carried else "no single change carries it beyond noise"
            )
        elif beyond:
            verdict = "beyond noise for " + ", ".join(name(r) for r in beyond)
            verdict += ", not for the full recipe"
        else:
            verdict = "nothing beyond noise"
        lines.append(f"{label_of(metric)}: {'; '.join(cells)}: {verdict}.")
    if lines and not any_beyond:
        lines.append(
            f"No measure moves beyond noise, for the full recipe or any single change: no change carries an "
            f"effect against the {pair[0]} at this many seeds."
        )
    return lines
