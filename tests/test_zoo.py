"""The model catalogue behind `thaw models`: metadata, GFLOPs at 224, filters, the offline column."""

import json

import pytest

from thaw.cli import main
from thaw.core.errors import ThawError
from thaw.models import zoo
from thaw.models.zoo import parse_count


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """One THAW_HOME for the module: its count cache fills once."""
    return tmp_path_factory.mktemp("thaw_home")


@pytest.fixture(autouse=True)
def isolated(home, monkeypatch):
    monkeypatch.setenv("THAW_HOME", str(home))


def by_name(rows):
    return {r.name: r for r in rows}


def built_params(row) -> int:
    """The oracle: the row's model built here, on the meta device, with its library's own constructor (not
    thaw's adapters or count cache), and its parameters counted."""
    from unittest import mock

    import timm
    import torch
    import torchvision

    def build():
        if row.source == "torchvision":  # a ViT's position embeddings: at its weights' size (vit_h_14: 518)
            size = {"image_size": row.input_size} if row.name.startswith("vit_") else {}
            return torchvision.models.get_model(row.name, **size)
        return timm.create_model(row.name.removeprefix("timm/"), pretrained=False)

    try:
        with torch.device("meta"):
            model = build()
    except NotImplementedError:  # RegNet computes its widths with tensors: each parameter moves to meta
        register = torch.nn.Module.register_parameter

        def on_meta(self, name, param):
            meta = None if param is None else torch.nn.Parameter(param.to("meta"), param.requires_grad)
            register(self, name, meta)

        with mock.patch.object(torch.nn.Module, "register_parameter", on_meta):
            model = build()
    return sum(p.numel() for p in model.parameters())


def published(row) -> tuple:
    """torchvision's own metadata for the row's weights: parameters, top-1, top-5, file size."""
    from torchvision.models import get_model_weights

    meta = get_model_weights(row.name)[row.weights].meta
    metrics = meta["_metrics"]["ImageNet-1K"]
    return meta["num_params"], metrics["acc@1"], metrics["acc@5"], meta["_file_size"]


def test_rows_carry_torchvision_metadata_and_timm_counts():
    rows = by_name(zoo.catalogue(family="resnet"))
    r18 = rows["resnet18"]
    assert (r18.family, r18.source, r18.params, r18.input_size) == ("resnet", "torchvision", 11689512, 224)
    assert (r18.top1, r18.top5, r18.gflops, r18.file_mb) == (69.758, 89.078, 1.814, 44.661)
    timm18 = rows["timm/resnet18"]  # counted on the meta device; accuracy from timm's results table
    assert (timm18.source, timm18.params, timm18.gflops, timm18.top1) == ("timm", 11689512, 1.814, 73.158)
    for row in rows.values():  # every resnet row against a model built here and torchvision's metadata
        assert row.params == built_params(row), row.name
        if row.source == "torchvision":
            assert (row.params, row.top1, row.top5, row.file_mb) == published(row), row.name
    assert "resnext50_32x4d" not in rows and "wide_resnet50_2" not in rows  # families of their own


@pytest.mark.slow  # counts every row once (about 10 s on 2 busy cores); later calls read the cache
def test_every_family_is_listed_with_its_figures():
    everything = zoo.catalogue()
    families = {r.family for r in everything}
    expected = (
        "resnet resnext wide_resnet efficientnet efficientnet_v2 efficientnet_lite mobilenet_v2 "
        "mobilenet_v3 convnext regnet vit swin densenet deit dinov2"
    ).split()
    assert set(expected) <= families
    assert all(r.params > 0 and r.gflops and r.gflops > 0 and r.input_size > 0 for r in everything)
    assert [r.name for r in everything if r.params != built_params(r)] == []
    assert [r.name for r in everything if r.source == "torchvision" and r.top1 != published(r)[1]] == []
    dino = by_name(everything)["timm/vit_small_patch14_dinov2"]
    assert dino.top1 is None and dino.input_size == 518 and dino.params == 22056192


