"""``thaw compare``: several strategies, several seeds, one split, one table, and a verdict that respects
run-to-run noise.

Every run is an ordinary thaw run folder inside the comparison folder (``runs/<strategy>-seed<k>``), all
on one split (``split.csv``, written once) and one preprocessing; a strategy that starts with the cached
phase 1 shares it with every other one through the feature cache (the features are keyed by the
backbone's weights and the images, not by the strategy), so phase 1's features are computed once. The
folder's ``compare.json`` records the command; rerunning the same command skips finished runs and
resumes interrupted ones, and a different command is refused there.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from thaw import data as thaw_data
from thaw.core.config import RunConfig, override
from thaw.core.errors import ThawError
from thaw.core.files import atomic_path, write_atomic
from thaw.core.results import RunSummary, dumps
from thaw.core.run_folder import check_outside_data
from thaw.core.strategies import STRATEGIES, plans_for
from thaw.metrics.stats import Paired, floor_note, interval, paired, with_holm
from thaw.models import build_classifier
from thaw.studies.runner import METRICS, Cell, Executor, columns, run_cells, summaries

REFERENCE = "two-phase"


@dataclass(frozen=True)
class Plan:
    """What a comparison runs: the base config (strategy, seed and run folder are set per run), the
    strategies and the seeds."""

    config: RunConfig
    strategies: tuple[str, ...]
    seeds: tuple[int, ...]

    def spec(self) -> dict[str, Any]:
        base = override(self.config, {"strategy": REFERENCE, "seed": 0, "out": None}, keep_none=True)
        return {
            "command": "thaw compare",
            "strategies": list(self.strategies),
            "seeds": list(self.seeds),
            "config": base.to_dict(),
        }

    def runs(self, root: Path) -> list[tuple[str, int, Path]]:
        return [(s, seed, root / "runs" / f"{s}-seed{seed}") for seed in self.seeds for s in self.strategies]

    def cells(self, root: Path, config: RunConfig) -> list[Cell]:
        """Every strategy x seed as a cell of the study, on ``config`` (the shared split)."""
        return [
            Cell(f"{s}, seed {seed}", path, override(config, {"strategy": s, "seed": seed, "out": str(path)}))
            for s, seed, path in self.runs(root)
        ]


def parse_strategies(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    unknown = [s for s in names if s not in STRATEGIES]
    if unknown or not names:
        raise ThawError(
            f"--strategies {text!r}: unknown {', '.join(unknown) or '(none given)'}; choose from "
            f"{', '.join(STRATEGIES)} (comma-separated)"
        )
    return names


def prepare(plan: Plan, root: Path) -> RunConfig:
    """Create (or reopen) the comparison folder; returns the base config with the shared split file."""
    if plan.config.plans:
        raise ThawError(
            "thaw compare runs the named strategies of --strategies, but the config lists plans: (which "
            "would replace every strategy's); drop plans: from the --config file"
        )

    spec = plan.spec()
    marker = root / "compare.json"
    if root.exists() and any(root.iterdir()):
        if not marker.is_file():
            raise ThawError(f"{root} exists and is not a comparison folder; give another --out")
        import json

        if json.loads(marker.read_text()) != json.loads(dumps(spec)):
            raise ThawError(
                f"{root} holds a comparison made by a different command (strategies, seeds or settings "
                f"differ; see its compare.json); rerun that command to resume it, or give another --out"
            )
    else:
        check_outside_data(root, plan.config.data.path)
        root.mkdir(parents=True, exist_ok=True)
        sources = thaw_data.discover(plan.config.data)
        with atomic_path(root / "split.csv") as tmp:
            thaw_data.write_split(sources, tmp)
        write_atomic(marker, dumps(spec))
    return override(plan.config, {"data.split_file": str(root / "split.csv")})


def estimate(config: RunConfig, plan: Plan, todo: int) -> tuple[float, str]:
    """The minutes the unfinished runs take if every plan runs all its epochs and every run computes its
    own phase 1 features, from timing two training steps and one evaluation batch now (a machine that
    gets busier later makes it an underestimate)."""
    import torch

    sources = thaw_data.discover(config.data)
    model = build_classifier(
        config.model, len(sources.class_names), sources.class_names, config.data.image_size
    )
    size, batch = model.preprocessing.size, config.data.batch_size
    x = torch.randn(batch, model.spec.in_channels, size, size)
    y = torch.zeros(batch, dtype=torch.long)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)

    def step() -> None:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    step()
    start = time.perf_counter()
    for _ in range(2):
        step()
    train_s = (time.perf_counter() - start) / 2
    model.eval()
    with torch.no_grad():
        start = time.perf_counter()
        model(x)
        eval_s = time.perf_counter() - start
    n = {s: len(sources.split(s)) for s in ("train", "val", "test")}
    batches = {s: math.ceil(k / batch) for s, k in n.items()}
    everything = sum(batches.values()) * eval_s
    seconds = 0.0
    for strategy in plan.strategies:
        for p in plans_for(override(config, {"strategy": strategy}).resolved()):  # --lr auto: a stand-in
            if p.interpolate_from:
                seconds += len(p.alphas) * batches["val"] * eval_s
            elif p.features == "cached":
                seconds += everything + batches["train"] * (p.views - 1) * eval_s
            else:
                seconds += p.epochs * (batches["train"] * train_s + batches["val"] * eval_s)
        seconds += everything  # evaluation, diagnostics
    per_run = seconds / len(plan.strategies)
    minutes = per_run * todo / 60
    return minutes, f"one training step of {batch} images {train_s:.2f}s, one evaluation batch {eval_s:.2f}s"


def compare(
    plan: Plan,
    root: Path,
    say: Callable[[str], None] = print,
    dry_run: bool = False,
    executor: Executor | None = None,
) -> dict[str, Any]:
    """Run (or finish) every strategy x seed, then write results.json, the table, the plots, the verdict."""
    executor = (executor or Executor()).check()
    config = prepare(plan, root)
    cells = plan.cells(root, config)
    todo = sum(not c.done for c in cells)
    if todo:
        minutes, how = estimate(config, plan, todo)
        say(
            f"{len(cells)} runs ({len(plan.strategies)} strategies x {len(plan.seeds)} seeds), "
            f"{len(cells) - todo} already finished; the other {todo} take about {minutes:.1f} minutes at "
            f"most at this load ({how}; every plan's full epoch budget)"
        )
    if dry_run:
        return {}
    run_cells(cells, executor, say)
    runs = [(s, seed, path, summary) for (s, seed, path), summary in zip(plan.runs(root), summaries(cells))]
    return write_comparison(root, plan, runs, say)


# ------------------------------------------------------------------------------------------ the results


def run_row(summary: RunSummary) -> dict[str, Any]:
    """One run as the table sees it: the saved model's metrics, seconds, and its diagnostics."""
    row: dict[str, Any] = {"final_phase": summary.final_phase, "last_phase": list(summary.phases)[-1]}
    return {**row, **{key: metric.read(summary) for key, metric in METRICS.items()}}


