"""``thaw curve``: the label-budget learning curve. Is labelling more worth it?

For each budget (``10%`` of each class's training labels, or ``25`` labelled images per class) and each
seed, one ordinary run folder (``<curve>/<budget>-seed<S>/``) made by the recipe. Every seed draws its
own labelled subset (``--label-seed`` defaults to the run's seed) so the spread covers which images got
labelled, not only initialisation. Rerunning the same command skips finished runs and resumes
interrupted ones. Beside each fine-tuned result stands the converged linear probe on the same budget:
the run's cached phase 1 (logistic regression on the frozen features, L2 chosen on validation), so the
curve shows what fine-tuning adds at every budget.

``curve.json``, ``curve.md`` (the table) and ``curve.png`` are rebuilt from the run folders at the end
of every call (they hold nothing a run folder does not).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from thaw.core import yaml_file
from thaw.core.config import RunConfig, override
from thaw.core.errors import ThawError
from thaw.core.files import atomic_path, write_atomic
from thaw.core.results import RunSummary, dumps
from thaw.core.run_folder import final_path
from thaw.core.strategies import check_named
from thaw.data import discover
from thaw.data.budget import apply_budget
from thaw.metrics.stats import interval
from thaw.studies.runner import Cell, Executor, run_cells

IGNORED = ("out", "seed", "data.labels_per_class", "data.label_fraction")
"""Settings that vary between the runs of one curve; every other setting must match the curve's."""


@dataclass(frozen=True)
class Budget:
    """``fraction`` of each class's training labels, or ``per_class`` labelled images per class."""

    fraction: float | None = None
    per_class: int | None = None

    @property
    def label(self) -> str:
        return f"{100 * self.fraction:g}%" if self.fraction is not None else f"{self.per_class}/class"

    @property
    def folder(self) -> str:
        return f"frac{100 * self.fraction:g}" if self.fraction is not None else f"per-class{self.per_class}"

    def settings(self) -> dict:
        return {"data.label_fraction": self.fraction, "data.labels_per_class": self.per_class}


def parse_budgets(text: str) -> list[Budget]:
    """``10%,25%,100%`` (shares of each class's labels) and/or ``5,10,25`` (labelled images per class)."""
    budgets = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        try:
            if part.endswith("%"):
                value = float(part[:-1])
                if not 0 < value <= 100:
                    raise ValueError
                budgets.append(Budget(fraction=value / 100))
            else:
                value = int(part)
                if value < 1:
                    raise ValueError
                budgets.append(Budget(per_class=value))
        except ValueError:
            raise ThawError(
                f"--budgets: {part!r} is not a budget; give shares such as 10%,25%,100% or labelled "
                f"images per class such as 5,10,25"
            ) from None
    if not budgets:
        raise ThawError("--budgets is empty; give e.g. 10%,25%,50%,100%")
    if len(set(budgets)) != len(budgets):
        raise ThawError(f"--budgets {text} lists a budget twice")
    return budgets


def run_curve(
    config: RunConfig,
    budgets: list[Budget],
    seeds: int,
    out: Path,
    quiet: bool = True,
    say=print,
    executor: Executor | None = None,
) -> dict:
    """Run (or finish) every budget x seed under ``out`` and write ``curve.json``, ``curve.md`` and
    ``curve.png`` there. Returns what ``curve.json`` holds."""
    sources = _check(config, budgets, seeds)
    executor = (executor or Executor()).check()
    out.mkdir(parents=True, exist_ok=True)
    _check_same_settings(config, out / "curve.yaml")
    labelled = {
        b: len(apply_budget(sources, override(config, b.settings(), keep_none=True).data, 0).split("train"))
        for b in budgets
    }
    jobs = [(b, config.seed + s) for b in budgets for s in range(seeds)]
    cells = [
        Cell(
            f"{b.label} seed {s}",
            out / f"{b.folder}-seed{s}",
            override(
                config, {**b.settings(), "seed": s, "out": str(out / f"{b.folder}-seed{s}")}, keep_none=True
            ),
            cost=labelled[b],  # runs cost about in proportion to their labelled images
        )
        for b, s in jobs
    ]
    _announce(config, budgets, seeds, cells, labelled, say)
    run_cells(cells, executor, say)
    runs = [_row(b, s, final_path(c.path)) for (b, s), c in zip(jobs, cells)]
    result = {
        "budgets": [b.label for b in budgets],
        "seeds": seeds,
        "runs": runs,
        "table": table(runs, budgets),
    }
    write_atomic(out / "curve.json", dumps(result))
    write_atomic(out / "curve.md", markdown(result))
    plot(result, out / "curve.png", f"{sources.name} - {config.model.name}")
    return result


def _check(config: RunConfig, budgets: list[Budget], seeds: int):
    """The sources, once the settings are checked: every budget met by every class before any run."""
    if config.data.labels_per_class is not None or config.data.label_fraction is not None:
        raise ThawError("thaw curve sets each run's label budget; drop --labels-per-class/--label-fraction")
    if seeds < 1:
        raise ThawError(f"--seeds {seeds} must be at least 1")
    config.validate()
    check_named(config)  # --strategy auto is a study of its own
    sources = discover(config.data)
    for b in budgets:  # a budget a class cannot meet is an error before any run starts
        apply_budget(sources, override(config, b.settings(), keep_none=True).data, config.seed)
    return sources


