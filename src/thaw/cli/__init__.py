"""The command line: parses the arguments, calls the library, prints what it returns. Imported by nothing.

One module per command (``thaw.cli.fit``, ``thaw.cli.predict``, ...) holds its arguments and its body;
:data:`COMMANDS` names them, and only the command being run is imported (:func:`load`), so ``thaw --help``,
``thaw --version`` and ``thaw predict model.onnx`` never import torch. :func:`parser` with no argument
loads every command: the whole parser, for shell completion and the CLI reference."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys
from types import ModuleType

from thaw.cli.flags import readable
from thaw.core import run_folder
from thaw.core.errors import ThawError
from thaw.core.run_folder import final_path, resumable
from thaw.core.run_log import log_format
from thaw.version import __version__

DISTRIBUTION = "thaw-transfer"  # the name on the package index; `thaw` there is another project

COMMANDS = {  # name: (module in thaw.cli, the line `thaw --help` shows)
    "fit": ("fit", "fine-tune a pretrained model on DATA with the two-phase recipe"),
    "compare": ("compare", "run several strategies over several seeds on one split; a table and a verdict"),
    "strategies": ("strategies", "list the named strategies for --strategy, one line each"),
    "curve": (
        "curve",
        "label-budget learning curve: the recipe per budget and seed, test metric vs labels",
    ),
    "lr-find": (
        "lr_find",
        "LR range test (Smith 2017; fastai lr_find): plot loss vs LR, suggest the head's LR (--phase 1) "
        "or the unfrozen backbone's and lr_ratio (--phase 2)",
    ),
    "resume": ("resume", "continue an interrupted run where it stopped"),
    "demo": ("demo", "offline demo: ImageNet MobileNetV2 fine-tuned on handwritten digits"),
    "evaluate": ("evaluate", "evaluate a trained run on labelled data"),
    "embed": ("embed", "write the frozen backbone's features of every image to a file"),
    "shards": (
        "shards",
        "write DATA as WebDataset shards (with the split thaw would make) for fit, embed and predict",
    ),
    "probe": (
        "probe",
        "how good are pretrained features for DATA: linear and k-NN probes; "
        "--model a,b@WEIGHTS,c compares several (weights per model after @)",
    ),
    "predict": ("predict", "classify images with a trained run"),
    "export": ("export", "export a run's model for serving (ONNX, TorchScript, safetensors)"),
    "report": ("report", "(re)build a run folder's report.html: one self-contained page"),
    "completion": ("completion", "print a shell completion script (bash or zsh)"),
    "weights": ("weights", "get real pretrained weights onto an offline machine, and check them"),
    "models": ("models", "the model zoo: size, GFLOPs, ImageNet accuracy, weights offline?"),
}


def load(name: str) -> ModuleType:
    """The module of command ``name``: its ``add_arguments(parser)`` and ``run(args)``. Imported here, by
    name, and nowhere else: a command imports torch only when it is the one that runs."""
    return importlib.import_module(f"thaw.cli.{COMMANDS[name][0]}")


def parser(only: str | None = None) -> argparse.ArgumentParser:
    """``thaw``'s parser. Every command is listed; ``only`` (a command name) loads the arguments of that
    one alone, none when it is not a command (``thaw --help``, a typo), all of them when not given."""
    p = argparse.ArgumentParser(
        prog="thaw",
        description="Transfer learning for image classifiers: "
        "train the head on a frozen backbone, then fine-tune, and see what each phase gained.",
        allow_abbrev=False,
    )
    p.add_argument("--version", action="version", version=f"thaw {__version__} (distribution {DISTRIBUTION})")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)
    for name, (_, line) in COMMANDS.items():
        command = sub.add_parser(name, help=line, allow_abbrev=False)
        if only is None or only == name:
            module = load(name)
            module.add_arguments(command)
            command.set_defaults(func=module.run)
    return p


def _command(argv: list[str]) -> str:
    """The command word of ``argv``: its first word that is not an option (``thaw``'s own options take no
    value), or ``""``."""
    return next((word for word in argv if not word.startswith("-")), "")


def main(argv: list[str] | None = None) -> int:
    """Run one command. Exit 0 on success; 2 and one line on stderr for a problem the user can fix (or a
    file that cannot be written); 3 when ``predict``, ``evaluate`` or ``embed`` could not read some of
    its inputs, 4 when it could read none; 130 on Ctrl-C; 143 on SIGTERM; 1 and one line for anything
    unexpected (--debug: the traceback). An interrupted run says where it stands and how to continue it."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser(only=_command(argv)).parse_args(argv)
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
    return log_format(name)


def _error(message: str, run, prefix: str = "thaw: error: ") -> None:
    """One line on stderr; when a run was being written, where it is, and how to continue it when
    ``thaw resume`` can (its start files are written and its final name is free)."""
    message = readable(message)  # the one place an error line is printed: cut here, where to continue kept
    if resumable(run):
        message += f"; the run so far is in {run}: continue it with `thaw resume {run}`"
    elif run is not None and run.is_dir() and not final_path(run).exists():
        message += f"; {run} stopped before the run started (nothing to resume): delete it, rerun `thaw fit`"
    print(f"{prefix}{message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
