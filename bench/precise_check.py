"""Phase 2's validation with the moving average of batch norm's statistics against statistics measured at
the epoch's end weights (issue 25, seventh stop).

    python bench/precise_check.py small-marks matched 3      # dataset, bench/suite.py candidate, seed

Runs the suite's config (128 px column) for that candidate and seed into ``bench/out/diag``; at the end of
every phase-2 epoch it prints one ``PRECISE`` line: validation accuracy of a copy of the model with the
running statistics as they are (``ema``: the moving average unless the candidate measures them), and with
the statistics of every batch norm that trains recomputed as the cumulative average over the epoch's first
8 and 20 training batches at the current weights (``precise8``, ``precise20``). Accuracy only.
"""

import copy
import itertools
import json
import os
import sys

import lightning as L
import torch

from thaw.train.freeze import BN_TYPES

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import suite  # noqa: E402


class Precise(L.Callback):
    def on_train_epoch_end(self, trainer, pl_module):
        rows = {}
        val = trainer.val_dataloaders

        def score(model):
            model.eval()
            right = n = 0
            with torch.no_grad():
                for x, y in val:
                    right += (model(x).argmax(1) == y).sum().item()
                    n += len(y)
            return right / n

        rows["ema"] = score(copy.deepcopy(pl_module.model))
        for k in (8, 20):
            m = copy.deepcopy(pl_module.model)
            bns = [b for b in m.modules() if isinstance(b, BN_TYPES) and b.training is not None]
            trained = [
                b
                for b, o in zip(bns, [b for b in pl_module.model.modules() if isinstance(b, BN_TYPES)])
                if o.training
            ]
            m.eval()
            for b in trained:
                b.reset_running_stats()
                b.momentum = None
                b.train()
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                for x, _ in itertools.islice(trainer.train_dataloader, k):
                    m(x)
            rows[f"precise{k}"] = score(m)
        print("PRECISE", trainer.current_epoch + 1, json.dumps(rows), flush=True)


def main() -> None:
    suite.diagnose(Precise, "{ds}-{cand}-{seed}")


if __name__ == "__main__":
    main()
