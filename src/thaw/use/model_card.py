"""``MODEL_CARD.md``: what to hand over with a model, in every run folder and beside every export.

Hugging Face's model-card layout (https://huggingface.co/docs/hub/model-cards): YAML metadata between
``---`` lines (``library_name``, ``pipeline_tag``, ``tags``, ``datasets``, ``metrics`` and a
``model-index`` with the test results), then the text: the data and its split, the metrics with their
bootstrap 95% intervals, the operating point, the training recipe and what each phase gained, and the
intended use and limits. A ``thaw`` block in the metadata records each model file's sha256 and the class
names: :func:`check_card` makes the predictors refuse a model whose card and file disagree.

Torch-free (``thaw predict model.onnx`` checks the card without torch): the card is written from the run
folder's own files, ``summary.json`` and ``config.yaml``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml

from thaw.core.errors import ThawError
from thaw.core.files import write_atomic
from thaw.version import __version__

CARD = "MODEL_CARD.md"
SHOWN = (  # the metrics in the card: (summary key, label, in percent?)
    ("accuracy", "accuracy", True),
    ("balanced_accuracy", "balanced accuracy", True),
    ("auc", "AUC", False),
    ("macro_f1", "macro-F1", False),
    ("sensitivity", "sensitivity", True),
    ("specificity", "specificity", True),
)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_model_card(run_dir: Path, name: str, model_files: list[Path] | None = None) -> Path:
    """Write ``MODEL_CARD.md`` for the run in ``run_dir`` (its ``summary.json`` and ``config.yaml``),
    beside ``model_files`` (default: the run's ``model.safetensors``), whose sha256 it records. Beside an
    export, the files another export of the same run put in the card are kept."""
    run_dir = Path(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    files = model_files or [run_dir / "model.safetensors"]
    folder = files[0].parent
    recorded = {f.name: file_sha256(f) for f in files}
    earlier = read_card(folder / CARD)
    if earlier and earlier.get("run") == name:  # another export of this run in the same folder
        recorded = {**earlier.get("files", {}), **recorded}
    meta = _metadata(summary, config, name, recorded)
    text = "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n\n" + _text(summary, config, name)
    write_atomic(folder / CARD, text)
    return folder / CARD


def read_card(path: Path) -> dict | None:
    """The ``thaw`` block of a card's metadata, or None when there is no card (or no block)."""
    if not path.is_file():
        return None
    text = path.read_text()
    parts = text.split("---\n", 2)
    if not text.startswith("---\n") or len(parts) < 3:
        raise ThawError(f"{path} has no YAML metadata between --- lines; restore it or delete the card")
    try:
        meta = yaml.safe_load(parts[1]) or {}
    except yaml.YAMLError as err:
        raise ThawError(f"{path}: its metadata is not valid YAML ({str(err).splitlines()[0]})") from None
    return meta.get("thaw") if isinstance(meta, dict) else None


def check_card(model: Path, class_names: list[str]) -> None:
    """Refuse ``model`` when the ``MODEL_CARD.md`` beside it describes another file: its sha256, or its
    class names (in order), differ from the card's, or the card does not list it. No card: nothing to check
    (a model file handed over alone)."""
    card_path = model.parent / CARD
    card = read_card(card_path)
    if card is None:
        return
    files = card.get("files") or {}
    if model.name not in files:
        raise ThawError(
            f"{card_path} describes {', '.join(files) or 'no model file'}, not {model.name}: keep each model "
            f"with its own card (thaw export writes one), or delete the card that does not belong"
        )
    if files[model.name] != file_sha256(model):
        raise ThawError(
            f"{model} is not the file {card_path} describes (its sha256 differs): restore the original "
            f"file, or export the run again for a card that matches"
        )
    if list(card.get("classes") or []) != list(class_names):
        raise ThawError(
            f"{model}'s classes ({', '.join(class_names)}) are not the ones {card_path} lists "
            f"({', '.join(card.get('classes') or [])}): the card belongs to another model"
        )


def _final(summary: dict) -> tuple[dict, str]:
    """The saved model's test metrics (else val): at its operating point when the run measured one."""
    op = summary.get("operating") or {}
    phase = summary["phases"][summary["final_phase"]]
    if op.get("test"):
        return op["test"], "test"
    if op.get("val"):
        return op["val"], "val"
    return (phase.get("test"), "test") if phase.get("test") else (phase["val"], "val")


def _metadata(summary: dict, config: dict, name: str, files: dict[str, str]) -> dict:
    metrics, split = _final(summary)
    results = [
        {
            "type": key if key != "auc" else "roc_auc",
            "value": round(float(metrics[key]), 4),
            "name": f"{split} {label}",
        }
        for key, label, _ in SHOWN
        if _number(metrics.get(key)) is not None
    ]
    model = config.get("model", {})
    return {
        "library_name": "thaw",
        "pipeline_tag": "image-classification",
        "tags": ["image-classification", "transfer-learning", "thaw", summary["model"]],
        "datasets": [summary["dataset"]],
        "metrics": sorted({r["type"] for r in results}),
        "base_model": f"{summary['model']} ({model.get('weights', 'DEFAULT')} weights)",
        "model-index": [
            {
                "name": name,
                "results": [
                    {
                        "task": {"type": "image-classification", "name": "Image Classification"},
                        "dataset": {"name": summary["dataset"], "type": "imagefolder", "split": split},
                        "metrics": results,
                    }
                ],
            }
        ],
        "thaw": {
            "run": name,
            "version": __version__,
            "files": files,
            "classes": list(summary["classes"]),
            "task": summary.get("task", "single-label"),
            "final_phase": summary["final_phase"],
        },
    }


def _number(value) -> float | None:
    return float(value) if isinstance(value, int | float) and value == value else None


def _show(metrics: dict, key: str, percent: bool) -> str | None:
    value = _number(metrics.get(key))
    if value is None:
        return None
    scale, fmt = (100, ".1f") if percent else (1, ".3f")
    ci = (metrics.get("ci") or {}).get(key)
    band = f" [{scale * ci[0]:{fmt}}, {scale * ci[1]:{fmt}}]" if ci else ""
    return f"{scale * value:{fmt}}{'%' if percent else ''}{band}"


def _text(summary: dict, config: dict, name: str) -> str:
    return "\n".join(
        [
            f"# {name}: {summary['model']} fine-tuned on {summary['dataset']}",
            "",
            f"An image classifier made by thaw {__version__} with the `{summary['strategy']}` recipe: "
            f"{len(summary['classes'])} {'labels' if summary.get('task') == 'multilabel' else 'classes'} "
            f"({', '.join(summary['classes'])}).",
            "",
            *_data(summary, config),
            *_results(summary),
            *_recipe(summary, config),
            *_use(summary, config),
        ]
    )


def _data(summary: dict, config: dict) -> list[str]:
    data = config.get("data", {})
    sizes = ", ".join(f"{split} {n}" for split, n in summary["images"].items())
    size = "the weights' own"
    made = (
        f"thaw's stratified split (val {data.get('val_fraction')}, test {data.get('test_fraction')}, "
        f"split seed {data.get('split_seed')}) where the data had none"
    )
    lines = [
        "## Data and split",
        "",
        f"- Images: `{data.get('path', summary['dataset'])}` ({sizes} images).",
        f"- Split: the data's own train/val/test folders or files where it has them, else {made}; every "
        f"image's split is in the run folder's `split.csv`.",
        f"- Input: {data.get('image_size') or size} px, normalised with {data.get('normalize', 'imagenet')} "
        f"statistics; augmentation {summary.get('augment', {}).get('chosen')}.",
    ]
    if summary.get("budget"):
        lines.append(f"- Label budget: {summary['budget']}.")
    if summary.get("skipped_images"):
        lines.append(f"- Left out as undecodable: {len(summary['skipped_images'])} image(s).")
    return [*lines, ""]


def _results(summary: dict) -> list[str]:
    metrics, split = _final(summary)
    shown = [f"{label} {text}" for key, label, pct in SHOWN if (text := _show(metrics, key, pct))]
    op = summary.get("operating") or {}
    caveat = (
        " (bootstrap 95% intervals in brackets, 1000 resamples of the test images)"
        if metrics.get("ci")
        else ": no intervals and optimistic, as the run had no test split and validation chose the "
        "saved plan and the threshold; keep a test split (a test/ folder, or thaw's own split: "
        "--test-fraction) for honest figures"
    )
    ece = _number(metrics.get("ece"))
    lines = [
        "## Metrics",
        "",
        f"The saved model ({summary['final_phase']}) on the {split} split ({metrics.get('n')} images)"
        f"{caveat}: {', '.join(shown)}"
        + (f"; expected calibration error {ece:.3f}." if ece is not None else "."),
        "",
        "| plan | val accuracy | val AUC | test accuracy | test AUC | gain in accuracy (points) |",
        "|---|---|---|---|---|---|",
    ]
    for plan, r in summary["phases"].items():
        cells = []
        for s in ("val", "test"):
            m = r.get(s) or {}
            cells += [
                _show({k: m.get(k) for k in ("accuracy",)}, "accuracy", True) or "-",
                _show({k: m.get(k) for k in ("auc",)}, "auc", False) or "-",
            ]
        by_split = (summary.get("gain") or {}).get(plan) or {}
        gain = (by_split.get("test") or by_split.get("val") or {}).get("accuracy")  # test, else val
        kept = " (saved)" if plan == summary["final_phase"] else ""
        shown_gain = f"{100 * gain:+.1f}" if _number(gain) is not None else "-"
        lines.append(f"| {plan}{kept} | {' | '.join(cells)} | {shown_gain} |")
    lines += ["", "## Operating point", ""]
    if op.get("thresholds"):
        rule = op.get("rule")
        lines.append(f"Each label is predicted where its probability reaches its threshold ({rule}).")
    elif op.get("threshold") is not None:
        positive = summary["classes"][1]
        lines.append(
            f"{positive} where p({positive}) >= {op['threshold']:.3f}, else {summary['classes'][0]}; the "
            f"threshold was chosen on validation ({op.get('rule')})."
        )
    else:
        lines.append(f"The most probable class (argmax). {op.get('rule', '')}".strip())
    if op.get("tta"):
        lines.append("Scored with test-time augmentation (flip and small crops): predict with `--tta` too.")
    return [*lines, ""]


def _recipe(summary: dict, config: dict) -> list[str]:
    plans = ", ".join(
        f"{plan} ({r.get('epochs_run', 0)} epochs run, best {r.get('best_epoch', '-')})"
        for plan, r in summary["phases"].items()
    )
    gains = []
    for plan, by_split in (summary.get("gain") or {}).items():
        m = by_split.get("test") or by_split.get("val") or {}
        split = "test" if by_split.get("test") else "val"
        if _number(m.get("accuracy")) is not None:
            change = f"{100 * m['accuracy']:+.1f}"
            gains.append(f"{plan} changed {split} accuracy by {change} points over the plan before")
    model = config.get("model", {})
    head_with = ", the head with it" if config.get("phase2_head_lr") == "backbone" else ""
    return [
        "## Training recipe",
        "",
        f"- Backbone: {summary['model']}, pretrained weights {model.get('weights')}; a new linear head.",
        f"- Strategy {summary['strategy']}: {plans}; the saved weights are {summary['final_phase']}'s "
        f"(the plan with the best validation score).",
        f"- Head learning rate {config.get('lr')}; when fine-tuned, the backbone at lr / "
        f"{config.get('lr_ratio')}{head_with}; batch norm {config.get('bn_policy')}; "
        f"seed {summary.get('seed')}.",
        f"- What fine-tuning gained: {'; '.join(gains) or 'one plan only, nothing to compare'}.",
        "- The full settings: `config.yaml`; every epoch: `metrics.csv`; the figures: `report.html`.",
        "",
    ]


def _use(summary: dict, config: dict) -> list[str]:
    metrics, split = _final(summary)
    n = metrics.get("n") or 0
    return [
        "## Intended use and limits",
        "",
        f"- Intended use: sorting images like those in `{summary['dataset']}` into "
        f"{', '.join(summary['classes'])}. It knows no other class: every image gets one of these.",
        "- The figures above hold for images from the same source as the training data; a new camera, "
        "site, stain or population can lower them. Check on your own labelled images first "
        "(`thaw evaluate RUN DATA`).",
        f"- The figures come from {n} {split} images"
        + (
            ": with so few, they can move several points on new images; more test images narrow the "
            "intervals."
            if n < 200
            else "; the intervals show how far they may move."
        ),
        "- Not validated for clinical, safety-critical or legal decisions; a person responsible for such a "
        "use must validate it on data from where it will be used.",
        "- Probabilities are the model's confidence, not calibrated risk, unless the expected calibration "
        "error above is small for your use.",
        "",
    ]