COLUMNS = columns(
    (
        "val_accuracy",
        "test_accuracy",
        "test_auc",
        "test_macro_f1",
        "corrupted_accuracy",
        "ood_accuracy",
        "cka",
        "imagenet_agreement",
        "seconds",
    )
)
LAST = columns(("last_test_accuracy", "last_test_auc", "last_cka"))  # the last plan, when one before is kept


def _stats(values: list[float]) -> tuple[float, float, int]:
    """mean, sd, and how many ``values`` are finite (a NaN AUC or CKA is left out; the table says so)."""
    return interval(values)[:3]


def pairwise(scores: dict[str, dict[int, float]], reference: str) -> tuple[str | None, list[Paired]]:
    """The best strategy by mean score, and the family of paired comparisons over seeds: every strategy
    against ``reference`` and, when another strategy is best, every other one against the best, with
    Holm's correction over that whole family (the best was picked on these same scores, so testing it
    alone would overstate it)."""
    means = {s: float(np.mean(list(v.values()))) for s, v in scores.items() if v}
    if reference not in means or len(means) < 2:
        return None, []
    best = max(means, key=lambda s: means[s])
    family = [paired(s, reference, scores[s], scores[reference]) for s in means if s != reference]
    if best != reference:
        family += [paired(s, best, scores[s], scores[best]) for s in means if s not in (reference, best)]
    return best, with_holm(family)


def noise_note(split: str, images: int | None) -> str:
    """What the verdict's "noise" covers, and what it does not."""
    sampled = f"the sampling noise of the {images} {split} images" if images else f"{split} sampling noise"
    return (
        f"noise counted: seed-to-seed training noise on one fixed split; not counted: {sampled} (the run "
        f"folders keep no per-image predictions) and the choice of split"
    )


