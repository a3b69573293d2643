"""Using a trained model: ``thaw.load(run_folder).predict_files([...])``."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from thaw.data.images import eval_transform, open_image, resized
from thaw.data.sources import Item
from thaw.models import Classifier, load_model
from thaw.predictions import Prediction, expand_paths, failure, result, views

__all__ = ["Prediction", "Predictor", "expand_paths"]


class Predictor:
    """A trained classifier with its own preprocessing and class names."""

    def __init__(self, model: Classifier) -> None:
        self.model = model.eval()
        self.class_names = model.class_names
        self.preprocessing = model.preprocessing
        self._transform = eval_transform(model.preprocessing)

    @classmethod
    def load(cls, path: str | Path) -> Predictor:
        return cls(load_model(path))

    def tensor(self, image: Image.Image) -> torch.Tensor:
        mode = "L" if self.model.spec.in_channels == 1 else "RGB"
        return self._transform(resized(image.convert(mode), self.preprocessing))

    @torch.no_grad()
    def predict_proba(
        self, images: list[Image.Image], batch_size: int = 64, tta: bool = False
    ) -> torch.Tensor:
        """Class probabilities [N, C]; with ``tta``, averaged over the flip and small-crop views."""
        if not tta:
            return self._run([self.tensor(im) for im in images], batch_size)
        out = []
        for im in images:
            mode = "L" if self.model.spec.in_channels == 1 else "RGB"
            x = resized(im.convert(mode), self.preprocessing)
            pre = self.preprocessing
            crops = []
            for top, left, flip in views(x.shape[1], x.shape[2], pre.size, pre.resize_size, tta=True):
                crop = x[:, top : top + pre.size, left : left + pre.size]
                crops.append(self._normalise(crop.flip(-1) if flip else crop))
            out.append(self._run(crops, batch_size).mean(dim=0))
        return torch.stack(out) if out else torch.empty(0, len(self.class_names))

    def _normalise(self, crop: torch.Tensor) -> torch.Tensor:
        pre = self.preprocessing
        mean, std = torch.tensor(pre.mean).view(-1, 1, 1), torch.tensor(pre.std).view(-1, 1, 1)
        return (crop.float() / 255 - mean) / std

    def _run(self, tensors: list[torch.Tensor], batch_size: int) -> torch.Tensor:
        out = [
            self.model(torch.stack(tensors[i : i + batch_size])).softmax(dim=1)
            for i in range(0, len(tensors), batch_size)
        ]
        return torch.cat(out) if out else torch.empty(0, len(self.class_names))

    def predict_paths(self, paths: list[str | Path], tta: bool = False) -> list[Prediction]:
        """One prediction per image file (folders are searched recursively), in order; a file that cannot
        be read gets a prediction with ``error`` set instead of a label."""
        files = expand_paths(paths)
        images, slots, out = [], [], []
        for f in files:
            try:
                images.append(open_image(Item(str(f), -1), 3))
                slots.append(len(out))
                out.append(None)
            except (OSError, ValueError, SyntaxError) as err:
                out.append(failure(str(f), err))
        probs = self.predict_proba(images, tta=tta)
        for slot, p in zip(slots, probs):
            out[slot] = result(str(files[slot]), self.class_names, p.tolist())
        return out

    def predict_files(self, paths: list[str | Path]) -> tuple[list[Prediction], list[str]]:
        """Predictions for the image files (folders are searched recursively), and the files that failed."""
        done = self.predict_paths(paths)
        return [p for p in done if p.error is None], [p.path for p in done if p.error is not None]
