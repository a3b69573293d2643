"""`thaw completion bash`: a completion script generated from the parser, checked in bash itself."""

import shutil
import subprocess
import sys

import pytest


def complete(*words: str) -> list[str]:
    if shutil.which("bash") is None:
        pytest.skip("no bash on this machine")
    line = " ".join(words)
    script = (
        f'source <("{sys.executable}" -m thaw.cli completion bash); COMP_WORDS=({line}); '
        f'COMP_CWORD={len(words) - 1}; _thaw; printf "%s\\n" "${{COMPREPLY[@]}}"'
    )
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    return done.stdout.split()


def test_bash_completion_of_commands_flags_and_subcommands():
    assert complete("thaw", "ex") == ["export"]
    assert complete("thaw", "fit", "--phase2-e") == ["--phase2-epochs"]
    assert complete("thaw", "predict", "--t") == ["--top-k", "--tta"]
    assert complete("thaw", "weights", "i") == ["install", "import"]
    assert "--logger" in complete("thaw", "fit", "--lo")