def verdict(
    scores: dict[str, dict[int, float]],
    reference: str,
    metric: str = "test accuracy",
    images: int | None = None,
) -> dict:
    """The pairwise comparisons over seeds and one verdict line: the best strategy (by mean) against
    ``reference``, or, when the reference is best, the reference against the runner-up; the mean paired
    difference with its 95% interval, d_z with its interval, and the Holm-corrected p. "beyond seed
    noise" needs a corrected p < 0.05; fewer than 2 shared seeds give no verdict."""
    best, family = pairwise(scores, reference)
    if best is None:
        line = f"no verdict: the comparison needs {reference} and one other strategy"
        return {"line": line, "comparisons": []}
    if best != reference:
        main = next(c for c in family if c.a == best and c.b == reference)
    else:
        means = {c.a: c.mean for c in family}
        main = next(c for c in family if c.a == max(means, key=lambda s: means[s])).flipped()
    split = metric.split()[0]
    out = {
        "best": best,
        "versus": main.b if best == main.a else main.a,
        "reference": reference,
        "metric": metric,
        "comparisons": [c.to_dict() for c in family],
        "main": main.to_dict(),
        "noise": noise_note(split, images),
        "beyond_noise": bool(main.n > 1 and main.p_holm < 0.05),
    }
    out["line"] = verdict_line(main, metric, len(family))
    return out


def verdict_line(c: Paired, metric: str, family: int) -> str:
    head = f"{c.a} vs {c.b}: {_points(c.mean)} points of {metric}"
    if c.n < 2:
        return f"{head} on {c.n} shared seed: no verdict on noise; use --seeds 3 or more"
    if c.test == "sign-flip" and c.mean == 0:
        return f"{c.a} vs {c.b}: the same {metric} on every one of {c.n} seeds: no difference to call"
    if c.test == "sign-flip":
        return (
            f"{head} on every one of {c.n} seeds (sd 0: no interval, the t-test is undefined); exact "
            f"sign-flip test {floor_note(c.n)}, Holm-corrected over {family} comparisons p = "
            f"{_p(c.p_holm)}: not shown beyond seed noise"
        )
    lo, hi = c.ci
    dlo, dhi = c.d_z_ci
    winner = c.a if c.mean > 0 else c.b
    line = (
        f"{head} [95% CI {_points(lo)}, {_points(hi)}], d_z {c.d_z:.1f} [{dlo:.1f}, {dhi:.1f}], "
        f"paired over {c.n} seeds; t-test p = {_p(c.p_t)}, Holm-corrected over {family} comparisons "
        f"p = {_p(c.p_holm)}: "
    )
    if c.p_holm >= 0.05:
        return line + f"within seed noise (sign-flip p = {_p(c.p_sign_flip)})"
    if c.floor >= 0.05:  # the t-test's normality carries the verdict: say so
        return line + (
            f"{winner} is better beyond seed noise if seed differences are normal (the sign-flip test, "
            f"which does not assume it, cannot go below {_p(c.floor)} on {c.n} seeds)"
        )
    return line + f"{winner} is better beyond seed noise (sign-flip p = {_p(c.p_sign_flip)})"


def _points(x: float) -> str:
    """A difference in points, signed; never "-0.0"."""
    return f"{round(100 * x, 1) + 0.0:+.1f}"


def _p(p: float) -> str:
    return "-" if not math.isfinite(p) else f"{p:.1e}" if p < 0.001 else f"{p:.3f}"


def pairwise_rows(comparisons: list[dict]) -> list[list[str]]:
    """The pairwise table's cells, one row per comparison (points for differences)."""
    rows = []
    for c in comparisons:
        lo, hi = c["ci"]
        if c["n"] < 2:
            diff = f"{_points(c['mean'])} ({c['n']} seed)"
        elif c["test"] == "sign-flip":
            diff = f"{_points(c['mean'])} on every seed (no interval)"
        else:
            diff = f"{_points(c['mean'])} [{_points(lo)}, {_points(hi)}]"
        dlo, dhi = c["d_z_ci"]
        dz = "-" if not math.isfinite(c["d_z"]) else f"{c['d_z']:.1f} [{dlo:.1f}, {dhi:.1f}]"
        p = _p(c["p"]) + (" (= floor)" if c["test"] == "sign-flip" and c["p"] <= c["floor"] else "")
        flip = _p(c["p_sign_flip"]) + (" (= floor)" if c["p_sign_flip"] <= c["floor"] else "")
        rows.append([f"{c['a']} vs {c['b']}", str(c["n"]), diff, dz, c["test"], p, flip, _p(c["p_holm"])])
    return rows


