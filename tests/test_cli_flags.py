"""Every flag a command shows is one it uses, each flag name has one meaning, and no abbreviation is taken.

Two checks. (1) Every shown flag, set to a value other than its default, changes what the command hands to
the library (the library's entry points replaced by recorders, the arguments compared with those of the
same command without the flag): a setting the command would drop, or a section it would not pass on
(``shards --model``), fails. (2) For the commands that hand the library a whole settings section
(``shards``, ``embed``, ``probe``), a real run on tiny images records which settings the library reads:
every setting the command shows must be among them (``shards --augment`` would not be)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import sys
import types
from unittest import mock

import pytest
import yaml
from conftest import make_class_folder, tiny_flags

from thaw import cli
from thaw.cli import flags
from thaw.core import config as C
from thaw.core import run_log

SETTINGS = {key: (f, default) for _, key, f, default in flags.settings(C.RunConfig())}

BASE = {  # the command's arguments without any flag, and where its library calls live
    "fit": ["fit", "data"],
    "compare": ["compare", "data"],
    "curve": ["curve", "data", "--out", "curve"],  # not a folder named by the time: runs must agree
    "lr-find": ["lr-find", "data"],
    "embed": ["embed", "data", "--out", "x.npz"],
    "probe": ["probe", "data"],
    "shards": ["shards", "data", "--out", "x"],
}
STUDY = ["--folds", "2", "--out", "cv"]  # thaw fit runs a study's runs elsewhere only with --folds (or auto)
CONTEXT = {  # flags that only mean something beside another one: given to both runs
    "--time-budget": ["--strategy", "auto"],
    "--adabn-data": ["--adabn"],
    "--unlabeled": ["--pseudo-labels"],
    "fit --executor": STUDY,
    "fit --address": STUDY,
    "fit --cell-cpus": STUDY,
    "fit --cell-gpus": STUDY,
    "fit --folds": ["--out", "cv"],
}
VALUES = {  # a valid value other than the default, where the type alone does not give one
    "--model": "resnet18",
    "--weights": "none",
    "--augment": "light",
    "--unfreeze": "2",
    "--dicom-window": "40,400",
    "--strategy": "gradual",
    "--strategies": "two-phase,gradual",
    "--budgets": "50%",
    "--shard-size": "10",
    "--address": "auto",
    "--lr": "0.002",
    "--lr-ratio": "20",
    "--image-size": "64",
}


def shown(command: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        a for a in command._actions if a.option_strings and a.help != argparse.SUPPRESS and a.dest != "help"
    ]


def subparser(name: str) -> argparse.ArgumentParser:
    return cli.parser(only=name)._subparsers._group_actions[0].choices[name]


def other_value(action: argparse.Action, tmp_path) -> list[str]:
    """``action``'s flag with a value other than its default, as words."""
    flag = action.option_strings[0]
    setting = SETTINGS.get(action.dest)
    default = setting[1] if setting else action.default
    if isinstance(action, argparse.BooleanOptionalAction):
        return [f"--no-{flag[2:]}" if default else flag]
    if action.nargs == 0:  # store_true, store_const
        return [flag]
    if flag == "--config":
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump({"seed": 5}))
        return [flag, str(path)]
    if flag == "--plans":
        path = tmp_path / "plans.yaml"
        path.write_text(yaml.safe_dump([{"name": "head", "train": "head", "epochs": 1}]))
        return [flag, str(path)]
    if flag in VALUES:
        return [flag, VALUES[flag]]
    if action.choices:
        return [flag, str(next(c for c in action.choices if str(c) != str(default)))]
    kind = str(setting[0].type) if setting else getattr(action.type, "__name__", "")
    if kind.startswith("int"):
        return [flag, str((default or 1) + 1)]
    if kind.startswith("float"):
        return [flag, str(default / 2 if default else 0.5)]
    return [flag, "elsewhere"]


RESULT = mock.MagicMock(name="result")
"""What every stand-in returns: one object, so two runs that pass the same things record equal calls."""


class Recorder:
    """Stands in for the library: records each call, with the log format in force."""

    def __init__(self):
        self.calls: list = []

    def __call__(self, name: str) -> Stand:
        return Stand(name, self.calls)


@dataclasses.dataclass(eq=False)
class Stand:
    """One library function or class, stood in for; equal to the stand-in of the same name (a command may
    hand one library function to another: ``draw=lr_find_plot``)."""

    name: str
    calls: list

    def __call__(self, *args, **kwargs):
        self.calls.append((self.name, args, kwargs, run_log._FORMAT.get()))
        return RESULT

    def __eq__(self, other) -> bool:
        return isinstance(other, Stand) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)


def library_names(module: types.ModuleType) -> list[str]:
    """The names ``module`` imported from the library (not from the command line, core or the stdlib)."""
    found = []
    for name, value in vars(module).items():
        origin = getattr(value, "__module__", None) or getattr(value, "__name__", "")
        if isinstance(value, types.ModuleType):
            origin = value.__name__
        if origin.startswith("thaw") and not origin.startswith(("thaw.cli", "thaw.core")):
            found.append(name)
    return found


