"""The package: every third-party module thaw imports is declared in pyproject.toml (a dependency, or an
extra named by the error that guards the import); `pip install .` resolves from a clean state, and the
wheel installed into a fresh venv gives a working `thaw` command whose --version matches the
distribution's (thaw-transfer: `thaw` on the package index is another project)."""

import ast
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "thaw"

# import name -> distribution name, where they differ
DISTRIBUTIONS = {
    "PIL": "pillow",
    "yaml": "pyyaml",
    "sklearn": "scikit-learn",
    "skimage": "scikit-image",
    "pytorch_grad_cam": "grad-cam",
}


def _name(requirement: str) -> str:
    """The distribution name of a requirement string, normalised (PEP 503)."""
    name = re.match(r"[A-Za-z0-9._-]+", requirement).group(0)
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_modules() -> dict[str, list[tuple[str, bool]]]:
    """Top-level third-party modules imported in src/thaw: module -> [(file, at module level?)]."""
    found: dict[str, list[tuple[str, bool]]] = {}
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        top_level = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top != "thaw" and top not in sys.stdlib_module_names:
                    found.setdefault(top, []).append((str(path.relative_to(ROOT)), id(node) in top_level))
    return found


def test_every_imported_module_is_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    required = {_name(r) for r in project["dependencies"]}
    extras = {
        extra: {_name(r) for r in reqs}
        for extra, reqs in project["optional-dependencies"].items()
        if extra not in ("test", "docs")  # tools for developing thaw, not for running it
    }
    source = "\n".join(p.read_text() for p in SRC.rglob("*.py"))
    modules = imported_modules()
    assert {"torch", "scipy", "tqdm", "skimage"} <= set(modules)  # the walk sees nested imports too
    problems = []
    for module, places in sorted(modules.items()):
        dist = _name(DISTRIBUTIONS.get(module, module))
        if dist in required:
            continue
        guarding = [e for e, reqs in extras.items() if dist in reqs]
        if not guarding:
            problems.append(f"{module} ({dist}, imported in {places[0][0]}) is not declared")
        elif any(at_top for _, at_top in places):
            problems.append(f"{module} is optional ({guarding}) but imported at module level")
        elif not any(f"thaw-transfer[{e}]" in source for e in guarding):
            problems.append(
                f"no error in src/thaw says: pip install 'thaw-transfer[{guarding[0]}]' ({module})"
            )
    assert not problems, "\n".join(problems)


def test_optional_imports_fail_in_one_line_naming_the_extra(monkeypatch):
    from thaw.core.errors import ThawError
    from thaw.weights import verify

    monkeypatch.setitem(sys.modules, "skimage", None)  # import skimage raises ImportError
    with pytest.raises(ThawError, match=r"^`thaw weights verify` needs .*thaw-transfer\[verify\]'$"):
        verify._photos()


