"""Weighted k-nearest-neighbour classification of frozen features (DINO's protocol).

For each query: cosine similarity to every training feature, the k most similar neighbours
(k = 20), each voting for its label with weight exp(sim / T) (T = 0.07); the prediction is the
class with the largest summed vote. Features are L2-normalised here, so cosine = dot product.

Queries are processed in chunks of `chunk_size` (a `lax.map` over padded chunks), so memory is
[chunk_size, n_train] similarities, not [n_test, n_train].
"""
from __future__ import annotations

import functools
from typing import Any, Iterable, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from mim_jax.evaluation import features as features_lib


def knn_votes(train_feats: jax.Array, train_labels: jax.Array, test_feats: jax.Array, *,
              k: int = 20, temperature: float = 0.07, num_classes: int) -> jax.Array:
  """Summed votes [m, C] of the k nearest training points of each query (one chunk, no
  chunking). train_feats [n, D], train_labels [n] int, test_feats [m, D]."""
  train = features_lib.l2_normalize(train_feats)
  test = features_lib.l2_normalize(test_feats)
  sims = jnp.einsum("md,nd->mn", test, train, precision=jax.lax.Precision.HIGHEST)
  top_sims, top_ids = jax.lax.top_k(sims, min(k, train.shape[0]))  # [m, k]
  weights = jnp.exp(top_sims / temperature)
  onehot = jax.nn.one_hot(train_labels[top_ids], num_classes, dtype=jnp.float32)  # [m, k, C]
  return jnp.einsum("mk,mkc->mc", weights, onehot)


@functools.partial(jax.jit, static_argnames=("k", "temperature", "num_classes", "chunk_size"))
def _classify(train_feats, train_labels, test_feats, *, k, temperature, num_classes, chunk_size):
  m, d = test_feats.shape
  num_chunks = -(-m // chunk_size)
  padded = jnp.zeros((num_chunks * chunk_size, d), test_feats.dtype).at[:m].set(test_feats)
  vote = functools.partial(knn_votes, train_feats, train_labels, k=k, temperature=temperature,
                           num_classes=num_classes)
  preds = jax.lax.map(lambda q: jnp.argmax(vote(q), axis=-1),
                      padded.reshape(num_chunks, chunk_size, d))
  return preds.reshape(-1)[:m].astype(jnp.int32)


def knn_classify(train_feats: Any, train_labels: Any, test_feats: Any, k: int = 20,
                 temperature: float = 0.07, num_classes: Optional[int] = None,
                 chunk_size: int = 256) -> jax.Array:
  """Predicted labels [m] int32 of the queries test_feats [m, D].

  train_feats [n, D], train_labels [n] int in [0, num_classes) (None: max label + 1).
  Ties in the vote go to the lowest class index.
  """
  train_labels = jnp.asarray(train_labels, jnp.int32)
  if num_classes is None:
    num_classes = int(jnp.max(train_labels)) + 1
  if k < 1 or temperature <= 0:
    raise ValueError(f"kNN needs k >= 1 and temperature > 0, got k={k}, T={temperature}.")
  test_feats = jnp.asarray(test_feats, jnp.float32)
  return _classify(jnp.asarray(train_feats, jnp.float32), train_labels, test_feats, k=int(k),
                   temperature=float(temperature), num_classes=int(num_classes),
                   chunk_size=int(max(1, min(chunk_size, test_feats.shape[0]))))


def knn_accuracy(train_feats: Any, train_labels: Any, test_feats: Any, test_labels: Any,
                 **kwargs) -> float:
  """Top-1 accuracy of `knn_classify` (kwargs: k, temperature, num_classes, chunk_size)."""
  preds = np.asarray(knn_classify(train_feats, train_labels, test_feats, **kwargs))
  return float(np.mean(preds == np.asarray(test_labels)))


def knn_evaluate(apply_fn: features_lib.EncoderFn, params: Any,
                 train_iter: Iterable[Mapping[str, Any]], test_iter: Iterable[Mapping[str, Any]],
                 *, k: int = 20, temperature: float = 0.07, num_classes: Optional[int] = None
                 ) -> dict[str, float]:
  """Features of both passes (padding dropped), then kNN top-1: {"knn/top1": accuracy}.

  `apply_fn`: e.g. `features.encoder_fn(student)`; the iterators: one eval pass each over the
  train split (no augmentation) and the test split.
  """
  train_feats, train_labels = features_lib.extract_features(apply_fn, params, train_iter)
  test_feats, test_labels = features_lib.extract_features(apply_fn, params, test_iter)
  acc = knn_accuracy(train_feats, train_labels, test_feats, test_labels, k=k,
                     temperature=temperature, num_classes=num_classes)
  return {"knn/top1": acc}
