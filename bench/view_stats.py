"""Which view should ``matched`` measure its statistics on? The saved model of finished suite runs, scored
with its statistics measured on training images in the training view (augmented, as ``matched`` does)
and in the eval view (as validation and prediction see images). Issue 25, eighth stop.

    python bench/view_stats.py bench/out/suite-128/*/precise8-seed*      # run folders of the default

For each run folder: the saved model as it is (its statistics were measured on 8 augmented training
batches at the best epoch), then every trained batch norm's statistics measured again at the same weights,
every layer normalising by its batch as in training (``thaw.train.tracked.precise``), over 8 batches of
the training images, shuffled, once in the training view and once in the eval view. Prints one JSON line
per run: validation and test accuracy (%) and loss for each. Forward passes only; the weights never move.
"""

import json
import sys
from pathlib import Path

import torch
from torch import nn

from thaw import data as thaw_data
from thaw.core.config import override
from thaw.core.run_folder import RunFiles
from thaw.core.run_log import Reporter
from thaw.models.model_file import load_model
from thaw.train.freeze import BN_TYPES
from thaw.train.recipe import Loaders
from thaw.train.tracked import precise

BATCHES = 8


class Forward(nn.Module):
    """What :func:`thaw.train.tracked.moments` needs of a phase module: the model and its forward."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self._forward = model


@torch.no_grad()
def score(model, loader) -> dict:
    model.eval()
    right = n = 0
    loss = 0.0
    for x, y in loader:
        z = model(x)
        right += (z.argmax(1) == y).sum().item()
        loss += torch.nn.functional.cross_entropy(z, y, reduction="sum").item()
        n += len(y)
    return {"acc": round(100 * right / n, 2), "loss": round(loss / n, 4)}


def main() -> None:
    torch.set_num_threads(1)
    for folder in sys.argv[1:]:
        run = RunFiles(Path(folder))
        config = run.config()
        config = override(config, {"data.split_file": str(run.split), "data.num_workers": 0})
        sources = thaw_data.discover(config.data)
        model = load_model(run.model)
        loaders = Loaders(sources, model, config, Reporter(quiet=True))
        splits = {"val": loaders.val, **({"test": loaders.test} if loaders.test is not None else {})}
        layers = [m for m in model.backbone.modules() if isinstance(m, BN_TYPES) and m.track_running_stats]
        saved = {k: v.clone() for k, v in model.state_dict().items()}
        row = {"run": folder, "saved": {s: score(model, d) for s, d in splits.items()}}
        evaluation = thaw_data.eval_transform(loaders.pre)
        train = loaders.decoded["train"]
        views = {
            "train-view": loaders.train(1),
            "eval-view": thaw_data.loader(train, evaluation, config.data, True, config.seed),
        }
        for name, batches in views.items():
            model.load_state_dict(saved)
            precise(Forward(model), layers, batches, BATCHES)
            row[name] = {s: score(model, d) for s, d in splits.items()}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
