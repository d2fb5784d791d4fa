from jax_mpk.api import jit
from jax_mpk.runtime import check_launches
from jax_mpk.tensor_parallel import TensorParallel

__all__ = ["jit", "check_launches", "TensorParallel"]
