"""Resolving a run once, before it trains: the plans checked against the config and the images, and
``--lr auto`` / ``--lr-ratio auto`` found by thaw lr-find. The result, :class:`thaw.core.resolved.Resolved`,
is what the run folder records and the engine receives; ``thaw resume`` reads it back from the folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from thaw import data as thaw_data
from thaw.core.config import RunConfig
from thaw.core.errors import ThawError
from thaw.core.resolved import Resolved
from thaw.core.strategies import PhasePlan, check_plans, plans_for
from thaw.train import lr_find, preflight


def resolve(
    config: RunConfig,
    sources: thaw_data.Sources,
    plans: list[PhasePlan] | None = None,
    finders: Path | None = None,
    say: Callable[[str], None] = print,
    warn: Callable[[str], None] = print,
    draw: lr_find.Draw | None = None,
) -> Resolved:
    """``config`` with its plans (``plans`` given as data, else the config's ``plans:`` or its strategy)
    and every LR a number. The plans are checked first (against the model and ``sources``, before any
    folder exists), built from the default LRs where an LR is ``auto``; then the finders run (their files
    written into ``finders``) and the plans are built from what they found."""
    if config.auto and plans is not None:
        raise ThawError("lr or lr_ratio auto is found for the config's strategy: give plans with numbers")
    plans = check_plans(list(plans)) if plans is not None else plans_for(config.resolved())
    lr_find.check_auto(config, plans)
    config, plans = preflight.check_run(config, plans, sources.class_names, sources.multilabel, warn)
    if not config.auto:
        return Resolved(config, plans)
    found, records = lr_find.resolve_auto(config, sources, finders, say, warn, draw)
    config = config.resolved(found)
    return Resolved(config, plans_for(config), records)
