"""Multi-label data: discovery of (N, K) .npz labels and CSVs of 0/1 columns, the sigmoid/BCE head (solved
and trained), per-label AUC and thresholds, predict/evaluate/export/report, budgets, compare and curve, and
the settings refused in one line. The synthetic task: label k is present iff a blob of colour k is drawn
in region k of the image."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config, tiny_flags
from PIL import Image

from thaw.cli import main
from thaw.core.config import RunConfig, override
from thaw.core.errors import ThawError
from thaw.data.budget import apply_budget
from thaw.data.sources import discover, strata

NAMES = ("effusion", "nodule", "mass")
BLOB_COLOURS = ((230, 40, 40), (40, 220, 60), (50, 70, 235))
REGIONS = ((0, 0), (0, 16), (16, 8))  # the top-left corner of each label's 16 x 16 region
SPLIT_SIZES = {"train": 72, "val": 24, "test": 24}


def blob_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` 32 px RGB images on noise and their (n, 3) labels: label k (present with probability 0.4)
    iff a 10 px square of colour k lies in region k."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, len(NAMES))) < 0.4).astype(np.int64)
    images = rng.integers(0, 70, size=(n, 32, 32, 3), dtype=np.uint8)
    for i in range(n):
        for k, (top, left) in enumerate(REGIONS):
            if labels[i, k]:
                a, b = rng.integers(0, 7, size=2)
                images[i, top + a : top + a + 10, left + b : left + b + 10] = BLOB_COLOURS[k]
    return images, labels


def make_npz(path: Path, names: bool = False) -> Path:
    arrays = {}
    for seed, (split, n) in enumerate(SPLIT_SIZES.items()):
        images, labels = blob_images(n, seed)
        assert labels.sum(0).min() > 0  # every label has positives in every split
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    if names:
        arrays["label_names"] = np.array(NAMES)
    np.savez(path, **arrays)
    return path


def make_csv(root: Path, split_column: bool = True) -> Path:
    """The same task as PNG files and a ``path,effusion,nodule,mass[,split]`` CSV."""
    lines = ["path," + ",".join(NAMES) + (",split" if split_column else "")]
    for seed, (split, n) in enumerate(SPLIT_SIZES.items()):
        images, labels = blob_images(n, seed)
        for i in range(n):
            name = f"{split}/{i}.png"
            (root / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i]).save(root / name)
            values = ",".join(str(v) for v in labels[i])
            lines.append(f"{name},{values}" + (f",{split}" if split_column else ""))
    (root / "findings.csv").write_text("\n".join(lines) + "\n")
    return root / "findings.csv"


def data_config(path: Path, **changes):
    return override(RunConfig(), {"data.path": str(path), **changes}).data


@pytest.fixture(scope="module")
def npz_run(tmp_path_factory):
    import thaw

    root = tmp_path_factory.mktemp("multilabel")
    data = make_npz(root / "chest.npz", names=True)
    return data, thaw.fit(tiny_config(data, root / "run"), quiet=True)


# ----------------------------------------------------------------------------- discovery


def test_npz_with_n_k_labels_is_multi_label_with_its_label_names(tmp_path):
    sources = discover(data_config(make_npz(tmp_path / "named.npz", names=True)))
    assert sources.multilabel and sources.class_names == list(NAMES)
    assert len(sources.split("test")) == 24
    assert all(len(it.label) == 3 and set(it.label) <= {0, 1} for it in sources.items)
    plain = discover(data_config(make_npz(tmp_path / "plain.npz")))
    assert plain.class_names == ["label_0", "label_1", "label_2"]


def test_npz_multi_label_values_and_shapes_are_checked_in_one_line(tmp_path):
    images, labels = blob_images(12, 0)
    bad = labels.copy()
    bad[3, 1] = 2
    np.savez(
        tmp_path / "bad.npz", train_images=images, train_labels=bad, val_images=images, val_labels=labels
    )
    with pytest.raises(ThawError, match=r"bad\.npz: train_labels .*must be 0 or 1; found 2"):
        discover(data_config(tmp_path / "bad.npz"))
    np.savez(
        tmp_path / "mixed.npz",
        train_images=images,
        train_labels=labels,
        val_images=images,
        val_labels=labels[:, 0],
    )
    with pytest.raises(ThawError, match="disagree on the labels per image"):
        discover(data_config(tmp_path / "mixed.npz"))
    np.savez(
        tmp_path / "names.npz",
        train_images=images,
        train_labels=labels,
        val_images=images,
        val_labels=labels,
        label_names=np.array(["a", "b"]),
    )
    with pytest.raises(ThawError, match="label_names holds 2 name"):
        discover(data_config(tmp_path / "names.npz"))


def test_csv_of_0_1_columns_is_multi_label_and_a_bad_value_names_line_and_column(tmp_path):
    path = make_csv(tmp_path / "d")
    sources = discover(data_config(path))
    assert sources.multilabel and sources.class_names == list(NAMES)
    assert [len(sources.split(s)) for s in ("train", "val", "test")] == [72, 24, 24]
    text = path.read_text().splitlines()
    text[5] = text[5].replace(",1,", ",yes,", 1) if ",1," in text[5] else text[5].replace(",0,", ",yes,", 1)
    path.write_text("\n".join(text) + "\n")
    with pytest.raises(ThawError, match=r"findings\.csv, line 6: column '.*' holds 'yes'; .*0 or 1"):
        discover(data_config(path))


def test_a_split_made_for_multi_label_data_spreads_every_label(tmp_path):
    assert strata([(1, 0, 1), (0, 0, 0), (1, 1, 0), (1, 0, 0)]) == [2, 3, 1, 0]  # label 0 is the commonest
    path = make_csv(tmp_path / "d", split_column=False)
    sources = discover(data_config(path, **{"data.split_seed": 3}))
    assert sources.split_origin == "stratified"
    for split in ("train", "val", "test"):
        positives = np.asarray([it.label for it in sources.split(split)]).sum(0)
        assert positives.min() > 0, (split, positives)
    again = discover(data_config(path, **{"data.split_seed": 3}))
    assert [it.split for it in again.items] == [it.split for it in sources.items]


def test_label_fraction_keeps_a_seeded_share_and_labels_per_class_is_refused(tmp_path):
    sources = discover(data_config(make_npz(tmp_path / "m.npz")))
    kept = apply_budget(sources, data_config(tmp_path / "m.npz", **{"data.label_fraction": 0.5}), 0)
    assert len(kept.split("train")) == 36 and len(kept.split("unlabelled")) == 36
    assert [it.split for it in kept.items] == [
        it.split
        for it in apply_budget(sources, data_config(tmp_path, **{"data.label_fraction": 0.5}), 0).items
    ]
    with pytest.raises(ThawError, match="--labels-per-class counts images per class.*--label-fraction"):
        apply_budget(sources, data_config(tmp_path, **{"data.labels_per_class": 5}), 0)
    with pytest.raises(ThawError, match="without a positive training image"):
        apply_budget(sources, data_config(tmp_path, **{"data.label_fraction": 0.02}), 0)


# ----------------------------------------------------------------------------- metrics and the head


def test_metrics_per_label_auc_thresholds_and_bootstrap():
    from sklearn.metrics import roc_auc_score

    from thaw.metrics import bootstrap, multilabel
    from thaw.metrics.bootstrap import _Ranker

    rng = np.random.default_rng(0)
    y = torch.from_numpy((rng.random((200, 3)) < 0.3).astype(np.int64))
    probs = (0.35 * y + 0.65 * torch.from_numpy(rng.random((200, 3)))).float()
    m = multilabel.metrics(probs, y, [0.5, 0.4, 0.6], list(NAMES))
    for k, name in enumerate(NAMES):
        assert m.per_label[name]["auc"] == pytest.approx(roc_auc_score(y[:, k], probs[:, k]), abs=1e-6)
        assert m.per_label[name]["threshold"] == pytest.approx([0.5, 0.4, 0.6][k])
    assert m.auc == pytest.approx(np.mean([m.per_label[n]["auc"] for n in NAMES]))
    preds = (probs >= torch.tensor([0.5, 0.4, 0.6])).long()
    assert m.accuracy == pytest.approx(float((preds == y).float().mean()))
    assert m.subset_accuracy == pytest.approx(float((preds == y).all(1).float().mean()))
    assert m.confusion == [] and 0 < m.ece < 1
    weights = rng.integers(0, 3, 200).astype(float)
    assert _Ranker(probs[:, 0].double().numpy()).auc(y[:, 0].numpy(), weights) == pytest.approx(
        roc_auc_score(y[:, 0], probs[:, 0], sample_weight=weights)
    )
    cuts = multilabel.choose_thresholds(probs, y)
    assert len(cuts) == 3 and all(0 < c <= 1 for c in cuts)
    ci = bootstrap.multilabel_ci(probs, y, cuts, n=200)
    assert ci["auc"][0] <= m.auc <= ci["auc"][1] and set(ci) >= {"accuracy", "subset_accuracy", "macro_f1"}


def test_the_solved_head_is_k_independent_logistic_regressions():
    from thaw.train.head_solver import solve_head
    from thaw.train.losses import pos_weight

    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 8, generator=g)
    y = torch.stack([x[:, 0] > 0, x[:, 1] + x[:, 2] > 0.5, x[:, 3] < -0.8], 1).long()
    solution = solve_head(x[:200], y[:200], x[200:], y[200:], 3, multilabel=True)
    logits = x[200:] @ solution.weight.T + solution.bias
    assert ((logits >= 0).long() == y[200:]).float().mean(0).min() > 0.9
    assert pos_weight([[1, 0], [0, 0], [1, 0], [0, 0]]).tolist() == [1.0, 1.0]  # 2 neg / 2 pos; none: 1
    assert pos_weight([[1, 1], [0, 0], [0, 0], [0, 0]]).tolist() == [3.0, 3.0]


# ----------------------------------------------------------------------------- a run, end to end


def test_fit_reaches_a_high_mean_auc_and_records_per_label_results(npz_run):
    _, result = npz_run
    summary = result.summary
    assert summary.task == "multilabel" and summary.classes == list(NAMES)
    op = summary.operating
    assert op.test.auc > 0.8, op.test.per_label
    assert set(op.thresholds) == set(NAMES) and "Youden" in op.rule
    raw = json.loads((result.path / "summary.json").read_text())
    for name in NAMES:
        row = raw["operating"]["test"]["per_label"][name]
        assert row["auc"] > 0.6 and row["threshold"] == pytest.approx(raw["operating"]["thresholds"][name])
    phase1 = summary.phases["phase1"]
    assert "one logistic regression per label" in phase1.solver["method"]
    assert (result.path / "report.html").is_file() and "per label" in (
        result.path / "report.html"
    ).read_text()
    assert not (result.path / "confusion.png").exists() and (result.path / "reliability.png").is_file()


def test_real_weights_learn_every_label_online_and_in_phase_2(tmp_path):
    # a random backbone's features barely vary between images, so only a head solved on centred, scaled
    # features learns from them (online training and fine-tuning stay at chance, single-label too)
    import thaw
    from thaw.weights.install import is_installed

    if not is_installed("mobilenet_v2"):
        pytest.skip("needs `thaw weights install mobilenet_v2` (make test installs it)")
    changes = {"model.name": "mobilenet_v2", "model.weights": "IMAGENET1K_V1", "phase1.epochs": 3}
    config = tiny_config(
        make_npz(tmp_path / "m.npz"),
        tmp_path / "run",
        phase1_features="online",
        lr=0.01,
        lr_ratio=100.0,
        balance="loss",
        monitor="val_auc",
        **{**changes, "phase2.epochs": 2},
    )
    phases = thaw.fit(config, quiet=True).summary.phases
    first, second = phases["phase1"], phases["phase2"]
    assert first.val.auc > 0.9 and second.test.auc > 0.9, (first.val.per_label, second.test.per_label)
    assert min(r["val_loss"] for r in second.epochs) < first.epochs[0]["val_loss"]


def test_lr_find_sweeps_the_binary_cross_entropy(tmp_path, capsys):
    from thaw.weights.install import is_installed

    if not is_installed("mobilenet_v2"):
        pytest.skip("needs `thaw weights install mobilenet_v2` (make test installs it)")
    real = [
        "--model",
        "mobilenet_v2",
        "--weights",
        "IMAGENET1K_V1",
        "--image-size",
        "32",
        "--batch-size",
        "8",
    ]
    argv = ["lr-find", str(make_npz(tmp_path / "m.npz")), *real, "--steps", "30"]
    assert main([*argv, "--out", str(tmp_path / "finder")]) == 0
    assert "rule: valley" in capsys.readouterr().out
    found = json.loads((tmp_path / "finder" / "lr_find_phase1.json").read_text())
    assert found["raw_losses"][0] == pytest.approx(np.log(2), abs=0.05)  # a zero head: p = 0.5 per label


def test_predict_gives_independent_label_probabilities_and_the_label_set(npz_run, tmp_path):
    import thaw

    data, result = npz_run
    predictor = thaw.load(result.path)
    assert predictor.multilabel and predictor.thresholds == [
        result.summary.operating.thresholds[n] for n in NAMES
    ]
    images, labels = blob_images(6, 11)
    pictures = [Image.fromarray(im) for im in images]
    probs = predictor.predict_proba(pictures)
    assert probs.shape == (6, 3) and ((probs.sum(1) - 1).abs() > 0.05).any()  # sigmoids, not a softmax
    tta = predictor.predict_proba(pictures, tta=True)
    assert tta.shape == (6, 3) and ((tta >= 0) & (tta <= 1)).all()
    for i, im in enumerate(pictures):
        im.save(tmp_path / f"{i}.png")
    preds = predictor.predict_paths([tmp_path])
    first = preds[0]
    expected = [n for n, p, t in zip(NAMES, first.probabilities.values(), predictor.thresholds) if p >= t]
    assert first.labels == expected and first.label == ";".join(expected)
    assert "labels" in first.to_dict() and len(first.probabilities) == 3


def test_evaluate_and_cli_predict_on_a_multi_label_run(npz_run, tmp_path, capsys):
    from thaw.use.evaluate import evaluate_run

    _, result = npz_run
    e = evaluate_run(result.path)
    assert e.split == "test" and set(e.metrics.per_label) == set(NAMES)
    assert e.metrics.auc == pytest.approx(result.summary.operating.test.auc, abs=1e-4)
    assert "auc" in e.metrics.ci
    assert main(["evaluate", str(result.path)]) == 0
    printed = capsys.readouterr().out
    assert "mean AUC" in printed and all(name in printed for name in NAMES)
    images, _ = blob_images(2, 12)
    for i, im in enumerate(images):
        Image.fromarray(im).save(tmp_path / f"{i}.png")
    assert main(["predict", str(result.path), str(tmp_path), "--jsonl"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 2 and all(len(r["probabilities"]) == 3 and "labels" in r for r in rows)


def test_export_keeps_the_sigmoids_and_the_thresholds(npz_run, tmp_path):
    from thaw.use.export import export_run

    _, result = npz_run
    exported = export_run(result.path, "torchscript", tmp_path / "model.pt")
    assert exported.metadata["task"] == "multilabel"
    assert exported.metadata["thresholds"] == [result.summary.operating.thresholds[n] for n in NAMES]
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        got = torch.jit.load(str(exported.path))(x)
        model = result.model.eval()
        assert torch.allclose(
            got,
            model(
                (x - torch.tensor(model.preprocessing.mean).view(1, -1, 1, 1))
                / torch.tensor(model.preprocessing.std).view(1, -1, 1, 1)
            ).sigmoid(),
            atol=1e-5,
        )


def test_onnx_predict_gives_the_label_set(npz_run, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import thaw
    from thaw.use.export import export_run
    from thaw.use.onnx_predictor import OnnxPredictor

    _, result = npz_run
    exported = export_run(result.path, "onnx", tmp_path / "model.onnx")
    images, _ = blob_images(3, 13)
    for i, im in enumerate(images):
        Image.fromarray(im).save(tmp_path / f"{i}.png")
    onnx = OnnxPredictor(exported.path).predict_paths([tmp_path])
    torch_side = thaw.load(result.path).predict_paths([tmp_path])
    for a, b in zip(onnx, torch_side):
        assert a.labels == b.labels
        assert max(abs(a.probabilities[n] - b.probabilities[n]) for n in NAMES) < 1e-3


def test_cli_fit_on_a_csv_with_balance_loss_and_monitor_auc(tmp_path, capsys):
    path = make_csv(tmp_path / "d")
    out = tmp_path / "run"
    args = ["fit", str(path), *tiny_flags(), "--phase2-epochs", "1", "--out", str(out)]
    assert main([*args, "--balance", "loss", "--monitor", "val_auc", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "per label on test" in printed and "mean AUC" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "multilabel" and summary["operating"]["test"]["auc"] > 0.8
    split = (out / "split.csv").read_text().splitlines()
    assert split[0] == "key,label,class,split" and any(";" in line for line in split[1:])


def test_settings_without_a_multi_label_meaning_are_one_line(tmp_path, capsys):
    path = make_csv(tmp_path / "d")
    base = ["fit", str(path), *tiny_flags(), "--out", str(tmp_path / "run")]
    for extra, words in (
        (["--balance", "sampler"], "--balance sampler draws images class by class"),
        (["--pseudo-labels", "--label-fraction", "0.5"], "--pseudo-labels keeps confident single-class"),
        (["--labels-per-class", "5"], "--labels-per-class counts images per class"),
        (["--folds", "3"], "--folds works on single-label data"),
    ):
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0] and "multi-label" in err[0], err
        assert not (tmp_path / "run").exists()
    text = path.read_text().replace(",1,", ",0.5,", 1)
    path.write_text(text)
    assert main(base) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds '0.5'" in err[0] and "0 or 1" in err[0]


def test_single_label_data_stays_single_label(tmp_path):
    from conftest import make_class_folder

    data = make_class_folder(tmp_path / "d", per_class=4)
    lines = ["path,label"] + [f"{c}/{c}_{i}.png,{c}" for c in ("red", "blue") for i in range(4)]
    (data / "labels.csv").write_text("\n".join(lines) + "\n")
    for path in (data, data / "labels.csv"):
        sources = discover(data_config(path, **{"data.val_fraction": 0.25}))
        assert not sources.multilabel and sources.class_names == ["blue", "red"]
        assert all(isinstance(it.label, int) for it in sources.items)
    images, labels = blob_images(12, 0)
    np.savez(
        tmp_path / "one.npz",
        train_images=images,
        train_labels=labels[:, :1],
        val_images=images,
        val_labels=labels[:, :1],
    )
    one = discover(data_config(tmp_path / "one.npz"))
    assert not one.multilabel and one.class_names == ["0", "1"]


# ----------------------------------------------------------------------------- compare and curve


def test_compare_and_curve_run_on_multi_label_data(tmp_path, capsys):
    path = make_npz(tmp_path / "m.npz")
    flags = [*tiny_flags(), "--phase2-epochs", "1"]
    out = tmp_path / "cmp"
    argv = ["compare", str(path), *flags, "--strategies", "two-phase,linear-probe", "--seeds", "1"]
    assert main([*argv, "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    aucs = [t["test_auc"][0] for t in results["table"]]
    assert len(aucs) == 2 and all(a > 0.7 for a in aucs), aucs
    assert all(r["summary"]["task"] == "multilabel" for r in results["runs"])
    curve = tmp_path / "curve"
    assert (
        main(["curve", str(path), *flags, "--budgets", "50%,100%", "--seeds", "1", "--out", str(curve)]) == 0
    )
    rows = json.loads((curve / "curve.json").read_text())["runs"]
    assert [(r["budget"], r["labelled"]) for r in rows] == [("50%", 36), ("100%", 72)]
    assert all(r["model"]["auc"] > 0.6 for r in rows)
    assert main(["curve", str(path), *flags, "--budgets", "5", "--out", str(tmp_path / "c2")]) == 2
    assert "--labels-per-class counts images per class" in capsys.readouterr().err