def test_gflops_are_counted_at_224_for_every_row():
    # the meta-device count reproduces torchvision's published figures at 224 px...
    assert zoo.count("torchvision", "resnet50") == (25557032, pytest.approx(4.089, abs=1e-3))
    assert zoo.count("torchvision", "vit_b_16")[1] == pytest.approx(17.564, abs=1e-3)
    # ...and rows whose weights were measured at another size are counted at 224
    b1 = by_name(zoo.catalogue(family="efficientnet"))["efficientnet_b1"]
    assert b1.input_size == 240 and b1.gflops == pytest.approx(0.570, abs=1e-3)  # 0.687 at 240 px
    vit_h = by_name(zoo.catalogue(family="vit"))["vit_h_14"]
    assert vit_h.input_size == 518 and vit_h.gflops == pytest.approx(167.295, abs=1e-3)


def test_counts_are_cached_per_version(home, monkeypatch):
    zoo.catalogue(family="efficientnet_lite")
    cache = json.loads((home / "cache" / "zoo.json").read_text())
    assert "timm/tf_efficientnet_lite0" in cache["counts"] and cache["versions"]

    def no_counting(*args):
        raise AssertionError("counted again")

    monkeypatch.setattr(zoo, "count", no_counting)
    assert by_name(zoo.catalogue(family="efficientnet_lite"))["timm/tf_efficientnet_lite0"].params == 4652008


def test_filters_and_sorting():
    rows = zoo.catalogue(family="efficientnet", max_params=6_000_000, sort="top1")
    names = [r.name for r in rows]
    assert "timm/tf_efficientnet_lite0" in names and "efficientnet_b0" in names
    assert "efficientnet_b1" not in names and all(r.params <= 6_000_000 for r in rows)
    top1 = [r.top1 for r in rows]
    assert top1 == sorted(top1, reverse=True)
    assert {r.source for r in zoo.catalogue(family="timm")} == {"timm"}
    params = [r.params for r in zoo.catalogue(family="mobilenet", sort="params")]
    assert params == sorted(params) and len(params) >= 4
    vit = [r.name for r in zoo.catalogue(family="vit", sort="name")]
    assert vit[:3] == ["timm/vit_tiny_patch16_224", "vit_b_16", "vit_b_32"] and "vit_h_14" in vit
    with pytest.raises(ThawError, match="families: .*convnext"):
        zoo.catalogue(family="alexnet")
    with pytest.raises(ThawError, match="--sort 'speed' is not one of"):
        zoo.catalogue(sort="speed")


def test_offline_column_follows_the_files_on_this_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty torch cache
    mobilenet = by_name(zoo.catalogue(family="mobilenet_v2"))["mobilenet_v2"]
    assert not mobilenet.offline and mobilenet.weights == "IMAGENET1K_V2"  # the default, not here
    assert zoo.catalogue(family="mobilenet_v2", offline_only=True) == []
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "mobilenet_v2-b0353104.pth").write_bytes(b"")  # torchvision looks for the name only
    mobilenet = by_name(zoo.catalogue(family="mobilenet_v2", offline_only=True))["mobilenet_v2"]
    assert mobilenet.offline and mobilenet.weights == "IMAGENET1K_V1" and mobilenet.top1 == 71.878


def test_cli_table_json_and_errors(capsys):
    assert main(["models", "--family", "mobilenet_v3", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    names = {r["name"] for r in rows}
    assert names == {"mobilenet_v3_small", "mobilenet_v3_large", "timm/mobilenetv3_large_100"}
    assert set(rows[0]) == {
        "name",
        "family",
        "source",
        "params",
        "gflops",
        "top1",
        "top5",
        "input_size",
        "weights",
        "file_mb",
        "offline",
    }
    assert main(["models", "--family", "mobilenet_v3", "--sort", "gflops"]) == 0
    table = capsys.readouterr().out
    assert "mobilenet_v3_small" in table and "GFLOPs" in table and "3 models" in table
    assert table.index("mobilenet_v3_small") < table.index("mobilenet_v3_large")
    assert main(["models", "--family", "alexnet"]) == 2
    assert "thaw: error: --family 'alexnet' matches no model" in capsys.readouterr().err
    assert main(["models", "--max-params", "lots"]) == 2


def test_parse_count():
    assert parse_count("25M") == 25_000_000 and parse_count("500k") == 500_000
    assert parse_count("25") == 25_000_000 and parse_count("2.5e7") == 25_000_000
    with pytest.raises(ThawError, match="--max-params 'lots'"):
        parse_count("lots")
