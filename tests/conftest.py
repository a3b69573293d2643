from __future__ import annotations

import os

# One thread per test process (and per xdist worker): the CI machine has 2 cores and `make test` runs
# two workers; torch reads these when it is first imported, so they are set before anything imports it.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import re  # noqa: E402
import zlib  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402
from PIL import Image  # noqa: E402

# Hypothesis: in CI (CI=true) every run draws the same examples, a fixed number of them, so a red build
# reproduces and a green one does not depend on luck; locally the default profile keeps exploring.
settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=50,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI", "").lower() in ("1", "true", "yes") else "dev")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
COLOURS = {"red": (220, 40, 40), "blue": (40, 60, 220), "green": (40, 200, 60)}


def make_image(path: Path, colour: tuple[int, int, int], seed: int, size: int = 40) -> None:
    """A real PNG: a coloured square on noise, so classes are learnable but not identical."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 80, size=(size, size, 3), dtype=np.uint8)
    a, b = rng.integers(4, size // 2, size=2)
    pixels[a : a + size // 2, b : b + size // 2] = colour
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def make_class_folder(root: Path, per_class: int = 8, classes=("red", "blue")) -> Path:
    for c in classes:
        for i in range(per_class):
            make_image(root / c / f"{c}_{i}.png", COLOURS[c], seed=zlib.crc32(f"{c}/{i}".encode()))
    return root


@pytest.fixture
def class_folder(tmp_path: Path) -> Path:
    return make_class_folder(tmp_path / "shapes")


@pytest.fixture
def split_folders(tmp_path: Path) -> Path:
    root = tmp_path / "split"
    make_class_folder(root / "train", per_class=8)
    make_class_folder(root / "val", per_class=3)
    make_class_folder(root / "test", per_class=3)
    return root


class _Evil:
    """Unpickling this calls print: a stand-in for code hidden in a weights file."""

    def __reduce__(self):
        return (print, ("pwned",))


@pytest.fixture
def evil_pickle(tmp_path: Path) -> Path:
    import torch

    path = tmp_path / "evil.pth"
    torch.save({"x": _Evil()}, path)
    return path


def shared_or_skip(relative: str) -> Path:
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"{path} is absent (real data lives in ../shared on development and CI machines)")
    return path


def tiny_flags(size: int = 32, batch: int = 8) -> list[str]:
    """The command-line flags of a tiny CPU run: MobileNetV3-small, random weights, small images."""
    return [
        "--model",
        "mobilenet_v3_small",
        "--weights",
        "none",
        "--image-size",
        str(size),
        "--batch-size",
        str(batch),
    ]


def tiny_config(data, out, **changes):
    """The same tiny run as a config: 2 online-budget epochs of phase 1 (cached by default), 1 of phase 2."""
    import thaw
    from thaw.core.config import override

    return override(
        thaw.RunConfig(),
        {
            "data.path": str(data),
            "data.image_size": 32,
            "data.batch_size": 8,
            "model.name": "mobilenet_v3_small",
            "model.weights": "none",
            "phase1.epochs": 2,
            "phase2.epochs": 1,
            "out": str(out),
            **changes,
        },
    )


@pytest.fixture(scope="session")
def shapes(tmp_path_factory) -> Path:
    """One read-only red/blue class folder (10 per class) for the whole session (per xdist worker); a test
    that changes its data makes its own."""
    return make_class_folder(tmp_path_factory.mktemp("session") / "shapes", per_class=10)


@pytest.fixture(scope="session")
def mobilenet_v2_installed() -> None:
    """The real ImageNet MobileNetV2 weights, installed beforehand by `make test` (`thaw weights install
    mobilenet_v2`): a bare pytest does not download them, it skips with this reason (THAW_REQUIRE=weights
    turns the skip into a failure)."""
    from thaw.weights.install import is_installed

    if not is_installed("mobilenet_v2"):
        pytest.skip("needs `thaw weights install mobilenet_v2` (make test installs it)")


# ----------------------------------------------------------------------------- one THAW_HOME per session


@pytest.fixture(scope="session", autouse=True)
def _thaw_home(tmp_path_factory):
    """Every test process shares one fresh THAW_HOME (caches, imported weights), so caches hit between tests
    and never touch the user's ~/.cache/thaw; a test that needs an empty one sets its own."""
    home = tmp_path_factory.getbasetemp() / "thaw-home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("THAW_HOME", str(home))
        yield home


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    import torch

    torch.set_num_threads(1)


