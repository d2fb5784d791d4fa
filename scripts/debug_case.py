"""Runs cases of tests/test_runtime_gpu.py's small random graphs, printing each:
python scripts/debug_case.py FIRST [LAST]"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
import numpy as np  # noqa: E402
import random_dags  # noqa: E402
import test_runtime_gpu as t  # noqa: E402

first = int(sys.argv[1])
last = int(sys.argv[2]) if len(sys.argv) > 2 else first
for seed, shape, sizes in t.small_cases(last + 1):
    if seed >= first:
        print(seed, shape, sizes, flush=True)
        rng = np.random.default_rng(seed)
        dag = random_dags.random_dag(rng, **shape)
        out, ref = t.run_dag(dag, t.config_for(dict(sizes)), rng)
        print("match" if np.array_equal(out, ref) else f"{(out != ref).sum()} words differ", flush=True)
