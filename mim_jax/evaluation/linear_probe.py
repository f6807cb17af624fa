"""Linear probe of frozen features, MAE's protocol: BatchNorm without affine, then a linear head.

The encoder is frozen and in eval mode, so its features are computed once (`features.py`) and the
probe trains on them: only the head [D, C] + [C] learns.

BatchNorm without affine (eps 1e-6): MAE puts a BatchNorm1d(affine=False) before the head; with
frozen features its running statistics converge to the training set's mean and variance, which
are what it normalises with at test time. We normalise with exactly those statistics, computed
once over the training features, in training and at test time (the per-batch statistics torch
uses while training only add noise to a linear model), which makes the probe a deterministic
function of (features, seed).

Optimiser: LARS (MAE: base lr 0.1, lr = base_lr * batch / 256, momentum 0.9, weight decay 0,
90 epochs, 10 warmup epochs, cosine to 0; weight decay and the trust ratio apply to the kernel
only) or plain SGD with momentum. LARS's trust ratio (0.001 |w| / |g|) makes its steps tiny
relative to the lr; on a small dataset (the digits demo: ~1.5k features) use optimizer="sgd"
with base_lr ~1, or LARS with a base_lr near 100. Head init: kernel trunc_normal(0.01), bias 0. The whole
training is one jitted scan over epochs of shuffled minibatches (the remainder of an epoch is
dropped; a batch size >= n means full-batch steps).
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mim_jax import optim
from mim_jax.models import layers

BN_EPS = 1e-6


class LinearProbe(NamedTuple):
  """Feature statistics [D] of the non-affine BatchNorm and the head kernel [D, C], bias [C]."""
  mean: jax.Array
  var: jax.Array
  kernel: jax.Array
  bias: jax.Array


def batchnorm(feats: jax.Array, mean: jax.Array, var: jax.Array) -> jax.Array:
  """BatchNorm without affine: (x - mean) / sqrt(var + 1e-6), feats [n, D]."""
  return (feats - mean) * jax.lax.rsqrt(var + BN_EPS)


def probe_logits(probe: LinearProbe, feats: Any) -> jax.Array:
  """feats [n, D] -> logits [n, C]."""
  x = batchnorm(jnp.asarray(feats, jnp.float32), probe.mean, probe.var)
  return jnp.dot(x, probe.kernel, precision=jax.lax.Precision.HIGHEST) + probe.bias


def _cross_entropy(params: dict, x: jax.Array, y: jax.Array) -> jax.Array:
  logits = jnp.dot(x, params["kernel"], precision=jax.lax.Precision.HIGHEST) + params["bias"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


@functools.partial(jax.jit, static_argnames=("num_classes", "epochs", "batch_size", "optimizer",
                                             "warmup_epochs"))
def _train(x, y, key, base_lr, momentum, weight_decay, *, num_classes, epochs, batch_size,
           optimizer, warmup_epochs):
  n, d = x.shape
  steps_per_epoch = n // batch_size
  total = epochs * steps_per_epoch
  warmup = min(warmup_epochs * steps_per_epoch, total)
  lr = base_lr * batch_size / 256
  schedule = optax.join_schedules(
      [optax.linear_schedule(0.0, lr, max(warmup, 1)),
       optax.cosine_decay_schedule(lr, max(total - warmup, 1))], [warmup])
  tx = optim.momentum_optimizer(optimizer, schedule, momentum=momentum,
                                weight_decay=weight_decay)
  k_init, k_data = jax.random.split(key)
  params = {"kernel": layers.trunc_normal(0.01)(k_init, (d, num_classes)),
            "bias": jnp.zeros((num_classes,), jnp.float32)}

  def step(carry, ids):
    params, opt_state = carry
    grads = jax.grad(_cross_entropy)(params, x[ids], y[ids])
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), None

  def epoch(carry, e):
    order = jax.random.permutation(jax.random.fold_in(k_data, e), n)
    batches = order[:steps_per_epoch * batch_size].reshape(steps_per_epoch, batch_size)
    return jax.lax.scan(step, carry, batches)[0], None

  (params, _), _ = jax.lax.scan(epoch, (params, tx.init(params)), jnp.arange(epochs))
  return params


def train_linear_probe(feats: Any, labels: Any, num_classes: int, *, epochs: int = 90,
                       batch_size: int = 256, base_lr: float = 0.1, optimizer: str = "lars",
                       momentum: float = 0.9, weight_decay: float = 0.0, warmup_epochs: int = 10,
                       seed: int = 0) -> LinearProbe:
  """Trains the head on frozen features [n, D] with labels [n] in [0, num_classes)."""
  x = jnp.asarray(feats, jnp.float32)
  y = jnp.asarray(labels, jnp.int32)
  if x.ndim != 2 or y.shape != x.shape[:1]:
    raise ValueError(f"Expected feats [n, D] and labels [n], got {x.shape} and {y.shape}.")
  mean, var = x.mean(axis=0), x.var(axis=0)
  params = _train(batchnorm(x, mean, var), y, jax.random.key(seed), base_lr, momentum,
                  weight_decay, num_classes=int(num_classes), epochs=int(epochs),
                  batch_size=int(min(batch_size, x.shape[0])), optimizer=optimizer,
                  warmup_epochs=int(warmup_epochs))
  return LinearProbe(mean=mean, var=var, kernel=params["kernel"], bias=params["bias"])


def probe_accuracy(probe: LinearProbe, feats: Any, labels: Any) -> float:
  """Top-1 accuracy of the probe on feats [m, D], labels [m]."""
  preds = np.asarray(jnp.argmax(probe_logits(probe, feats), axis=-1))
  return float(np.mean(preds == np.asarray(labels)))


def linear_probe_accuracy(train_feats: Any, train_labels: Any, test_feats: Any, test_labels: Any,
                          num_classes: int, **kwargs) -> float:
  """Trains on the train features (kwargs of `train_linear_probe`), returns test top-1."""
  probe = train_linear_probe(train_feats, train_labels, num_classes, **kwargs)
  return probe_accuracy(probe, test_feats, test_labels)