def _announce(config, budgets, seeds, cells, labelled, say) -> None:
    done = [c for c in cells if c.done]
    todo = [c for c in cells if not c.done]
    rate = _seconds_per_image_epoch([c.path for c in done])
    work = int(sum(c.cost * max(config.phase2.epochs, 1) for c in todo))
    estimate = f", about {rate * work / 60:.0f} min at this folder's measured speed" if rate and work else ""
    say(
        f"curve: {len(budgets)} budgets x {seeds} seeds = {len(cells)} runs ({len(done)} finished, "
        f"{len(todo)} to run); labelled training images per run: "
        + ", ".join(f"{b.label} {labelled[b]}" for b in budgets)
        + f"; at most {work} image-epochs of phase 2 to go{estimate}"
    )


def _check_same_settings(config: RunConfig, path: Path) -> None:
    """A curve folder holds runs of one recipe: its settings are written on the first call and checked on
    every later one, so a rerun with other flags cannot mix two recipes in one table."""
    mine = {k: v for k, v in _flat(config.to_dict()).items() if k not in IGNORED}
    if not path.is_file():
        write_atomic(path, yaml.safe_dump(mine, sort_keys=False))
        return
    theirs = yaml_file.load_file(path) or {}
    changed = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
    if changed:
        k = changed[0]
        raise ThawError(
            f"{path.parent} holds a curve made with other settings ({k}: {theirs.get(k)!r} there, "
            f"{mine.get(k)!r} now); rerun with the same flags or choose another --out"
        )


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _seconds_per_image_epoch(paths: list[Path]) -> float | None:
    seconds = work = 0.0
    for p in paths:
        s = RunSummary.read(p)
        seconds += sum(r.seconds for r in s.phases.values())
        work += s.images.get("train", 0) * max(sum(r.epochs_run for r in s.phases.values()) - 1, 1)
    return seconds / work if work else None


def _row(budget: Budget, seed: int, path: Path) -> dict:
    s = RunSummary.read(path)
    split = "test" if s.final.test is not None else "val"
    first = next(iter(s.phases.values()))
    probe = first if first.solver else None  # the cached head: a converged logistic-regression probe
    pick = lambda r: {"accuracy": r.on(split).accuracy, "auc": r.on(split).auc} if r else None  # noqa: E731
    return {
        "budget": budget.label,
        "seed": seed,
        "run": str(path),
        "labelled": s.images.get("train", 0),
        "split": split,
        "final_phase": s.final_phase,
        "model": pick(s.final),
        "last": pick(list(s.phases.values())[-1]),
        "probe": pick(probe),
    }


def table(runs: list[dict], budgets: list[Budget]) -> list[dict]:
    """Mean and sd over seeds per budget, of the saved model and of the linear probe."""
    rows = []
    for b in budgets:
        mine = [r for r in runs if r["budget"] == b.label]
        row = {"budget": b.label, "labelled": interval([r["labelled"] for r in mine]).mean, "n": len(mine)}
        for who in ("model", "last", "probe"):
            for metric in ("accuracy", "auc"):
                values = [r[who][metric] for r in mine if r[who]]
                row[f"{who}_{metric}"] = interval(values)[:2]
        rows.append(row)
    return rows


WHO = {"model": "saved model", "last": "last plan", "probe": "linear probe"}


def markdown(result: dict) -> str:
    split = result["runs"][0]["split"] if result["runs"] else "test"
    head = " | ".join(f"{split} acc / AUC, {name}" for name in WHO.values())
    lines = [f"| budget | labelled images | {head} |", "|---|---|" + "---|" * len(WHO)]

    def pm(ms: tuple[float, float], scale: int) -> str:
        if ms[0] is None or math.isnan(ms[0]):  # no such plan (a strategy without a linear probe)
            return "-"
        digits = 1 if scale == 100 else 3
        return f"{scale * ms[0]:.{digits}f} +- {scale * ms[1]:.{digits}f}"

    for row in result["table"]:
        cells = " | ".join(f"{pm(row[f'{w}_accuracy'], 100)} / {pm(row[f'{w}_auc'], 1)}" for w in WHO)
        lines.append(f"| {row['budget']} | {row['labelled']:.0f} | {cells} |")
    lines.append(
        f"\nmean +- sd over {result['seeds']} seed(s), each seed with its own labelled subset. Saved model: "
        "the plan --monitor keeps (best validation accuracy by default); last plan: the last one "
        "trained (phase 2, or the pseudo-label round); linear probe: the converged logistic regression on "
        "the frozen features of the same labelled images (the cached phase 1)"
    )
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path, title: str) -> None:
    """AUC and accuracy against labelled images, with error bars (sd over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["table"]
    x = [r["labelled"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric, name in zip(axes, ("auc", "accuracy"), ("AUC", "accuracy")):
        for who, style in (("model", "-o"), ("last", ":^"), ("probe", "--s")):
            label = WHO[who]
            means = [r[f"{who}_{metric}"][0] for r in rows]
            sds = [r[f"{who}_{metric}"][1] for r in rows]
            ax.errorbar(x, means, yerr=sds, fmt=style, capsize=4, label=label)
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(x, [f"{v:.0f}\n{r['budget']}" for v, r in zip(x, rows)])
        ax.set_xlabel("labelled training images (log scale)")
        ax.set_ylabel(f"{result['runs'][0]['split'] if result['runs'] else 'test'} {name}")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{title}: mean +- sd over {result['seeds']} seed(s)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
