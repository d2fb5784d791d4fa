"""jax_mpk.jit takes its arguments as jax.jit does: by position or keyword, static and
donated ones named either way, PRNG keys passed through; and Flax's own decode caches (linen's
`mutable=("cache",)` collection, an nnx module's state with its Rngs) run through it. Each
against jax.jit on random inputs."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jax_mpk
from jax_mpk.frontend import UnsupportedError
from jax_mpk.frontend.rules import is_key
from tests.harness import SMALL_DEVICE, assert_close, poisoned

RNG = np.random.default_rng(4)
BACKENDS = ["reference", pytest.param("megakernel", marks=pytest.mark.gpu)]


def normal(*shape, scale=1.0):
    return jnp.asarray(RNG.standard_normal(shape) * scale, jnp.float32)


def ours(fn, backend, **jit_kwargs):
    return jax_mpk.jit(fn, backend=backend, device=poisoned(SMALL_DEVICE, backend), **jit_kwargs)


def layer(x, w, *, bias, act="tanh"):
    y = x @ w + bias
    return jnp.tanh(y) if act == "tanh" else jax.nn.gelu(y)


@pytest.mark.parametrize("backend", BACKENDS)
def test_keyword_arguments_are_traced_as_jax_jit_traces_them(backend):
    x, w, bias = normal(4, 16), normal(16, 24, scale=0.25), normal(24)
    fn = ours(layer, backend, static_argnames="act")
    for act in ("tanh", "gelu"):
        with jax.default_matmul_precision("highest"):  # not TF32, XLA's GPU default
            expected = jax.jit(layer, static_argnames="act")(x, w, bias=bias, act=act)
        assert_close(fn(x, w, bias=bias, act=act), expected, np.float32)
        assert_close(fn(x, w=w, bias=bias, act=act), expected, np.float32)
    with jax.default_matmul_precision("highest"):
        expected = jax.jit(layer)(x, w, bias=bias)
    assert_close(fn(x, w, bias=bias), expected, np.float32)


def scaled(x, scale, power):
    return x * scale ** power


def test_a_static_argument_named_either_way_is_static_both_ways():
    x = normal(8, 8)
    by_position = jax_mpk.jit(scaled, static_argnums=2, backend="reference")
    by_name = jax_mpk.jit(scaled, static_argnames="power", backend="reference")
    expected = jax.jit(scaled, static_argnums=2)(x, 1.5, 3)
    for fn in (by_position, by_name):
        assert_close(fn(x, 1.5, 3), expected, np.float32)
        assert_close(fn(x, 1.5, power=3), expected, np.float32)
        # A static value is part of the program, not an input of it.
        names = fn.lower(x, 1.5, power=3).compiled.names
        assert names == ["arg0", "arg1"], names


def append(cache, row, pos, *, scale):
    cache = jax.lax.dynamic_update_slice(cache, row * scale, (pos, 0))
    return cache, jnp.sum(cache * row)


@pytest.mark.parametrize("backend", BACKENDS)
def test_donated_by_name_is_updated_in_place(backend):
    cache, row, pos = normal(32, 16), normal(1, 16), jnp.int32(5)
    expected = jax.jit(append, static_argnames="scale")(cache, row, pos, scale=0.5)
    fn = ours(append, backend, static_argnames="scale", donate_argnames="cache")
    for args, kwargs, name in [((cache, row, pos), {}, "arg0"),
                               ((), {"cache": cache, "row": row, "pos": pos}, "cache")]:
        compiled = fn.lower(*args, **kwargs, scale=0.5).compiled
        assert compiled.aliases == {0: compiled.names.index(name)}
        kwargs = {k: jnp.array(v) if k == "cache" else v for k, v in kwargs.items()}
        args = (jnp.array(cache), *args[1:]) if args else ()
        assert_close(fn(*args, **kwargs, scale=0.5), expected, np.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_numpy_arrays_and_scalars_are_taken_in_jax_dtypes(backend):
    """float64 and int64 numpy arrays go in as float32 and int32, as jax.jit takes them
    (the reference executor read the float64 bytes as float32 before)."""
    def fn(x, i, scale):
        return x * scale + i

    x, i = RNG.standard_normal((3, 5)), RNG.integers(-9, 9, (5,))
    expected = jax.jit(fn)(x, i, 1.5)
    got = ours(fn, backend)(x, i, 1.5)
    assert got.dtype == expected.dtype == jnp.float32
    assert_close(got, expected, np.float32)


EMPTY = {
    "all_empty": lambda x, y: (jnp.tanh(x) * 2, jnp.concatenate([x, x], 0)),  # no task at all
    "some_empty": lambda x, y: (jnp.tanh(x) * 2, y.sum(0)),  # a sum over no rows: zeros
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(EMPTY))
def test_zero_size_arrays_give_zero_size_results(name, backend):
    x, y = normal(0, 4), jnp.zeros((0, 3), jnp.float32)
    assert_close(ours(EMPTY[name], backend)(x, y), jax.jit(EMPTY[name])(x, y), np.float32)


RESULTS_WITHOUT_ARRAYS = {
    "none": lambda x: None,
    "empty_tuple": lambda x: (),
    "python_scalar": lambda x: (x.shape[0], x * 2),  # an int result comes back as an array
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(RESULTS_WITHOUT_ARRAYS))
def test_results_that_are_not_arrays_come_back_as_from_jax_jit(name, backend):
    fn, x = RESULTS_WITHOUT_ARRAYS[name], normal(3, 5)
    got, expected = ours(fn, backend)(x), jax.jit(fn)(x)
    assert jax.tree.structure(got) == jax.tree.structure(expected)
    if jax.tree.leaves(expected):
        assert_close(got, expected, np.float32)


def test_argument_errors_name_the_cause():
    with pytest.raises(ValueError, match="both static and donated"):
        jax_mpk.jit(append, static_argnames="cache", donate_argnums=0)
    fn = jax_mpk.jit(layer, static_argnames="act", backend="reference")
    with pytest.raises(ValueError, match="hashable"):
        fn(normal(2, 4), normal(4, 4), bias=normal(4), act=["tanh"])
    sample = jax_mpk.jit(lambda logits, key: jax.random.categorical(key, logits),
                         backend="reference")
    with pytest.raises(UnsupportedError, match="`random_bits`: random_bits of PRNG keys"):
        sample(normal(2, 8), key=jax.random.key(0))


class CachedBlock(nn.Module):
    """Flax's own attention with its decode cache: `cached_key`, `cached_value` and
    `cache_index` variables in the "cache" collection, updated by dynamic_update_slice."""

    @nn.compact
    def __call__(self, x, decode: bool = False):
        h = nn.MultiHeadDotProductAttention(num_heads=4, qkv_features=32,
                                            decode=decode)(nn.RMSNorm()(x))
        x = x + h
        return x + nn.Dense(32)(jax.nn.silu(nn.Dense(64)(nn.RMSNorm()(x))))


@pytest.mark.parametrize("backend", BACKENDS)
def test_flax_decode_cache_collection_steps_as_jax_jit(backend):
    model = CachedBlock()
    max_len, steps = 8, 5
    variables = model.init(jax.random.key(0), normal(1, max_len, 32), decode=True)
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(1), p.shape),
                          variables["params"])
    jit_kwargs = {"static_argnames": ("decode", "mutable")}
    expected_step = jax.jit(model.apply, **jit_kwargs)
    our_step = ours(model.apply, backend, **jit_kwargs)
    cache = ours_cache = variables["cache"]
    for _ in range(steps):
        x = normal(1, 1, 32)
        expected, mutated = expected_step({"params": params, "cache": cache}, x, decode=True,
                                          mutable=("cache",))
        out, our_mutated = our_step({"params": params, "cache": ours_cache}, x, decode=True,
                                    mutable=("cache",))
        assert_close(out, expected, np.float32)
        assert_close(our_mutated, mutated, np.float32)
        cache, ours_cache = mutated["cache"], our_mutated["cache"]


class NnxBlock(nnx.Module):
    """nnx's attention with its decode cache, and a Dropout holding the module's Rngs (PRNG
    keys in the state that goes in and out of each step)."""

    def __init__(self, rngs: nnx.Rngs):
        self.embed = nnx.Embed(50, 32, rngs=rngs)
        self.norm = nnx.RMSNorm(32, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(num_heads=4, in_features=32, decode=True,
                                           rngs=rngs)
        self.drop = nnx.Dropout(0.1, deterministic=True, rngs=rngs)

    def __call__(self, tokens):
        x = self.embed(tokens)
        x = x + self.drop(self.attn(self.norm(x)))
        return self.embed.attend(self.norm(x))


def key_data(tree):
    return jax.tree.map(lambda x: jax.random.key_data(x) if is_key(x) else x, tree)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nnx_state_with_rngs_steps_as_jax_jit(backend):
    model = NnxBlock(nnx.Rngs(3))
    model.attn.init_cache((1, 8, 32))
    graphdef, state = nnx.split(model)

    def step(state, tokens):
        module = nnx.merge(graphdef, state)
        return module(tokens), nnx.state(module)

    ours_step = ours(step, backend)
    expected_state = our_state = state
    for tokens in RNG.integers(0, 50, (4, 1, 1)):
        tokens = jnp.asarray(tokens, jnp.int32)
        expected, expected_state = jax.jit(step)(expected_state, tokens)
        out, our_state = ours_step(our_state, tokens)
        assert_close(out, expected, np.float32)
        assert_close(key_data(our_state), key_data(expected_state), np.float32)
    assert jax.tree.structure(our_state) == jax.tree.structure(expected_state)
