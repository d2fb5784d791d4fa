"""jax_mpk.jit where you would write jax.jit: a small Flax block, compared.

On a machine without a CUDA GPU the task graph runs on the numpy reference
executor (a one-line notice says so); with one, as a single persistent kernel.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import jax_mpk


class Block(nn.Module):
    hidden: int = 256

    @nn.compact
    def __call__(self, x):
        h = nn.RMSNorm()(x)
        h = nn.Dense(4 * self.hidden, use_bias=False)(h)
        return x + nn.Dense(self.hidden, use_bias=False)(jax.nn.silu(h))


def main():
    model = Block()
    x = jax.random.normal(jax.random.key(0), (4, 256), jnp.float32)
    params = model.init(jax.random.key(1), x)

    step = jax_mpk.jit(model.apply)
    ours = step(params, x)
    reference = jax.jit(model.apply)(params, x)
    error = float(jnp.linalg.norm(ours - reference) / jnp.linalg.norm(reference))
    print(step.lower(params, x).as_text().split("ops:")[0].rstrip())
    print(f"relative L2 error against jax.jit: {error:.2e}")
    np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-5)


if __name__ == "__main__":
    main()