def test_pydicom_floor_has_pydicom_pixels():
    """thaw reads DICOM through pydicom.pixels, which pydicom 3 introduced: the extra's floor says 3."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "pydicom.pixels" in (SRC / "core" / "decoding.py").read_text()
    assert project["optional-dependencies"]["dicom"] == ["pydicom>=3"]


def test_distribution_name_and_version_agree():
    import thaw
    from thaw.cli import DISTRIBUTION

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == DISTRIBUTION == "thaw-transfer" and "version" in project["dynamic"]
    done = subprocess.run([sys.executable, "-m", "thaw.cli", "--version"], capture_output=True, text=True)
    assert done.stdout.strip() == f"thaw {thaw.__version__} (distribution thaw-transfer)"


@pytest.mark.slow  # pip resolves about 80 distributions from the index: half a minute
def test_a_clean_install_resolves_and_this_environment_satisfies_it(tmp_path):
    """`pip install .` into a clean venv, in two halves that cost seconds instead of the minutes of
    unpacking torch and its CUDA wheels again: pip resolves every declared dependency from nothing
    (``--dry-run --ignore-installed``), and the environment the tests run in satisfies every requirement
    thaw declares (``pip check``). The wheel test below then runs the installed wheel in that environment."""
    report = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed", "--report",
         str(report), str(ROOT)],
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    resolved = {
        _name(i["metadata"]["name"]): i["metadata"]["version"]
        for i in json.loads(report.read_text())["install"]
    }
    import thaw

    assert resolved.pop("thaw-transfer") == thaw.__version__
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert {_name(r) for r in project["dependencies"]} <= set(resolved)
    check = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout[-2000:]


def test_sdist_and_wheel_build_pass_twine_and_the_wheel_runs(tmp_path):
    """The sdist and the wheel built from it pass `twine check`; the wheel, installed without its
    dependencies into a fresh venv that borrows this environment's packages (so torch is not fetched
    again), gives `thaw --version` and `thaw demo --help` from the installed copy, not from src/."""
    dist = tmp_path / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(ROOT)],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    assert "WARNING" not in built.stderr + built.stdout, "the build warns: fix pyproject.toml"
    files = sorted(dist.iterdir(), key=lambda f: f.suffix)
    assert [f.suffix for f in files] == [".gz", ".whl"]
    _run([sys.executable, "-m", "twine", "check", "--strict", *map(str, files)], {"HOME": str(tmp_path)})

    venv = tmp_path / "venv"
    python = venv / "bin" / "python"
    # no PYTHONPATH: the venv must find thaw where the wheel put it, nowhere else
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, env=env)
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps"]
    done = subprocess.run([*pip, "--no-index", str(files[1])], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    site = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], env).strip()
    # a .pth line adds this environment's site-packages after the venv's own, without running the .pth
    # files there, so this checkout's editable install of thaw is not seen
    Path(site, "borrowed.pth").write_text("\n".join(p for p in sys.path if p.endswith("site-packages")))
    assert _run([str(python), "-c", "import thaw; print(thaw.__file__)"], env).startswith(site)
    version = files[1].name.split("-")[1]
    assert _run([str(venv / "bin" / "thaw"), "--version"], env).strip() == (
        f"thaw {version} (distribution thaw-transfer)"
    )
    # demo --help imports the demo's library (torch, Lightning, the model zoo) from the installed copy
    assert "usage: thaw demo" in _run([str(venv / "bin" / "thaw"), "demo", "--help"], env)
    as_module = _run([str(python), "-m", "thaw", "--version"], env)  # python -m thaw is thaw
    assert as_module == _run([str(venv / "bin" / "thaw"), "--version"], env)
    _check_licence_and_types(files[0], files[1], Path(site))


def _check_licence_and_types(sdist: Path, wheel: Path, site: Path) -> None:
    """The Apache-2.0 text ships in the sdist and the wheel (its metadata names it), and the wheel
    installs ``py.typed`` (PEP 561)."""
    import tarfile
    import zipfile

    licence = (ROOT / "LICENSE").read_text()
    assert "Apache License" in licence and "Version 2.0, January 2004" in licence
    assert "END OF TERMS AND CONDITIONS" in licence  # the full text, not a notice
    with tarfile.open(sdist) as tar:
        names = tar.getnames()
        assert any(n.endswith("/LICENSE") and n.count("/") == 1 for n in names), names
    with zipfile.ZipFile(wheel) as whl:
        names = whl.namelist()
        shipped = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        assert shipped and whl.read(shipped[0]).decode() == licence
        metadata = whl.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in metadata and "License-File: LICENSE" in metadata
    assert (site / "thaw" / "py.typed").is_file()


def test_one_version_source_and_an_all_extra():
    """The version is written once (thaw/version.py; pyproject reads it, ``thaw.__version__`` imports it),
    and ``thaw-transfer[all]`` names every optional feature (the extras less test and docs)."""
    import thaw
    from thaw.version import __version__

    written = [p for p in SRC.rglob("*.py") if re.search(r"^__version__\s*=", p.read_text(), re.M)]
    assert written == [SRC / "version.py"] and thaw.__version__ == __version__
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    (everything,) = extras["all"]
    named = set(re.fullmatch(r"thaw-transfer\[(.*)\]", everything).group(1).split(","))
    assert named == set(extras) - {"all", "test", "docs"}


def _run(command: list[str], env: dict) -> str:
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=env["HOME"])
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout
