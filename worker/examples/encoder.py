"""A transformer encoder classifier over token ids: the model that makes a GPU matter.

A row is ``seq_len`` token ids (a few hundred bytes of JSON), yet one row costs
about 3.4 GFLOP in ``TransformerEncoder`` (4 pre-norm blocks of width 512, 8
heads, over 128 tokens): the request is cheap to carry and expensive to
compute, so the accelerator, not the HTTP path, sets the ceiling.
``TinyTransformerEncoder`` is the same code at a size a CPU test runs in
milliseconds. No artifact and no ``fit``: ``load`` draws the weights from
``jax.random.PRNGKey(0)`` unless the folder holds ``<name>.npz``, so every
worker serves the same (untrained, deterministic) function.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from worker.contract import Model, Params, load_npz


def example_tokens(seq_len: int, vocab_size: int) -> list[int]:
    """A fixed, in-range row of token ids for the docs and the benchmark."""
    return [(7 * i + 1) % vocab_size for i in range(seq_len)]


def _layer_norm(h: jax.Array, scale: jax.Array) -> jax.Array:
    mean = h.mean(axis=-1, keepdims=True)
    var = ((h - mean) ** 2).mean(axis=-1, keepdims=True)
    return (h - mean) * jax.lax.rsqrt(var + 1e-6) * scale


class TransformerEncoder(Model):
    """Token embedding + learned positions, ``layers`` pre-norm blocks (self-attention, GELU MLP),
    mean pooling and a softmax over ``num_classes``. Params are a flat dict (``block{i}.{name}``), so
    the default ``save`` and ``load_npz`` round-trip them."""

    name = "encoder"
    version = "1"
    vocab_size: ClassVar[int] = 4096
    seq_len: ClassVar[int] = 128
    d_model: ClassVar[int] = 512
    heads: ClassVar[int] = 8
    layers: ClassVar[int] = 4
    d_ff: ClassVar[int] = 2048
    num_classes: ClassVar[int] = 8
    input_shape = (seq_len,)
    input_dtype = "int32"
    input_description = "Token ids, one per position; ids outside 0..vocab_size-1 are clipped into it."
    example = example_tokens(seq_len, vocab_size)
    outputs = {"probabilities": "Softmax probability of each class."}
    labels = tuple(f"class_{i}" for i in range(num_classes))

    def load(self, artifacts: Path) -> Params:
        path = self.params_file(artifacts)
        if path.is_file():
            return {key: jnp.asarray(value) for key, value in load_npz(path).items()}
        return self.init_params(jax.random.PRNGKey(0))

    def init_params(self, key: jax.Array) -> dict[str, jax.Array]:
        d, f = self.d_model, self.d_ff
        keys = iter(jax.random.split(key, 3 + 4 * self.layers))

        def dense(fan_in: int, fan_out: int) -> jax.Array:
            return jax.random.normal(next(keys), (fan_in, fan_out), jnp.float32) / np.sqrt(fan_in)

        params = {
            "embed": jax.random.normal(next(keys), (self.vocab_size, d), jnp.float32) * 0.02,
            "position": jax.random.normal(next(keys), (self.seq_len, d), jnp.float32) * 0.02,
            "final_norm": jnp.ones((d,), jnp.float32),
            "head": dense(d, self.num_classes),
        }
        for i in range(self.layers):
            params |= {
                f"block{i}.norm1": jnp.ones((d,), jnp.float32),
                f"block{i}.qkv": dense(d, 3 * d),
                f"block{i}.out": dense(d, d),
                f"block{i}.norm2": jnp.ones((d,), jnp.float32),
                f"block{i}.ff1": dense(d, f),
                f"block{i}.ff2": dense(f, d),
            }
        return params

    def _attention(self, h: jax.Array, qkv_w: jax.Array, out_w: jax.Array) -> jax.Array:
        n, t, d = h.shape
        head_dim = d // self.heads
        q, k, v = jnp.split(h @ qkv_w, 3, axis=-1)
        q, k, v = (z.reshape(n, t, self.heads, head_dim) for z in (q, k, v))
        scores = jnp.einsum("nqhd,nkhd->nhqk", q, k) / np.sqrt(head_dim)
        mixed = jnp.einsum("nhqk,nkhd->nqhd", jax.nn.softmax(scores, axis=-1), v)
        return mixed.reshape(n, t, d) @ out_w

    def predict_batch(self, params: Params, x: Any) -> dict[str, Any]:
        tokens = jnp.clip(x, 0, self.vocab_size - 1)
        h = params["embed"][tokens] + params["position"]
        for i in range(self.layers):
            h = h + self._attention(_layer_norm(h, params[f"block{i}.norm1"]), params[f"block{i}.qkv"],
                                    params[f"block{i}.out"])
            ff = jax.nn.gelu(_layer_norm(h, params[f"block{i}.norm2"]) @ params[f"block{i}.ff1"])
            h = h + ff @ params[f"block{i}.ff2"]
        pooled = _layer_norm(h, params["final_norm"]).mean(axis=1)
        return {"probabilities": jax.nn.softmax(pooled @ params["head"], axis=-1)}


class TinyTransformerEncoder(TransformerEncoder):
    """The same encoder at test size: 16 tokens, width 32, one block."""

    name = "encoder-tiny"
    vocab_size = 64
    seq_len = 16
    d_model = 32
    heads = 2
    layers = 1
    d_ff = 64
    input_shape = (seq_len,)
    example = example_tokens(seq_len, vocab_size)
