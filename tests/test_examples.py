"""The examples run and agree with jax.jit (on the CPU: the reference executor)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("family", ["llama", "qwen3", "gpt2"])
def test_decode_loop_gives_jax_jits_greedy_tokens(family):
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "decode_loop.py"), "--family", family,
         "--steps", "4", "--batch", "2"],
        capture_output=True, text=True, timeout=600, check=True)
    assert f"{family} (tiny): greedy tokens match" in result.stdout, result.stdout


def test_quickstart_matches_jax_jit():
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py")],
                            capture_output=True, text=True, timeout=600, check=True)
    assert "relative L2 error against jax.jit" in result.stdout, result.stdout
