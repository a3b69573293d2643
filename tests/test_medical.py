"""Medical inputs and metrics: 16-bit PNGs, DICOM, MedMNIST label shapes, the validation threshold,
bootstrap intervals, calibration, class balance, the monitored metric and training-set statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_class_folder, tiny_config, tiny_flags
from PIL import Image

from thaw.cli import main
from thaw.core.config import RunConfig, override
from thaw.core.errors import ThawError
from thaw.core.preprocessing import Preprocessing
from thaw.core.results import Metrics, RunSummary, choose_final
from thaw.data.decoded import Decoded, load_image
from thaw.data.images import EpochSampler, class_weights, dataset_statistics, decode_sources, sample_weights
from thaw.data.sources import Item, discover
from thaw.metrics.bootstrap import bootstrap_ci, percentile_intervals
from thaw.metrics.classification import classification_metrics
from thaw.metrics.clinical import choose_threshold

PRE = Preprocessing(32, 32, (0.5,) * 3, (0.25,) * 3)


# ----------------------------------------------------------------------------- inputs


def write_png16(path: Path, top: int = 4095) -> None:
    """A real 16-bit greyscale PNG (a 12-bit ramp), written by Pillow and read back as I;16."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ramp = np.tile(np.linspace(0, top, 40).astype(np.uint16), (40, 1))
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I;16") or Image.open(path).mode == "I"


def test_a_16_bit_png_is_scaled_not_clipped_and_a_mixed_folder_is_reported(tmp_path):
    data = make_class_folder(tmp_path / "d", per_class=4)
    write_png16(data / "red" / "scan16.png")
    img, deep = load_image(Item(str(data / "red" / "scan16.png"), 0), 1)
    grey = np.asarray(img)
    assert deep and grey.min() == 0 and grey.max() == 255 and abs(grey.mean() - 127.5) < 3
    assert np.asarray(Image.open(data / "red" / "scan16.png").convert("L")).mean() > 200  # Pillow: white
    warnings = []
    sources = discover(override(RunConfig(), {"data.path": str(data), "data.val_fraction": 0.25}).data)
    decode_sources(sources, PRE, 3, warn=warnings.append)
    assert len(warnings) == 1 and "1 of 9 images have more than 8 bits" in warnings[0]
    assert "scan16.png" in warnings[0]


def write_dicom(path: Path, pixels: np.ndarray, slope=1.0, intercept=0.0, with_pixels=True) -> None:
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT image storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    if with_pixels:
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.PixelData = pixels.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True) if pydicom.__version__ >= "3" else ds.save_as(str(path))


def test_dicom_rescale_and_window(tmp_path):
    # stored 0..2000, slope 1, intercept -1000: -1000..1000 HU; window 0,200 maps -100 HU -> 0, 100 -> 255
    pixels = np.tile(np.linspace(0, 2000, 64).astype(np.uint16), (16, 1))
    write_dicom(tmp_path / "ct.dcm", pixels, intercept=-1000.0)
    full, deep = load_image(Item(str(tmp_path / "ct.dcm"), 0), 1)
    assert deep and np.asarray(full).min() == 0 and np.asarray(full).max() == 255
    windowed = np.asarray(load_image(Item(str(tmp_path / "ct.dcm"), 0), 1, window=(0.0, 200.0))[0])
    hu = pixels[0].astype(float) - 1000
    expected = np.round((np.clip(hu, -100, 100) + 100) * 255 / 200)
    assert np.array_equal(windowed[0], expected.astype(np.uint8))


