"""The numpy reference executor: runs a program task by task and finds races."""

from jax_mpk.reference.executor import execute
from jax_mpk.reference.memory import RaceError

__all__ = ["execute", "RaceError"]
