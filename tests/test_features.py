"""The feature cache and the head solved on it: exact hand-off to phase 2, invalidation, bad caches."""

import os

import numpy as np
import pytest
import torch
from conftest import tiny_config

import thaw
from thaw.core.config import ModelConfig
from thaw.data import decode_sources, discover, eval_transform
from thaw.data import features as cache
from thaw.models import build_classifier
from thaw.train.head_solver import solve_head


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("THAW_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


tiny = tiny_config


def model_and_items(folder):
    sources = discover(thaw.DataConfig(path=str(folder), image_size=32))
    torch.manual_seed(0)
    model = build_classifier(ModelConfig("mobilenet_v3_small", "none"), 2, sources.class_names, 32)
    decoded = decode_sources(sources, model.preprocessing, 3)
    return model, sources, decoded


def extract(model, sources, decoded, split="train", **kw):
    pre = model.preprocessing
    return cache.features(
        model.backbone,
        sources.split(split),
        eval_transform(pre),
        {"kind": "eval"},
        pre,
        3,
        decoded=decoded[split],
        **kw,
    )


def test_phase2_starts_from_exactly_the_solved_head(class_folder, tmp_path, home):
    """The model after cached phase 1 predicts what the solved head predicts on the cached features."""
    from thaw.core.run_log import Reporter
    from thaw.metrics.classification import classification_metrics
    from thaw.train.probabilities import probabilities
    from thaw.train.recipe import Loaders

    config = tiny(class_folder, tmp_path / "run", **{"phase2.epochs": 0})
    result = thaw.fit(config, quiet=True)
    p1 = result.summary.phases["phase1"]
    assert p1.solver["mode"] == "cached" and p1.solver["l2"] in [c["l2"] for c in p1.curve]
    loaders = Loaders(discover(config.data), result.model, config, Reporter(True))
    probs, labels = probabilities(result.model, loaders.val)  # the full model: backbone, then head
    assert classification_metrics(probs, labels) == p1.val  # the same metrics as on the cached features
    features = extract(result.model, loaders.sources, loaders.decoded, "val")
    head_probs = result.model.head.eval()(features.tensor()).softmax(1)
    assert torch.allclose(probs, head_probs, atol=1e-5)


def test_cache_is_reused_and_keyed_by_what_the_features_depend_on(class_folder, home):
    model, sources, decoded = model_and_items(class_folder)
    first = extract(model, sources, decoded)
    assert not first.cached and first.x.shape == (len(decoded["train"].images), model.num_features)
    again = extract(model, sources, decoded)
    assert again.cached and np.array_equal(again.x, first.x) and again.keys == first.keys
    # another image file content (its mtime and size change): another key, computed anew
    path = decoded["train"].keys[0]
    os.utime(path, ns=(1, 1))
    assert not extract(model, sources, decoded).cached
    # other weights: another key
    with torch.no_grad():
        next(model.backbone.parameters()).add_(1.0)
    assert not extract(model, sources, decoded).cached
    # views: K augmented views per image, reproducible
    pre = model.preprocessing
    from thaw.data import train_transform

    views = cache.features(
        model.backbone,
        sources.split("train"),
        train_transform(pre, thaw.DataConfig()),
        {"kind": "train"},
        pre,
        3,
        views=3,
        seed=5,
        decoded=decoded["train"],
    )
    assert (
        views.x.shape[0] == 3 * len(decoded["train"].images)
        and views.labels.tolist()[:3] == [views.labels[0]] * 3
    )
    assert not np.array_equal(views.x[0], views.x[1])  # different crops of one image


def test_half_written_and_corrupt_caches_are_rebuilt(class_folder, home):
    model, sources, decoded = model_and_items(class_folder)
    first = extract(model, sources, decoded)
    folder = next(p for p in cache.cache_root().iterdir() if p.is_dir())
    (folder / "meta.json").unlink()  # as if killed before the end
    assert not extract(model, sources, decoded).cached
    np.save(folder / "labels.npy", np.zeros(3, dtype=np.int64))  # corrupt: rows and labels disagree
    warnings = []
    rebuilt = extract(model, sources, decoded, warn=warnings.append)
    assert not rebuilt.cached and "corrupt" in warnings[0] and np.array_equal(rebuilt.x, first.x)


def test_unwritable_cache_is_one_clear_error(class_folder, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("THAW_HOME", str(blocker))  # the cache would go under a regular file
    model, sources, decoded = model_and_items(class_folder)
    with pytest.raises(thaw.ThawError, match="cannot write the feature cache.*--phase1 online"):
        extract(model, sources, decoded)


def test_solver_converges_to_sklearn_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 20)) + np.repeat(np.eye(3, 20) * 1.5, 100, axis=0)
    y = np.repeat(np.arange(3), 100)
    xt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    solution = solve_head(xt, yt, xt, yt, 3, grid=(1e-2,))
    # the same objective in scikit-learn's terms: C = 1 / (n * l2) on centred, globally scaled features
    mean = x.mean(0)
    scale = np.sqrt(((x - mean) ** 2).sum(1).mean() / x.shape[1])
    reference = LogisticRegression(C=1 / (300 * 1e-2), max_iter=5000, tol=1e-10).fit((x - mean) / scale, y)
    ours = (xt @ solution.weight.T + solution.bias).softmax(1).numpy()
    assert np.abs(ours - reference.predict_proba((x - mean) / scale)).max() < 1e-3