def test_a_dicom_without_pixel_data_is_named_with_its_reason(tmp_path, capsys):
    data = make_class_folder(tmp_path / "d", per_class=6)
    write_dicom(data / "red" / "report.dcm", np.zeros((4, 4)), with_pixels=False)
    out = tmp_path / "strict"
    assert main(["fit", str(data), *tiny_flags(), "--strict-images", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "report.dcm" in err and "no pixel data" in err and not out.exists()
    with pytest.raises(ValueError, match="no pixel data"):
        load_image(Item(str(data / "red" / "report.dcm"), 0), 3)


def test_bad_dicom_window_is_one_line():
    with pytest.raises(ThawError, match="CENTER,WIDTH"):
        override(RunConfig(), {"data.dicom_window": "40"}).validate()
    with pytest.raises(ThawError, match="positive"):
        override(RunConfig(), {"data.dicom_window": "40,-1"}).validate()


def npz(path: Path, labels: dict, images=None, dtype=np.uint8) -> Path:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, y in labels.items():
        n = len(y)
        arrays[f"{split}_images"] = (
            images if images is not None else rng.integers(0, 200, (n, 28, 28)).astype(dtype)
        )
        arrays[f"{split}_labels"] = y
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("shape", [(12,), (12, 1)])
def test_npz_labels_of_shape_n_and_n1(tmp_path, shape):
    y = np.array([0, 1] * 6).reshape(shape)
    path = npz(tmp_path / "m.npz", {"train": y, "val": y, "test": y})
    sources = discover(override(RunConfig(), {"data.path": str(path)}).data)
    assert sources.class_names == ["0", "1"] and len(sources.split("test")) == 12


def test_npz_bad_shapes_are_one_line(tmp_path):
    y = np.array([0, 1] * 6)
    multi = npz(tmp_path / "multi.npz", {"train": np.stack([y, y], 1), "val": y})  # (N, 2) and (N,)
    with pytest.raises(ThawError, match=r"disagree on the labels per image \(train_labels \(N, 2\)"):
        discover(override(RunConfig(), {"data.path": str(multi)}).data)
    short = npz(tmp_path / "short.npz", {"train": y[:10], "val": y}, images=np.zeros((12, 28, 28), np.uint8))
    with pytest.raises(ThawError, match="12 images but train_labels 10 labels"):
        discover(override(RunConfig(), {"data.path": str(short)}).data)
    volume = npz(tmp_path / "vol.npz", {"train": y, "val": y}, images=np.zeros((12, 8, 28, 28), np.uint8))
    with pytest.raises(ThawError, match="volumes"):
        discover(override(RunConfig(), {"data.path": str(volume)}).data)


def test_npz_of_16_bit_images_is_scaled_per_image(tmp_path):
    y = np.array([0, 1] * 6)
    path = npz(tmp_path / "m16.npz", {"train": y, "val": y}, dtype=np.uint16)
    sources = discover(override(RunConfig(), {"data.path": str(path)}).data)
    img, deep = load_image(sources.items[0], 1)
    assert deep and np.asarray(img).max() == 255


# ----------------------------------------------------------------------------- metrics


def test_youden_threshold_and_target_sensitivity():
    p1 = np.array([0.1, 0.2, 0.3, 0.35, 0.4, 0.6, 0.7, 0.8])
    y = np.array([0, 0, 0, 1, 0, 1, 1, 1])
    assert choose_threshold(p1, y) in (0.35, 0.6)  # both give J = 0.75
    assert choose_threshold(p1, y, target_sensitivity=1.0) == 0.35
    assert choose_threshold(p1, np.ones(8, int)) == 0.5


def test_metrics_at_a_threshold_and_their_bootstrap_intervals():
    probs = torch.tensor([[0.9, 0.1], [0.7, 0.3], [0.45, 0.55], [0.4, 0.6], [0.2, 0.8], [0.6, 0.4]])
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    m = classification_metrics(probs, labels, threshold=0.35)  # predicts 0, 0, 1, 1, 1, 1
    assert m.confusion == [[2, 1], [0, 3]] and m.sensitivity == 1.0 and m.specificity == pytest.approx(2 / 3)
    assert m.threshold == 0.35 and 0 <= m.ece <= 1
    ci = bootstrap_ci(probs, labels, 0.35, n=200, seed=1)
    assert ci == bootstrap_ci(probs, labels, 0.35, n=200, seed=1)  # seeded
    for key in ("accuracy", "auc", "sensitivity", "specificity"):
        assert ci[key][0] <= getattr(m, key) <= ci[key][1]


@pytest.mark.parametrize("classes, ties, threshold", [(2, False, 0.35), (2, True, None), (4, True, None)])
def test_bootstrap_intervals_are_those_of_indexing_each_resample(classes, ties, threshold):
    """The oracle: each resample drawn as indices (the same seeded draws), its metrics recomputed from the
    resampled rows with scikit-learn (roc_auc_score, recall, F1): thaw's weighted sums give the same
    percentile intervals to the last digit kept."""
    from sklearn.metrics import f1_score, recall_score, roc_auc_score

    rng = np.random.default_rng(classes)
    p = rng.random((40, classes))
    p = np.round(p, 1) + 1e-3 if ties else p  # many tied scores: the AUC counts ties half
    p = p / p.sum(1, keepdims=True)
    y = rng.integers(0, classes, 40)
    cut = 0.5 if threshold is None else threshold
    pred = (p[:, 1] >= cut).astype(int) if classes == 2 else p.argmax(1)
    draws = np.random.default_rng(3)
    rows = {k: [] for k in ("accuracy", "balanced_accuracy", "macro_f1", "auc", "sensitivity", "specificity")}
    for _ in range(60):
        i = draws.integers(0, 40, 40)
        yy, pp = y[i], pred[i]
        recalls = [np.mean(pp[yy == c] == c) if (yy == c).any() else np.nan for c in range(classes)]
        rows["accuracy"].append(np.mean(yy == pp))
        rows["balanced_accuracy"].append(np.nanmean(recalls))
        rows["macro_f1"].append(f1_score(yy, pp, labels=range(classes), average="macro", zero_division=0))
        if len(set(yy)) == classes:
            score = p[i, 1] if classes == 2 else p[i]
            rows["auc"].append(roc_auc_score(yy, score, multi_class="ovr", average="macro"))
        if classes == 2:
            rows["sensitivity"].append(recall_score(yy, pp, pos_label=1, zero_division=np.nan))
            rows["specificity"].append(recall_score(yy, pp, pos_label=0, zero_division=np.nan))
    expected = percentile_intervals({k: [float(v) for v in vs] for k, vs in rows.items()})
    got = bootstrap_ci(torch.tensor(p), torch.tensor(y), threshold, n=60, seed=3)
    assert got.keys() == expected.keys()
    for key, interval in expected.items():
        assert got[key] == pytest.approx(interval, abs=1e-4), key


def test_old_summaries_without_the_new_metrics_still_read():
    raw = {
        "n": 3,
        "accuracy": 1.0,
        "balanced_accuracy": 1.0,
        "macro_f1": 1.0,
        "auc": None,
        "loss": 0.1,
        "confusion": [[1, 0], [0, 2]],
    }
    m = Metrics.from_dict(raw)
    assert m.auc != m.auc and m.ece != m.ece and m.ci == {}


def test_choose_final_follows_the_monitored_metric():
    def metrics(acc, auc):
        return Metrics(10, acc, acc, acc, auc, 0.5, [[1]])

    from thaw.core.results import PhaseResult

    def phase(name, acc, auc):
        return PhaseResult(name, 1, 1, False, 0.0, 0.0, 0.0, 0.0, [], "0/1", 0, metrics(acc, auc))

    results = {"phase1": phase("phase1", 0.9, 0.80), "phase2": phase("phase2", 0.85, 0.95)}
    assert choose_final(results) == "phase1"
    assert choose_final(results, "val_auc") == "phase2"


# ----------------------------------------------------------------------------- balance and statistics


def test_class_weights_sampler_and_statistics():
    labels = [0] * 2 + [1] * 8
    assert torch.allclose(class_weights(labels, 2), torch.tensor([2.5, 0.625]))
    sampler = EpochSampler(10, seed=3, weights=sample_weights(labels))
    sampler.set_epoch(4)
    first = list(sampler)
    again = EpochSampler(10, seed=3, weights=sample_weights(labels))
    again.set_epoch(4)
    assert first == list(again)  # a function of (seed, epoch): a resume draws the same
    many = EpochSampler(10_000, seed=0, weights=sample_weights([0] * 2000 + [1] * 8000))
    drawn = torch.tensor([i for i, _ in many])
    assert abs(float((drawn < 2000).float().mean()) - 0.5) < 0.03
    images = [torch.full((1, 2, 2), 0, dtype=torch.uint8), torch.full((1, 2, 2), 255, dtype=torch.uint8)]
    mean, std = dataset_statistics(Decoded(["a", "b"], images, [0, 1]))
    assert mean == (0.5,) and std == pytest.approx((0.5,), abs=1e-6)


def test_a_run_with_the_medical_options(tmp_path, capsys):
    data = make_class_folder(tmp_path / "d", per_class=16)
    out = tmp_path / "run"
    args = ["fit", str(data), *tiny_flags(), "--monitor", "val_auc", "--balance", "loss"]
    args += ["--val-fraction", "0.35"]  # 5 or more validation images of each class: a threshold is chosen
    assert main([*args, "--normalize", "dataset", "--tta", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "saved model at threshold" in printed and "95% bootstrap" in printed
    summary = RunSummary.read(out)
    op = summary.operating
    assert op.tta and op.threshold is not None and "Youden" in op.rule
    assert op.test is not None and set(op.test.ci) >= {"auc", "accuracy", "sensitivity"}
    assert (out / "reliability.png").is_file()
    rows = (out / "metrics.csv").read_text().splitlines()
    assert "val_auc" in rows[0]
    from thaw.use.predictor import Predictor

    predictor = Predictor.load(out)  # the model file keeps the training set's statistics and the threshold
    assert predictor.preprocessing.mean != (0.485, 0.456, 0.406)
    assert predictor.threshold == pytest.approx(op.threshold)
    from thaw.use.export import export_run

    assert export_run(out).metadata["threshold"] == pytest.approx(op.threshold)  # and thaw predict model.onnx


def test_sampler_balance_runs_and_resume_config_round_trips(tmp_path):
    import thaw

    config = tiny_config(tmp_path / "d", tmp_path / "run", balance="sampler", monitor="val_balanced_accuracy")
    make_class_folder(tmp_path / "d", per_class=8)
    result = thaw.fit(config, quiet=True)
    loaded = RunConfig.from_yaml(result.path / "config.yaml")
    assert loaded.balance == "sampler" and loaded.monitor == "val_balanced_accuracy"


def test_a_csv_with_several_label_columns_is_multi_label(tmp_path):
    from thaw.data.sources import FINDERS

    make_class_folder(tmp_path / "d", per_class=2)
    (tmp_path / "d" / "labels.csv").write_text("path,Effusion,nodule\nred/red_0.png,1,0\nred/red_1.png,0,1\n")
    sources = FINDERS["csv"](tmp_path / "d" / "labels.csv")
    assert sources.multilabel and sources.class_names == ["Effusion", "nodule"]
    assert [it.label for it in sources.items] == [(1, 0), (0, 1)]
    (tmp_path / "d" / "one.csv").write_text("path,effusion\nred/red_0.png,1\n")  # one column: not multi-label
    with pytest.raises(ThawError, match="needs a header with columns path,label"):
        FINDERS["csv"](tmp_path / "d" / "one.csv")
