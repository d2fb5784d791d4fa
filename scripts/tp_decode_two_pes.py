"""Tensor-parallel decode over two NVSHMEM PEs through jax_mpk.jit (issue 6): each process
runs its rank's share of a Llama-style decoder (heads and MLP split, a psum after o and
down, examples/models/tp.py) for several decode steps with a donated cache, and checks its
logits and its cache against jax.jit of the whole model in the same process.

    python scripts/tp_decode_two_pes.py              # both PEs on GPU 0
    python scripts/tp_decode_two_pes.py --distinct   # PE i on GPU i

See scripts/two_pes.py. Exit status 0 when every step matched on both PEs.
"""

from __future__ import annotations

import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import two_pes  # noqa: E402

STEPS = 4


def child(rank: int, workers: int) -> int:
    sys.path.insert(0, two_pes.ROOT)
    import jax
    import jax.numpy as jnp

    import jax_mpk
    from examples.models import linen, tp
    from examples.models.config import FAMILIES
    from jax_mpk import distributed, runtime
    from jax_mpk.tiling import DeviceSpec
    from tests.harness import TOLERANCE, decode_step, relative_error

    jnp.zeros(1).block_until_ready()
    job = distributed.init(heap_bytes=64 << 20)
    cfg = FAMILIES["llama"].replace(dtype=jnp.bfloat16)
    # The same seed in both processes: the same full model, cache and tokens.
    step, (params, tokens, cache, _) = decode_step(cfg, "linen", batch=2, seq=1, seed=5)
    pos = jnp.int32(cfg.max_len - STEPS - 1)
    model = linen.Decoder(tp.rank_config(cfg, "tp", job.num_pes))
    device = dataclasses.replace(DeviceSpec.of_cuda_device(runtime.device_info()),
                                 sm_count=workers)
    ours = jax_mpk.jit(lambda p, t, c, q: model.apply(p, t, c, q), donate_argnums=(2,),
                       device=device,
                       tensor_parallel=jax_mpk.TensorParallel("tp", job.pe, job.num_pes))
    reference = jax.jit(step)
    mine = tp.shard_params(params, job.pe, job.num_pes)
    my_cache = tp.shard_cache(cache, job.pe, job.num_pes)
    failures = 0
    for i in range(STEPS):
        expected_logits, cache = reference(params, tokens, cache, pos)
        logits, my_cache = ours(mine, tokens, my_cache, pos)
        expected_cache = tp.shard_cache(cache, job.pe, job.num_pes)
        errors = [relative_error(logits, expected_logits),
                  max(relative_error(a, b) for a, b in zip(jax.tree.leaves(my_cache),
                                                           jax.tree.leaves(expected_cache),
                                                           strict=True))]
        ok = max(errors) <= TOLERANCE[jnp.dtype(cfg.dtype)]
        failures += not ok
        print(f"PE {job.pe}: step {i} pos {int(pos)}: logits rel err {errors[0]:.1e}, cache "
              f"{errors[1]:.1e}: {'match' if ok else 'MISMATCH'}", flush=True)
        tokens = jnp.argmax(expected_logits[:, -1], -1)[:, None].astype(jnp.int32)
        pos = pos + 1
    distributed.finalize()
    print(f"PE {job.pe}: {failures} failures", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(two_pes.main(__file__, child, workers=16))
