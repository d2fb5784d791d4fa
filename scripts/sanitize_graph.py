"""A medium random graph through the megakernel, for compute-sanitizer."""

import os
import sys

import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
import random_dags  # noqa: E402

from jax_mpk import runtime  # noqa: E402
from jax_mpk import taskgraph as tg  # noqa: E402

rng = np.random.default_rng(11)
dag = random_dags.random_dag(rng, 400, max_fan_in=6, hub_fraction=0.2)
config = tg.RuntimeConfig.for_sm_count(runtime.device_info()["sm_count"], num_iterations=3)
registered = runtime.RegisteredProgram(random_dags.build(dag, config).program)
inputs = rng.integers(0, 2**32, (3, dag.words), dtype=np.uint32)
import jax  # noqa: E402

(out,) = runtime.call(registered, [jnp.asarray(inputs)],
                      [jax.ShapeDtypeStruct((3, dag.num_tasks, dag.words), np.uint32)])
np.testing.assert_array_equal(np.asarray(out), random_dags.reference(dag, inputs))
print("sanitized graph matched the reference")
