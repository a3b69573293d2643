import pytest

from thaw.config import RunConfig, override, unfreeze_groups
from thaw.errors import ThawError


def test_yaml_round_trip(tmp_path):
    config = override(RunConfig(), {"data.path": "x", "lr": 3e-4, "phase2.epochs": 2, "unfreeze": "2"})
    path = tmp_path / "config.yaml"
    path.write_text(config.to_yaml())
    assert RunConfig.from_yaml(path) == config


def test_override_skips_none_and_keeps_others():
    config = override(RunConfig(), {"lr": None, "seed": 7})
    assert config.lr == RunConfig().lr and config.seed == 7


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"lr": 0.0}, "--lr"),
        ({"lr_ratio": 0.5}, "--lr-ratio"),
        ({"unfreeze": "some"}, "--unfreeze"),
        ({"bn_policy": "magic"}, "frozen, train, fastai"),
        ({"phase1.epochs": 0, "phase2.epochs": 0}, "nothing to train"),
        ({"data.image_size": 4}, "--image-size"),
        ({"data.val_fraction": 0.6, "data.test_fraction": 0.5}, "sum < 1"),
    ],
)
def test_bad_values_name_the_setting(changes, message):
    with pytest.raises(ThawError, match=message):
        override(RunConfig(), changes).validate()


def test_unknown_and_mistyped_yaml_keys(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("phase1:\n  epoch: 3\n")
    with pytest.raises(ThawError, match="unknown setting.*epoch.*valid: epochs"):
        RunConfig.from_yaml(bad)
    bad.write_text("lr: fast\n")
    with pytest.raises(ThawError, match="lr = 'fast' must be of type float"):
        RunConfig.from_yaml(bad)


def test_unfreeze_groups():
    assert unfreeze_groups("all") is None
    assert unfreeze_groups("3") == 3
    with pytest.raises(ThawError):
        unfreeze_groups("0")
