from jax_mpk.api import jit

__all__ = ["jit"]
