"""A medium random graph through the megakernel, for compute-sanitizer: run through
runtime.run_once with JAX on the CPU, so the megakernel is the process's only CUDA user."""

import os
import sys

os.environ["JAX_PLATFORMS"] = "cpu"  # before JAX loads

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
import random_dags  # noqa: E402

from jax_mpk import runtime  # noqa: E402
from jax_mpk import taskgraph as tg  # noqa: E402

rng = np.random.default_rng(11)
dag = random_dags.random_dag(rng, 400, max_fan_in=6, hub_fraction=0.2)
config = tg.RuntimeConfig.for_sm_count(runtime.device_info(0)["sm_count"], num_iterations=3)
program = random_dags.build(dag, config).program
inputs = rng.integers(0, 2**32, (3, dag.words), dtype=np.uint32)
(out,) = runtime.run_once(program, [inputs], [((3, dag.num_tasks, dag.words), np.uint32)])
np.testing.assert_array_equal(out, random_dags.reference(dag, inputs))
print("sanitized graph matched the reference")
