"""A frozen prefix cached for partial unfreezing: the cut is exact, training on it is the same training,
and anything that cannot be cut trains online with the reason."""

import json
import os

import lightning as L
import numpy as np
import pytest
import torch
from conftest import make_class_folder, tiny_config, tiny_flags
from safetensors.torch import load_file
from torch import nn

import thaw
from thaw.cli import main
from thaw.core.config import ModelConfig, override
from thaw.core.errors import ThawError
from thaw.core.strategies import PhasePlan, plans_for
from thaw.models import Classifier, ModelSpec, Preprocessing, build_classifier
from thaw.models.split import CannotSplit, split_backbone
from thaw.train.prefix import prefix_split


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("THAW_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_class_folder(tmp_path_factory.mktemp("prefix") / "shapes", per_class=10)


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "resnet18", "timm/efficientnet_b0"])
def test_prefix_then_suffix_is_the_backbone(name):
    model = build_classifier(ModelConfig(name=name, weights="none"), 3, image_size=32).eval()
    n = len(model.layer_groups)
    split = split_backbone(model.backbone, model.layer_groups, n - 2, torch.randn(2, 3, 32, 32))
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(split.suffix(split.prefix(x)), model.backbone(x), atol=1e-5)
    # the halves hold the backbone's own parameters: the suffix's are exactly the last two groups'
    suffix_params = {id(p) for p in split.suffix.parameters()}
    assert suffix_params == {id(p) for p in model.group_parameters(range(n - 2, n))}
    assert not suffix_params & {id(p) for p in split.prefix.parameters()}


def test_stochastic_depth_in_the_prefix_is_flagged_as_not_exact():
    """torchvision's EfficientNet drops residual branches at random in training mode (online, the frozen
    prefix runs in training mode, batch norm aside); the cache is the eval-mode prefix."""
    model = build_classifier(ModelConfig(name="efficientnet_b0", weights="none"), 3, image_size=32)
    n = len(model.layer_groups)
    split = split_backbone(model.backbone, model.layer_groups, n - 2, torch.randn(2, 3, 32, 32))
    assert split.stochastic_prefix == ["code that runs differently in training mode"]


def test_cached_prefix_steps_give_the_same_weights_as_the_full_model(shapes, tmp_path, home):
    """No augmentation, batch norm frozen, the same batches in the same order: a few AdamW steps on the
    cached activations end on the same weights as the same steps through the whole model."""
    runs = {}
    for mode in ("online", "cached"):
        config = tiny_config(
            shapes,
            tmp_path / mode,
            **{
                "data.augment": False,
                "phase1.epochs": 0,
                "phase2.epochs": 2,
                "phase2.patience": 3,
                "hardware.channels_last": False,  # the suffix trains contiguous: compare like with like
            },
            unfreeze="2",
            lr=0.01,
            phase2_features=mode,
        )
        runs[mode] = thaw.fit(config, quiet=True)
    online, cached = (runs[m].model.state_dict() for m in ("online", "cached"))
    gap = max(float((online[k].float() - cached[k].float()).abs().max()) for k in online)
    assert gap <= 1e-6, gap
    record = runs["cached"].summary.phases["phase2"].features
    assert record["mode"] == "cached-prefix" and record["exact"] and record["views"] == 1
    assert runs["online"].summary.phases["phase2"].features == {"mode": "online"}
    # the steps moved the trainable groups (the comparison is not between two untouched models)
    L.seed_everything(0, verbose=False)
    initial = build_classifier(ModelConfig(name="mobilenet_v3_small", weights="none"), 2, None, 32)
    last = [f"backbone.{n}" for n in initial.layer_groups[-1]]
    assert any(not torch.equal(online[k], initial.state_dict()[k]) for k in last)
    assert (
        json.loads((runs["cached"].path / "summary.json").read_text())["phases"]["phase2"]["features"]["mode"]
        == "cached-prefix"
    )


def test_the_cli_says_which_mode_ran_and_reuses_the_cache(shapes, tmp_path, home, capsys):
    args = [*tiny_flags(), "--unfreeze", "2", "--phase2", "cached", "--phase2-epochs", "1"]
    assert main(["fit", str(shapes), *args, "--out", str(tmp_path / "a")]) == 0
    said = capsys.readouterr().out
    assert "frozen prefix cached (after " in said and "computed in" in said
    assert main(["fit", str(shapes), *args, "--out", str(tmp_path / "b")]) == 0
    assert "frozen prefix cached" in capsys.readouterr().out
    record = json.loads((tmp_path / "b" / "summary.json").read_text())["phases"]["phase2"]["features"]
    assert record["from_cache"] is True
    same = (
        load_file(str(tmp_path / "a" / "model.safetensors")),
        load_file(str(tmp_path / "b" / "model.safetensors")),
    )
    assert all(torch.equal(same[0][k], same[1][k]) for k in same[0])
    # another boundary is another cache: a stale one is never read
    assert (
        main(["fit", str(shapes), *args[:-6], "--unfreeze", "3", *args[-4:], "--out", str(tmp_path / "c")])
        == 0
    )
    assert len(list((home / "cache" / "prefix").iterdir())) == 4  # (train, val) x two boundaries


