"""Features of a frozen encoder over one pass of an eval iterator.

An encoder function maps (params, images [B, H, W, 3]) -> features [B, D]; `encoder_fn` builds
the usual one from the student ViT: the final-normed tokens in eval mode (no drop path), pooled
by the CLS token or the mean of the patch tokens, optionally L2-normalised.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from mim_jax.models.vit import ViT

EncoderFn = Callable[[Any, jax.Array], jax.Array]
POOLS = ("cls", "mean")


def check_pool(pool: str) -> None:
  if pool not in POOLS:
    raise ValueError(f"Unknown pool {pool!r}: use one of {POOLS}.")


def pool_tokens(tokens: jax.Array, pool: str) -> jax.Array:
  """[B, 1 + N, D] -> [B, D]: the CLS token, or the mean of the patch tokens."""
  check_pool(pool)
  return tokens[:, 0] if pool == "cls" else tokens[:, 1:].mean(axis=1)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """Rows scaled to unit L2 norm (zero rows stay zero)."""
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps))


def encoder_fn(vit: ViT, pool: str = "cls", normalize: bool = True) -> EncoderFn:
  """(student params, images [B, H, W, 3]) -> features [B, D] float32, eval mode."""
  check_pool(pool)

  def apply(params: Any, images: jax.Array) -> jax.Array:
    out, _ = vit.apply({"params": params}, images, train=False)
    feats = pool_tokens(out, pool)
    return l2_normalize(feats) if normalize else feats.astype(jnp.float32)

  return apply


def to_host(x: jax.Array) -> np.ndarray:
  """A global array as one numpy array on every host (gathered across processes if needed)."""
  if getattr(x, "is_fully_addressable", True):
    return np.asarray(jax.device_get(x))
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def extract_features(apply_fn: EncoderFn, params: Any, iterator: Iterable[Mapping[str, Any]]
                     ) -> tuple[np.ndarray, np.ndarray]:
  """Runs `apply_fn` over every batch; returns (feats [n, D] float32, labels [n] int32).

  Batches are {"image" [B, H, W, 3], "label" [B], "valid" [B] bool (optional)}; rows with
  valid=False (the padding of the last eval batches) are dropped, so n is the split's size.
  """
  fn = jax.jit(apply_fn)
  feats, labels = [], []
  for batch in iterator:
    f = to_host(fn(params, batch["image"]))
    lab = to_host(batch["label"])
    keep = to_host(batch["valid"]).astype(bool) if "valid" in batch else np.ones(len(lab), bool)
    feats.append(f[keep].astype(np.float32))
    labels.append(lab[keep].astype(np.int32))
  if not feats:
    raise ValueError("The iterator yielded no batches.")
  return np.concatenate(feats), np.concatenate(labels)
