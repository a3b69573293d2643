"""``thaw`` in a child process without paying for a fresh interpreter each time: a fork server.

A test that needs thaw in a process of its own (a SIGKILL mid-batch, an exit code and stderr as a user sees
them, a quickstart run as written) used to start ``python -m thaw.cli``: 5-15 s of importing torch,
torchvision, timm and Lightning before the first line of thaw ran, on every call. Here one server process
per test worker imports them once; each call forks it, and the child sets its own argv, environment,
working directory and stdio, then runs ``python -m thaw.cli`` (or ``python -c CODE``) as the interpreter
would, exit status included (a signal that kills it gives ``-signal``, as ``subprocess`` reports).

What a fork cannot give stays a real ``subprocess.run``: checks that an import is *not* made (the server has
made them all), thread-count settings read when torch is first imported, and anything that starts its own
interpreters from ``sys.argv`` (Lightning's DDP launcher).
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# The server: import what every thaw command imports, then serve one request per line on stdin. Nothing
# here runs a tensor op, so no OpenMP pool exists to be copied half-alive into a child.
SERVER = r"""
import json, os, runpy, signal, sys, traceback
import thaw.cli, thaw.cli.fit, thaw.train.module, thaw.studies.runner  # preloaded for the children

def child(request):
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    for fd, path, mode in ((0, os.devnull, os.O_RDONLY), (1, request["stdout"], os.O_WRONLY),
                           (2, request["stderr"], os.O_WRONLY)):
        os.dup2(os.open(path, mode), fd)
    sys.stdin = open(0, closefd=False)
    sys.stdout = open(1, "w", closefd=False, buffering=1)
    sys.stderr = open(2, "w", closefd=False, buffering=1)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as a fresh interpreter has it
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    code = 0
    try:
        if request["code"] is not None:
            sys.argv = ["-c", *request["args"]]
            exec(compile(request["code"], "<string>", "exec"), {"__name__": "__main__"})
        else:
            sys.argv = ["thaw", *request["args"]]
            runpy.run_module("thaw.cli", run_name="__main__", alter_sys=True)
    except SystemExit as stop:
        if stop.code is None:
            code = 0
        elif isinstance(stop.code, int):
            code = stop.code
        else:
            print(stop.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    try:
        import atexit
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)

print("ready", flush=True)
for line in sys.stdin:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        child(request)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), flush=True)
"""


@dataclass
class Done:
    """What ``subprocess.run(..., capture_output=True, text=True)`` returns, in the fields tests read."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str


class _Server:
    def __init__(self) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH", "")])),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        }
        self.process = subprocess.Popen(
            [sys.executable, "-c", SERVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,  # its process group: a timed-out call kills it and its children at once
        )
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError("the thaw fork server did not start")
        atexit.register(self.close)

    def run(self, args, code, env, cwd) -> Done:
        with tempfile.TemporaryDirectory() as tmp:
            out, err = Path(tmp, "stdout"), Path(tmp, "stderr")
            out.touch()
            err.touch()
            request = {"args": [str(a) for a in args], "code": code, "env": env, "cwd": str(cwd)}
            request.update(stdout=str(out), stderr=str(err))
            try:
                self.process.stdin.write(json.dumps(request) + "\n")
                self.process.stdin.flush()
                reply = self.process.stdout.readline()
            except BaseException:  # pytest-timeout, Ctrl-C: the child may still run; end it and the server
                self.kill()
                raise
            if not reply:
                raise RuntimeError("the thaw fork server died")
            return Done(list(args), json.loads(reply)["returncode"], out.read_text(), err.read_text())

    def kill(self) -> None:
        try:
            os.killpg(self.process.pid, 9)
        except ProcessLookupError:
            pass
        self.process.wait()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait(timeout=30)


_server: _Server | None = None


def run_thaw(args, *, code: str | None = None, env: dict | None = None, cwd=None) -> Done:
    """``python -m thaw.cli ARGS`` (or ``python -c CODE ARGS``) in a forked child of the preloaded server,
    with ``env`` (default: this process's environment) and ``cwd``; stdout and stderr captured as text."""
    global _server
    if _server is None or _server.process.poll() is not None:
        _server = _Server()
    return _server.run(list(args), code, dict(os.environ if env is None else env), cwd or os.getcwd())