PAIRWISE = (
    "comparison", "seeds", "difference (points) [95% CI]", "d_z [95% CI]", "test", "p", "sign-flip p",
    "Holm p",
)  # fmt: skip


def pairwise_markdown(comparisons: list[dict]) -> str:
    rows = pairwise_rows(comparisons)
    lines = ["| " + " | ".join(PAIRWISE) + " |", "|" + "---|" * len(PAIRWISE)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def pairwise_csv(comparisons: list[dict]) -> str:
    """One row per comparison: differences as fractions (not points), intervals as low/high columns."""
    import csv
    import io

    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(PAIRWISE_CSV)
    for c in comparisons:
        flat = {**c, "ci_low": c["ci"][0], "ci_high": c["ci"][1]}
        flat.update(d_z_low=c["d_z_ci"][0], d_z_high=c["d_z_ci"][1], sign_flip_floor=c["floor"])
        writer.writerow([_csv_value(flat[k]) for k in PAIRWISE_CSV])
    return out.getvalue()


PAIRWISE_CSV = (
    "a", "b", "n", "mean", "sd", "ci_low", "ci_high", "d_z", "d_z_low", "d_z_high", "test", "p_t",
    "p_sign_flip", "sign_flip_floor", "p", "p_holm",
)  # fmt: skip


def _csv_value(v):
    if isinstance(v, float):
        return round(v, 6) if math.isfinite(v) else ""
    return v


def write_comparison(
    root: Path, plan: Plan, summaries: list[tuple[str, int, Path, RunSummary]], say: Callable[[str], None]
) -> dict[str, Any]:
    rows = [
        {"strategy": s, "seed": seed, "path": str(path.relative_to(root)), **run_row(summary)}
        for s, seed, path, summary in summaries
    ]
    table = []
    for strategy in plan.strategies:
        mine = [r for r in rows if r["strategy"] == strategy]
        table.append(
            {
                "strategy": strategy,
                "runs": len(mine),
                **{k: _stats([r[k] for r in mine]) for k, _, _ in COLUMNS + LAST},
            }
        )
    key = "test_accuracy" if all(math.isfinite(r["test_accuracy"]) for r in rows) else "val_accuracy"
    scores = {s: {r["seed"]: r[key] for r in rows if r["strategy"] == s} for s in plan.strategies}
    reference = REFERENCE if REFERENCE in plan.strategies else plan.strategies[0]
    scored = summaries[0][3].final.on(key.split("_")[0]) if summaries else None
    decision = verdict(scores, reference, key.replace("_", " "), scored.n if scored else None)
    results = {
        **plan.spec(),
        "runs": [
            {**row, "summary": summary.to_dict()}
            for row, (_, _, _, summary) in zip(rows, summaries, strict=True)
        ],
        "table": table,
        "verdict": decision,
    }
    write_atomic(root / "results.json", dumps(results))
    shown = [c for c in COLUMNS if any(math.isfinite(t[c[0]][0]) for t in table)]
    if any(r["last_phase"] != r["final_phase"] for r in rows):  # validation kept an earlier plan somewhere
        shown += [c for c in LAST if any(math.isfinite(t[c[0]][0]) for t in table)]
    md = markdown_table(table, shown)
    pairs = pairwise_markdown(decision["comparisons"]) if decision["comparisons"] else ""
    family = len(decision["comparisons"])
    caption = f"paired over seeds, {key.replace('_', ' ')}; Holm's correction over the {family} comparisons"
    said = decision["line"] + (f"\n{decision['noise']}" if "noise" in decision else "")
    text = "\n\n".join(x for x in (md, pairs and f"{pairs}\n\n{caption}", said) if x)
    write_atomic(root / "table.md", text + "\n")
    write_atomic(root / "table.csv", csv_table(table, shown))
    write_atomic(root / "pairwise.csv", pairwise_csv(decision["comparisons"]))
    plot_comparison(root, plan, summaries, rows)
    say(text)
    say(
        f"comparison in {root}: results.json, table.md/.csv, pairwise.csv, val_accuracy.png, gain.png, "
        "cka_accuracy.png"
    )
    return results


def _cell(value: tuple[float, float, int], scale: float, runs: int) -> str:
    mean, sd, n = value
    if not math.isfinite(mean):
        return "-"
    digits = 1 if scale == 100 else 3 if scale == 1 else 1
    scale = scale or 1
    return f"{scale * mean:.{digits}f} +- {scale * sd:.{digits}f}" + (f" ({n} of {runs})" if n < runs else "")


def markdown_table(table: list[dict], columns) -> str:
    head = "| strategy | runs | " + " | ".join(label for _, label, _ in columns) + " |"
    rule = "|---|---|" + "---|" * len(columns)
    body = [
        f"| {t['strategy']} | {t['runs']} | "
        + " | ".join(_cell(t[k], s, t["runs"]) for k, _, s in columns)
        + " |"
        for t in table
    ]
    return "\n".join([head, rule, *body])


def csv_table(table: list[dict], columns) -> str:
    import csv
    import io

    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(
        ["strategy", "runs", *[f"{k}_{part}" for k, _, _ in columns for part in ("mean", "sd", "n")]]
    )
    for t in table:
        writer.writerow([t["strategy"], t["runs"], *[round(v, 6) for k, _, _ in columns for v in t[k]]])
    return out.getvalue()


def plot_comparison(root: Path, plan: Plan, summaries, rows: list[dict]) -> None:
    """val_accuracy.png (every run's validation accuracy over epochs), gain.png (each strategy's paired
    difference from the reference, mean +- sd over seeds), cka_accuracy.png (feature drift vs accuracy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {s: plt.cm.tab10(i % 10) for i, s in enumerate(plan.strategies)}
    key = "test_accuracy" if all(math.isfinite(r["test_accuracy"]) for r in rows) else "val_accuracy"
    for name, draw, size in (
        ("val_accuracy.png", lambda ax: _plot_epochs(ax, plan, summaries, colours), (8, 4.5)),
        ("gain.png", lambda ax: _plot_gain(ax, plan, rows, colours, key), (8, 4)),
        ("cka_accuracy.png", lambda ax: _plot_cka(ax, plan, rows, colours, key), (6, 4.5)),
    ):
        fig, ax = plt.subplots(figsize=size)
        draw(ax)
        fig.tight_layout()
        with atomic_path(root / name) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
        plt.close(fig)


def _plot_epochs(ax, plan: Plan, summaries, colours: dict) -> None:
    """Validation accuracy over epochs, every seed a thin line; phase starts marked on the first seed's."""
    for strategy, seed, _, summary in summaries:
        epochs = [r for p in summary.phases.values() for r in p.epochs]
        first = seed == plan.seeds[0]
        ax.plot(
            [r["step_epoch"] for r in epochs],
            [100 * r["val_acc"] for r in epochs],
            color=colours[strategy],
            lw=1.6 if first else 0.7,
            alpha=1 if first else 0.5,
            marker="o",
            ms=2,
            label=strategy if first else None,
        )
        for p in list(summary.phases.values())[1:] if first else []:
            if p.epochs:
                ax.axvline(p.epochs[0]["step_epoch"] - 0.5, color=colours[strategy], ls=":", lw=0.8)
    ax.set_xlabel("epoch (over all phases; dotted: a phase starts)")
    ax.set_ylabel("validation accuracy (%)")
    ax.legend(fontsize=8)


def _plot_gain(ax, plan: Plan, rows: list[dict], colours: dict, key: str) -> None:
    """Gain per strategy: paired difference from the reference, mean +- sd over seeds."""
    reference = REFERENCE if REFERENCE in plan.strategies else plan.strategies[0]
    ref = {r["seed"]: r[key] for r in rows if r["strategy"] == reference}
    for i, s in enumerate(plan.strategies):
        diffs = [100 * (r[key] - ref[r["seed"]]) for r in rows if r["strategy"] == s and r["seed"] in ref]
        gain = interval(diffs)
        ax.bar(i, gain.mean, yerr=gain.sd, color=colours[s], capsize=3)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(plan.strategies)), plan.strategies, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(f"{key.replace('_', ' ')} - {reference} (points)")
    ax.set_title("gain per strategy, paired over seeds (mean +- sd)")


def _plot_cka(ax, plan: Plan, rows: list[dict], colours: dict, key: str) -> None:
    for s in plan.strategies:
        mine = [r for r in rows if r["strategy"] == s]
        ax.scatter([r["cka"] for r in mine], [100 * r[key] for r in mine], color=colours[s], label=s, s=20)
    ax.set_xlabel("linear CKA, pretrained vs fine-tuned features (1 = unchanged)")
    ax.set_ylabel(f"{key.replace('_', ' ')} (%)")
    ax.legend(fontsize=8)
