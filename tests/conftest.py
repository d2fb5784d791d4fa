import faulthandler
import os
import signal
import sys

import pytest

# `timeout -s USR1` (scripts/gpu_check.sh) makes a stuck run print every thread's stack.
faulthandler.register(signal.SIGUSR1, all_threads=True)

# Test helpers (random_dags, models/) import as top-level modules.
sys.path.insert(0, os.path.dirname(__file__))


def _has_cuda() -> bool:
    try:
        import jax

        return bool(jax.devices("gpu"))
    except RuntimeError:
        return False


def pytest_collection_modifyitems(config, items):
    if any("gpu" in item.keywords for item in items) and not _has_cuda():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
