import pytest
import torch

from thaw.core.config import ModelConfig
from thaw.core.errors import ThawError
from thaw.models import build_classifier, load_model, save_model
from thaw.train.freeze import last_groups, set_trainable

FAMILIES = [
    ("resnet18", 64),
    ("mobilenet_v2", 64),
    ("mobilenet_v3_small", 64),
    ("efficientnet_b0", 64),
    ("vit_b_16", 32),
    ("convnext_tiny", 64),
    ("regnet_y_400mf", 64),
    ("densenet121", 64),
    ("swin_t", 64),
    ("timm/resnet18", 64),
    ("timm/tf_efficientnet_lite0", 64),
    ("timm/vit_tiny_patch16_224", 32),
    ("resnext50_32x4d", 32),
    ("wide_resnet50_2", 32),
    ("vit_b_32", 32),
    ("timm/deit_tiny_patch16_224", 32),
    ("timm/vit_small_patch14_dinov2", 28),  # DINOv2 ViT-S/14 at 2x2 patches
    pytest.param("efficientnet_v2_s", 32, marks=pytest.mark.slow),  # ~18 s: its first pass on 2 CPU cores
]


@pytest.mark.parametrize("name, size", FAMILIES)
def test_every_family_fits_the_contract(name, size):
    model = build_classifier(ModelConfig(name=name, weights="none"), num_classes=3, image_size=size)
    x = torch.randn(2, 3, size, size)
    features = model.backbone(x)
    assert features.shape == (2, model.num_features)
    logits = model(x)
    assert logits.shape == (2, 3)
    logits.sum().backward()  # forward and backward at a small resolution
    # layer groups partition the backbone's parameters: none missing, none twice
    names = [n for group in model.layer_groups for n in group]
    assert sorted(names) == sorted(n for n, _ in model.backbone.named_parameters())
    assert len(model.layer_groups) >= 3
    # unfreezing the last 2 groups makes exactly those (and the head) trainable
    set_trainable(model, last_groups(model, 2), "frozen")
    trainable = {n for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert trainable == set(model.layer_groups[-2] + model.layer_groups[-1])
    assert all(p.requires_grad for p in model.head.parameters())


def test_new_head_starts_at_zero_and_preprocessing_follows_weights():
    model = build_classifier(ModelConfig(name="timm/tf_efficientnet_lite0", weights="none"), 4, image_size=96)
    assert model.head[-1].weight.abs().sum() == 0
    assert model.preprocessing.mean == (0.5, 0.5, 0.5) and model.preprocessing.size == 96
    tv = build_classifier(ModelConfig(name="resnet18", weights="none"), 4)
    assert tv.preprocessing.mean == (0.485, 0.456, 0.406) and tv.preprocessing.size == 224


def test_local_weights_file_loads_strictly_and_reports_mismatches(tmp_path):
    import torchvision

    source = torchvision.models.resnet18(num_classes=10)
    path = tmp_path / "r18.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    model = build_classifier(ModelConfig(name="resnet18", weights=str(path)), 2)
    assert torch.equal(model.backbone.conv1.weight, source.conv1.weight)  # prefix stripped, fc ignored
    bad = tmp_path / "bad.pth"
    state = source.state_dict()
    state.pop("layer4.1.bn2.weight")
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, bad)
    with pytest.raises(ThawError, match=r"1 missing: layer4.1.bn2.weight; 1 unexpected: extra.weight"):
        build_classifier(ModelConfig(name="resnet18", weights=str(bad)), 2)


def test_pickled_code_is_never_executed(evil_pickle):
    with pytest.raises(ThawError, match="without running code"):
        build_classifier(ModelConfig(name="resnet18", weights=str(evil_pickle)), 2)


def test_unknown_model_suggests_names():
    with pytest.raises(ThawError, match="did you mean.*resnet18"):
        build_classifier(ModelConfig(name="resnet81", weights="none"), 2)
    with pytest.raises(ThawError, match="IMAGENET1K_V1"):
        build_classifier(ModelConfig(name="resnet18", weights="IMAGENET9K"), 2)


def test_offline_download_failure_says_where_to_put_the_file(monkeypatch, tmp_path):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache: torchvision must download
    import urllib.request

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    with pytest.raises(ThawError, match=r"resnet18-f37072fd.pth.*checkpoints"):
        build_classifier(ModelConfig(name="resnet18", weights="IMAGENET1K_V1"), 2)
    # when another weights file of the same model is on the machine, the message names it
    v1 = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True, exist_ok=True)
    torch.save(
        torchvision.models.mobilenet_v2().state_dict(),
        tmp_path / "hub" / "checkpoints" / v1.url.split("/")[-1],
    )
    with pytest.raises(
        ThawError, match="IMAGENET1K_V1 weights are on this machine: use --weights IMAGENET1K_V1"
    ):
        build_classifier(ModelConfig(name="mobilenet_v2", weights="DEFAULT"), 2)


def test_sum_first_conv_for_greyscale():
    rgb = build_classifier(ModelConfig(name="resnet18", weights="none"), 2, image_size=32)
    grey = build_classifier(ModelConfig(name="resnet18", weights="none", in_channels="sum"), 2, image_size=32)
    assert grey.backbone.conv1.in_channels == 1 and grey.spec.in_channels == 1
    assert grey.eval()(torch.randn(1, 1, 32, 32)).shape == (1, 2)
    assert len(grey.preprocessing.mean) == 1 and rgb.spec.in_channels == 3


def test_model_file_round_trip(tmp_path):
    model = build_classifier(ModelConfig(name="mobilenet_v3_small", weights="none"), 3, ["a", "b", "c"], 48)
    torch.nn.init.normal_(model.head[-1].weight)
    save_model(model.eval(), tmp_path / "model.safetensors")
    loaded = load_model(tmp_path)
    x = torch.randn(2, 3, 48, 48)
    assert torch.equal(model(x), loaded(x))
    assert loaded.class_names == ["a", "b", "c"] and loaded.preprocessing == model.preprocessing


def test_no_weight_decay_names_tokens_and_position_embeddings_of_the_backbone(tmp_path):
    tv = build_classifier(ModelConfig(name="vit_b_32", weights="none"), 2, image_size=32)
    assert tv.no_weight_decay == {"class_token", "encoder.pos_embedding"}  # torchvision: its family table
    vit = build_classifier(ModelConfig(name="timm/vit_tiny_patch16_224", weights="none"), 2, image_size=32)
    assert vit.no_weight_decay == {"cls_token", "pos_embed"}  # timm: the model's own no_weight_decay()
    assert vit.no_weight_decay <= dict(vit.backbone.named_parameters()).keys()
    save_model(vit, tmp_path / "model.safetensors")
    assert load_model(tmp_path).no_weight_decay == vit.no_weight_decay
    assert build_classifier(ModelConfig(name="resnet18", weights="none"), 2).no_weight_decay == frozenset()
