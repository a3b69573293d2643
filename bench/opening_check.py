"""What phase 2's first epochs change on validation, image by image (issue 25, eighth stop).

    python bench/opening_check.py hymenoptera precise8 0        # dataset, bench/suite.py candidate, seed

Runs the suite's config (128 px column) for that candidate and seed into ``bench/out/diag``. At phase 2's
start (after ``matched``'s fold, which leaves phase 1's outputs exactly) it scores validation once: that is
phase 1. At the end of each phase-2 epoch it scores the epoch's weights, each time from the same state:

- ``validated``: the state validation saw (Lightning validates before ``on_train_epoch_end``, so under the
  default these are already the measured statistics below; under ``--bn-precise-batches 0`` the moving
  average);
- ``train-view``: statistics measured on the epoch's first 8 training batches (what ``matched`` validates
  on by default);
- ``train-view, phase-1 head``: the same, with phase 1's head put back (what the backbone's steps alone did);
- ``eval-view``: statistics measured on 8 batches of training images in the validation view (no
  augmentation).

Each ``OPENING`` line gives per variant accuracy, mean loss, and the validation images it lost and gained
against phase 1 (right there and wrong now, and the reverse), and phase 1's median absolute margin (logit
gap) of the images that flipped against all. Accuracy on a small validation set moves by whole images:
``lost`` and ``gained`` say whether an opening is many images crossing or a few near the boundary.
"""

import copy
import json
import os
import sys

import lightning as L
import torch
from torch.utils.data import DataLoader

from thaw.data.images import ImageDataset
from thaw.train.tracked import MatchedStatistics, precise

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import suite  # noqa: E402


class Opening(L.Callback):
    epochs = 3

    @torch.no_grad()
    def score(self, pl_module, val) -> dict:
        model = pl_module.model
        modes = {m: m.training for m in model.modules()}
        model.eval()
        logits, ys = [], []
        for x, y in val:
            logits.append(model(x).float())
            ys.append(y)
        for m, mode in modes.items():
            m.train(mode)
        z, y = torch.cat(logits), torch.cat(ys)
        top2 = z.topk(2, dim=1).values
        return {
            "right": z.argmax(1) == y,
            "loss": torch.nn.functional.cross_entropy(z, y).item(),
            "margin": top2[:, 0] - top2[:, 1],
        }

    def row(self, s: dict) -> dict:
        lost = self.p1["right"] & ~s["right"]
        gained = ~self.p1["right"] & s["right"]
        flipped = lost | gained
        margin = self.p1["margin"]
        return {
            "acc": round(s["right"].float().mean().item() * 100, 2),
            "loss": round(s["loss"], 4),
            "lost": int(lost.sum()),
            "gained": int(gained.sum()),
            "p1_margin_flipped": round(margin[flipped].median().item(), 3) if flipped.any() else None,
        }

    def on_train_start(self, trainer, pl_module):
        self.p1 = self.score(pl_module, trainer.val_dataloaders)
        self.head1 = copy.deepcopy(pl_module.model.head.state_dict())
        print(
            "OPENING 0",
            json.dumps(
                {
                    "phase1": {
                        "acc": round(self.p1["right"].float().mean().item() * 100, 2),
                        "loss": round(self.p1["loss"], 4),
                    },
                    "p1_margin_median": round(self.p1["margin"].median().item(), 3),
                }
            ),
            flush=True,
        )

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True  # the phase's schedule is the 10-epoch one; only its start is read
        val = trainer.val_dataloaders
        layers = MatchedStatistics.layers(pl_module)
        saved = copy.deepcopy(pl_module.model.state_dict())
        rows = {"validated": self.row(self.score(pl_module, val))}
        precise(pl_module, layers, trainer.train_dataloader, 8)
        rows["train-view"] = self.row(self.score(pl_module, val))
        pl_module.model.head.load_state_dict(self.head1)
        rows["train-view, phase-1 head"] = self.row(self.score(pl_module, val))
        pl_module.model.load_state_dict(saved)
        train = trainer.train_dataloader
        evaluation = ImageDataset(train.dataset.data, val.dataset.transform)
        generator = torch.Generator().manual_seed(trainer.current_epoch)
        order = torch.randperm(len(evaluation), generator=generator)
        batches = DataLoader(torch.utils.data.Subset(evaluation, order.tolist()), batch_size=train.batch_size)
        precise(pl_module, layers, batches, 8)
        rows["eval-view"] = self.row(self.score(pl_module, val))
        pl_module.model.load_state_dict(saved)
        print("OPENING", trainer.current_epoch + 1, json.dumps(rows), flush=True)


def main() -> None:
    suite.diagnose(Opening, "open-{ds}-{cand}-{seed}")


if __name__ == "__main__":
    main()
