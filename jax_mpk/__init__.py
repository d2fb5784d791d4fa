from jax_mpk.api import jit
from jax_mpk.tensor_parallel import TensorParallel

__all__ = ["jit", "TensorParallel"]