# ----------------------------------------------------------------------------- xdist groups and timeouts

# Tests that must not share the machine with their own kind (a local Ray cluster, two-process DDP runs,
# processes racing for one cache entry), or that share a cache. `--dist loadgroup` runs each group on one
# worker, in turn.
GROUPS = {
    "ray": re.compile(r"test_study\.py::test_(compare_on_ray|a_two_process_cell)"),
    "ddp": re.compile(r"test_distributed\.py::test_two_process"),
    "cache-race": re.compile(r"test_cache\.py::test_(two_processes|a_killed_writer|a_staging)"),
    # the README's CLI and Python quickstarts as written fit the same data at the same size: on one worker
    # (one THAW_HOME), the second finds the first's phase-1 features in the cache
    "readme-digits": re.compile(r"test_readme\.py::test_the_(cli|python)_quickstart_runs_as_written"),
}
# Seconds per test, stricter than pyproject's default (1200), where a hang is likeliest: subprocesses, Ray,
# DDP. Generous: a loaded 2-core machine runs a Ray study test in several minutes.
STRICT = {
    "test_study.py": 600,
    "test_distributed.py": 600,
    "test_cache.py": 300,
    "test_faults.py": 600,
    "test_resume.py": 600,
    "test_prefix.py": 600,
    "test_readme.py": 600,
    "test_package.py": 600,
    "test_completion.py": 120,
}


def _module_scoped(item) -> bool:
    """Whether the test uses a module-scoped fixture of its own module (a tiny run): such a module's tests
    stay on one worker, so the run is trained once, not once per worker."""
    info = getattr(item, "_fixtureinfo", None)
    for defs in info.name2fixturedefs.values() if info else ():
        if defs and defs[-1].scope == "module":
            return True
    return False


def pytest_collection_modifyitems(config, items):
    for item in items:
        group = next((g for g, pattern in GROUPS.items() if pattern.search(item.nodeid)), None)
        if group is None and _module_scoped(item):
            group = item.nodeid.split("::")[0]
        if group and not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(group))
        limit = STRICT.get(Path(item.nodeid.split("::")[0]).name)
        if limit and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(limit))


# ----------------------------------------------------------------------------- skips CI expects to pass

# THAW_REQUIRE=ray,chromium,weights (set by .ci/run) turns a skip for a missing Ray, Chromium or installed
# weights into a failure; THAW_ALLOW_SKIP=chromium (say) is the explicit opt-out for one of them.
REQUIREMENTS = {
    "ray": re.compile(r"\bray\b", re.I),
    "chromium": re.compile(r"chromium", re.I),
    "weights": re.compile(r"weights install|weights are not installed", re.I),
}


def _listed(variable: str) -> set[str]:
    return {w.strip().lower() for w in os.environ.get(variable, "").split(",") if w.strip()}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _require(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _require(outcome.get_result())  # a module-level importorskip


def _require(report) -> None:
    if not report.skipped or getattr(report, "wasxfail", None) is not None:
        return
    required = _listed("THAW_REQUIRE") - _listed("THAW_ALLOW_SKIP")
    longrepr = report.longrepr
    if hasattr(longrepr, "longrepr"):  # a collect report's CollectErrorRepr-like wrapper
        longrepr = longrepr.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    missing = [name for name in sorted(required) if REQUIREMENTS.get(name, re.compile("^$")).search(reason)]
    if missing:
        report.outcome = "failed"
        report.longrepr = (
            f"skipped, but THAW_REQUIRE asks for {', '.join(missing)}: {reason} "
            f"(THAW_ALLOW_SKIP={missing[0]} allows this skip)"
        )
