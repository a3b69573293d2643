"""A run's settings with nothing left to find: what the engine receives. ``thaw fit`` builds it
(``thaw.train.resolve.resolve``: ``--lr auto`` found first) and writes it into the run folder
(``config.yaml``, ``plans.yaml``, ``lr_find.json``); ``thaw resume`` reads the same object back
(``thaw.core.run_folder.RunFiles.resolved``), so a run and its resume hand the engine equal settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from thaw.core import yaml_file
from thaw.core.config import RunConfig
from thaw.core.errors import ThawError
from thaw.core.strategies import PhasePlan, check_plans, for_role


@dataclass(frozen=True)
class Resolved:
    """``config``: the run's settings, every LR a number (``auto`` replaced by what thaw lr-find found,
    :meth:`RunConfig.resolved`); ``plans``: the plans the engine runs, checked; ``lr_find``: the finders'
    brief records, by phase (empty when no LR was ``auto``)."""

    config: RunConfig
    plans: list[PhasePlan]
    lr_find: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.config.auto:
            raise ThawError(f"{' and '.join(self.config.auto)} is still auto: resolve the config first")

    @property
    def pseudo(self) -> tuple[int, PhasePlan] | None:
        """The pseudo-label round's index and plan (``--pseudo-labels``), from the plans; else None."""
        return for_role("pseudo", self.config, self.plans) if self.config.pseudo_labels else None

    def plans_yaml(self) -> str:
        return yaml.safe_dump([p.to_dict() for p in self.plans], sort_keys=False)

    @staticmethod
    def plans_from_yaml(text: str) -> list[PhasePlan]:
        return check_plans([PhasePlan.from_dict(p) for p in yaml_file.load(text, "plans.yaml")])