def test_a_corrupt_prefix_cache_is_computed_again(shapes, tmp_path, home, capsys):
    args = [*tiny_flags(), "--unfreeze", "2", "--phase2", "cached", "--phase2-epochs", "1"]
    assert main(["fit", str(shapes), *args, "--out", str(tmp_path / "a"), "--quiet"]) == 0
    for folder in (home / "cache" / "prefix").iterdir():
        (folder / "x.npy").write_bytes(b"not a numpy file")
    assert main(["fit", str(shapes), *args, "--out", str(tmp_path / "b")]) == 0
    captured = capsys.readouterr()
    assert "is corrupt" in captured.out + captured.err
    record = json.loads((tmp_path / "b" / "summary.json").read_text())["phases"]["phase2"]["features"]
    assert record["mode"] == "cached-prefix" and record["from_cache"] is False
    a, b = (
        load_file(str(tmp_path / "a" / "model.safetensors")),
        load_file(str(tmp_path / "b" / "model.safetensors")),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)
    for folder in (home / "cache" / "prefix").iterdir():
        assert np.load(folder / "x.npy").ndim == 2


class Branchy(nn.Module):
    """A backbone whose forward branches on the values of a tensor: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3)
        self.block = nn.Conv2d(4, 4, 3)
        self.top = nn.Conv2d(4, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        if x.mean() > 0:
            x = self.block(x)
        return self.top(x).mean((2, 3))


def test_a_model_that_cannot_be_cut_says_why():
    spec = ModelSpec("branchy", "torchvision", "branchy", "none", 2)
    groups = [["stem.weight", "stem.bias"], ["block.weight", "block.bias"], ["top.weight", "top.bias"]]
    pre = Preprocessing(size=16, resize_size=16, mean=(0.5,) * 3, std=(0.5,) * 3)
    model = Classifier(Branchy(), 8, groups, spec, pre)
    with pytest.raises(CannotSplit, match="does not trace with torch.fx"):
        prefix_split(model, PhasePlan("phase2", train="last:1", features="cached"))
    with pytest.raises(CannotSplit, match="fastai"):
        prefix_split(model, PhasePlan("phase2", train="last:1", bn_policy="fastai"))


def test_where_it_cannot_cut_the_phase_trains_online_and_records_why(
    shapes, tmp_path, home, monkeypatch, capsys
):
    def refuse(*args, **kwargs):
        raise CannotSplit("2 values cross the boundary")

    monkeypatch.setattr("thaw.train.prefix.split_backbone", refuse)
    config = tiny_config(shapes, tmp_path / "run", unfreeze="2", phase2_features="cached")
    result = thaw.fit(config)
    assert (
        "frozen prefix not cached (2 values cross the boundary); training online" in capsys.readouterr().out
    )
    assert result.summary.phases["phase2"].features == {
        "mode": "online",
        "reason": "2 values cross the boundary",
    }
    assert not (home / "cache" / "prefix").exists()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"unfreeze": "all"}, "train=all trains layer groups that are not the last N"),
        ({"unfreeze": "2", "bn_policy": "fastai"}, "bn_policy fastai"),
        ({"unfreeze": "2", "prefix_views": 0}, "views 0 must be 1"),
    ],
)
def test_a_cached_phase2_it_cannot_honour_is_refused(changes, message):
    config = override(thaw.RunConfig(), {"phase2_features": "cached", **changes})
    with pytest.raises(ThawError, match=message):
        plans_for(config)


@pytest.mark.slow  # two runs and a killed subprocess: about 30 s alone
def test_a_killed_cached_prefix_phase_resumes_where_it_stopped(tmp_path, home):
    from test_resume import ARGS, kill_and_resume, outcome, same_model

    data = make_class_folder(tmp_path / "shapes", per_class=14)
    args = [*ARGS[:-1], "--phase2", "cached", "--quiet"]
    assert main(["fit", str(data), *args, "--out", str(tmp_path / "whole")]) == 0
    kill_and_resume(data, args, tmp_path / "run", "phase2, mid-epoch 2", {**os.environ})
    assert outcome(tmp_path / "run") == outcome(tmp_path / "whole")
    assert same_model(tmp_path / "run", tmp_path / "whole")


def test_activation_loader_shards_like_the_image_loader():
    """Under DDP every rank trains and validates on its shard of the cached activations (the ranks together
    see the split once per epoch), and --balance sampler draws class-balanced, as the image loaders do."""
    from thaw.data import features as feature_cache
    from thaw.train.prefix import activation_loader

    labels = np.array([0] * 9 + [1] * 3)
    cached = feature_cache.Features(
        x=np.arange(12, dtype=np.float32).reshape(12, 1), labels=labels, keys=list("abcdefghijkl"), views=1
    )
    shape = (1,)

    def seen(**kw) -> list[int]:
        return [int(a) for x, _ in activation_loader(cached, shape, 4, **kw) for a in x.flatten()]

    for shuffle_seed in (None, 5):
        shards = [seen(seed=shuffle_seed, rank=rank, world=2) for rank in (0, 1)]
        assert len(shards[0]) == len(shards[1]) == 6 and sorted(shards[0] + shards[1]) == list(range(12))
    assert sorted(seen(seed=5)) == list(range(12))
    drawn = [int(labels[i]) for s in range(20) for i in seen(seed=s, balanced=True)]
    assert 0.35 < np.mean(drawn) < 0.65  # a quarter of the images are class 1; balanced draws give it half