def what_it_does(argv: list[str], monkeypatch) -> tuple[list, str, str]:
    """The library calls, stdout and stderr of ``thaw argv`` with the library replaced by recorders."""
    recorder = Recorder()
    out, err = io.StringIO(), io.StringIO()
    modules = [cli.load(argv[0]), cli.load("fit").strategies, flags, sys.modules["thaw.cli.executor"]]
    with monkeypatch.context() as patch, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        for module in modules:
            for name in library_names(module):
                patch.setattr(module, name, recorder(f"{module.__name__}.{name}"))
        facade = types.SimpleNamespace(fit=recorder("thaw.fit"), resume=recorder("thaw.resume"))
        patch.setattr(sys.modules["thaw.cli.fit"], "thaw", facade)
        try:
            cli.main(argv)
        except (Exception, SystemExit):  # the stand-in results are not real; the calls are what counts
            pass
    return recorder.calls, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("name", list(BASE))
def test_every_flag_a_command_shows_changes_what_it_does(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    unused = []
    for action in shown(subparser(name)):
        flag = action.option_strings[0]
        context = CONTEXT.get(f"{name} {flag}", CONTEXT.get(flag, []))
        before = what_it_does([*BASE[name], *context], monkeypatch)
        assert before[0] or before[1], f"thaw {name} {context} did nothing to compare with: {before[2]}"
        assert what_it_does([*BASE[name], *context], monkeypatch) == before  # the same twice: comparable
        given = other_value(action, tmp_path)
        argv = [name, *given] if flag == "--resume" else [*BASE[name], *context, *given]
        after = what_it_does(argv, monkeypatch)
        refused = "error" in after[2] and not after[0]  # before the library: it differs for the wrong reason
        assert not refused, (argv, after[2])
        if after[:2] == before[:2]:
            unused.append(" ".join(given))
    assert unused == [], f"thaw {name} shows flags that change nothing it does: {unused}"


@contextlib.contextmanager
def reads(on: list[bool]):
    """The settings (dotted keys) read while inside and ``on[0]``, other than by the configs' own checks
    and copies."""
    found, skip = set(), {"validate", "_validate_plans", "_numbers", "_asdict_inner", "replace", "__eq__"}
    sections = {C.DataConfig: "data.", C.ModelConfig: "model.", C.RunConfig: ""}
    originals = {cls: cls.__getattribute__ for cls in sections}

    def recording(cls, prefix, names):
        def get(self, name):
            if on[0] and name in names and sys._getframe(1).f_code.co_name not in skip:
                found.add(prefix + name)
            return object.__getattribute__(self, name)

        return get

    for cls, prefix in sections.items():
        cls.__getattribute__ = recording(cls, prefix, {f.name for f in dataclasses.fields(cls)})
    try:
        yield found
    finally:
        for cls, original in originals.items():
            cls.__getattribute__ = original


@pytest.mark.parametrize(
    "name, extra",
    [
        ("shards", ["--out", "shards"]),
        ("embed", ["--out", "f.npz", *tiny_flags()]),
        ("probe", ["--folds", "2", *tiny_flags()]),
    ],
)
def test_every_setting_a_command_shows_is_read_by_a_real_run(name, extra, tmp_path, monkeypatch):
    """Read once the config is built (by the command's body or the library it calls), not by the config's
    own checks."""
    monkeypatch.chdir(tmp_path)
    data = make_class_folder(tmp_path / "shapes", per_class=6)
    module, on = cli.load(name), [False]

    def built(*args, **kwargs):
        config = flags.config_from_args(*args, **kwargs)
        on[0] = True
        return config

    monkeypatch.setattr(module, "config_from_args", built)
    with reads(on) as found:
        assert cli.main([name, str(data), *extra]) == 0
    settings = {a.dest for a in shown(subparser(name)) if a.dest in SETTINGS}
    assert settings and found, (settings, found)
    assert sorted(settings - found) == []


SAME_IDEA = {"--json"}  # probe: write the results as JSON to FILE; models: print them as JSON


def test_one_meaning_per_flag_name():
    """A flag name takes the same kind of value, with the same choices, in every command: export's
    --format (an output type; a data layout in fit and evaluate) is now --to."""
    seen: dict[str, tuple[str, argparse.Action]] = {}
    clashes = []
    for name, command in cli.parser()._subparsers._group_actions[0].choices.items():
        for action in shown(command):
            for flag in action.option_strings:
                first = seen.setdefault(flag, (name, action))[1]
                kind = (first.choices, first.nargs == 0) != (action.choices, action.nargs == 0)
                if kind and flag not in SAME_IDEA:
                    clashes.append(f"{flag}: thaw {seen[flag][0]} and thaw {name}")
    assert clashes == []


def test_no_abbreviations_and_each_command_has_only_its_own_flags(capsys):
    for argv, refused in [
        (["fit", "x", "--phase2-epoch", "3"], "--phase2-epoch"),
        (["shards", "x", "--out", "y", "--augment", "none"], "--augment"),
        (["embed", "x", "--out", "y.npz", "--phase1-epochs", "2"], "--phase1-epochs"),
        (["export", "run", "--fo", "onnx"], "--fo"),
        (["weights", "verify", "m", "--weigh", "none"], "--weigh"),
    ]:
        with pytest.raises(SystemExit) as stop:
            cli.main(argv)
        assert stop.value.code == 2 and f"unrecognized arguments: {refused}" in capsys.readouterr().err


def test_help_and_version_import_no_torch_and_the_whole_parser_builds():
    import subprocess

    code = (
        "import sys\nfrom thaw.cli import main\n"
        "for argv in (['--help'], ['--version'], ['predict', '--help']):\n"
        "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert list(cli.parser()._subparsers._group_actions[0].choices) == list(cli.COMMANDS)
