"""The loss landscape through Hessian-vector products: top eigenpairs, trace, 2-D loss surface.

`loss_fn(params) -> scalar` is any differentiable function of a parameter pytree (close over the
batch, masks and rngs so that it is deterministic). The Hessian is never formed: H v is the
forward-mode derivative of the gradient along v, `jax.jvp(jax.grad(loss_fn), (p,), (v,))`, at
about the cost of two gradients (the paper's Eq. 2, as in PyHessian).

Eigenpairs come from power iteration with deflation: the i-th run starts from a random vector,
and every iterate is projected off the i - 1 eigenvectors already found before and after
multiplying by H, so it converges to the dominant eigenvector of H restricted to their orthogonal
complement. Power iteration finds the eigenvalues of largest *magnitude*: for a Hessian with a
negative eigenvalue larger in size than the k-th positive one, that negative one is reported
(the sharpness measure of the paper is the largest eigenvalue, which at a trained minimum is the
largest in magnitude too).

Directions and vectors are float32 pytrees shaped like `params`.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax.tree_utils as otu

PyTree = Any
LossFn = Callable[[PyTree], jax.Array]
_TINY = 1e-30


def hvp(loss_fn: LossFn, params: PyTree, v: PyTree) -> PyTree:
  """H(params) v for the Hessian H of `loss_fn`; v shaped like params -> shaped like params."""
  return jax.jvp(jax.grad(loss_fn), (params,), (v,))[1]


def _as_f32(tree: PyTree) -> PyTree:
  return jax.tree.map(lambda x: x.astype(jnp.float32), tree)


def _hvp_f32(loss_fn: LossFn, params: PyTree, v: PyTree) -> PyTree:
  """`hvp` for a float32 v at params of any float dtype (jvp wants tangents in the primal's
  dtype), returned in float32."""
  v = jax.tree.map(lambda p, t: t.astype(p.dtype), params, v)
  return _as_f32(hvp(loss_fn, params, v))


def _normalize(v: PyTree) -> PyTree:
  return otu.tree_scale(1.0 / jnp.maximum(otu.tree_norm(v), _TINY), v)


def _deflate(v: PyTree, basis: Sequence[PyTree]) -> PyTree:
  """v minus its projection on orthonormal `basis` vectors (Gram-Schmidt, one pass each)."""
  for u in basis:
    v = otu.tree_add_scale(v, -otu.tree_vdot(u, v), u)
  return v


class Eigenpairs(NamedTuple):
  values: jax.Array  # [k] float32, in the order found (decreasing magnitude)
  vectors: list  # k unit-norm pytrees shaped like params
  iterations: jax.Array  # [k] int32, power iterations each took


def _power_iteration(matvec: Callable[[PyTree], PyTree], v0: PyTree, basis: Sequence[PyTree],
                     max_iters: int, tol: float) -> tuple[jax.Array, PyTree, jax.Array]:
  """Dominant eigenpair of `matvec` off `basis`: (value [], unit vector, iterations [])."""

  def step(state):
    it, v, lam, _ = state
    w = _deflate(matvec(v), basis)
    new_lam = otu.tree_vdot(v, w)  # Rayleigh quotient: v has unit norm
    return it + 1, _normalize(_deflate(w, basis)), new_lam, lam

  def not_converged(state):
    it, _, lam, prev = state
    moved = jnp.abs(lam - prev) > tol * jnp.maximum(jnp.abs(lam), _TINY)
    return (it < max_iters) & ((it < 2) | moved)

  v0 = _normalize(_deflate(v0, basis))
  zero = jnp.zeros((), jnp.float32)
  it, v, lam, _ = jax.lax.while_loop(not_converged, step, (jnp.zeros((), jnp.int32), v0,
                                                           zero, zero))
  return lam, v, it


def top_eigenpairs(loss_fn: LossFn, params: PyTree, rng: jax.Array, k: int = 2,
                   max_iters: int = 100, tol: float = 1e-5) -> Eigenpairs:
  """The k Hessian eigenvalues of largest magnitude, and their eigenvectors.

  Args:
    loss_fn: params -> scalar loss.
    params: the point at which the Hessian is taken.
    rng: start vectors (standard normal, one per eigenpair).
    k: how many eigenpairs.
    max_iters: power iterations per eigenpair at most.
    tol: stop when the eigenvalue estimate changes by less than tol * |estimate|.
  Returns:
    Eigenpairs(values [k], vectors: k pytrees, iterations [k]).
  """
  if k < 1:
    raise ValueError(f"k must be >= 1, got {k}.")

  @jax.jit
  def run(p, key):
    matvec = lambda v: _hvp_f32(loss_fn, p, v)
    values, vectors, iters = [], [], []
    for key_i in jax.random.split(key, k):
      v0 = otu.tree_random_like(key_i, p, dtype=jnp.float32)
      lam, v, it = _power_iteration(matvec, v0, vectors, max_iters, tol)
      values.append(lam)
      vectors.append(v)
      iters.append(it)
    return jnp.stack(values), vectors, jnp.stack(iters)

  return Eigenpairs(*run(params, rng))


def hutchinson_trace(loss_fn: LossFn, params: PyTree, rng: jax.Array, num_samples: int = 16
                     ) -> jax.Array:
  """tr(H) estimated as the mean of z^T H z over Rademacher vectors z (unbiased; exact for a
  diagonal H, where z_i^2 = 1). Returns [] float32."""

  @jax.jit
  def run(p, key):
    def sample(key_i):
      z = otu.tree_random_like(key_i, p, sampler=jax.random.rademacher, dtype=jnp.float32)
      return otu.tree_vdot(z, _hvp_f32(loss_fn, p, z))
    return jax.lax.map(sample, jax.random.split(key, num_samples)).mean()

  return run(params, rng)


def filter_normalize(direction: PyTree, params: PyTree, eps: float = 1e-10) -> PyTree:
  """Li et al. (2018)'s filter normalisation of a direction, leaf by leaf.

  For a leaf with 2+ axes, each filter (slice along the last axis: an output unit of a Flax
  kernel [..., in, out]) of the direction is rescaled to the norm of the same filter of the
  parameters, so that a step of 1 moves every unit by its own scale. Leaves with fewer than two
  axes (biases, LayerNorm scales, tokens of shape [D]) get a zero direction, as in the paper.
  """
  def one(d, p):
    d = d.astype(jnp.float32)
    if d.ndim < 2:
      return jnp.zeros_like(d)
    axes = tuple(range(d.ndim - 1))
    p_norm = jnp.sqrt((p.astype(jnp.float32) ** 2).sum(axes, keepdims=True))
    d_norm = jnp.sqrt((d ** 2).sum(axes, keepdims=True))
    return d * p_norm / (d_norm + eps)
  return jax.tree.map(one, direction, params)


def loss_surface(loss_fn: LossFn, params: PyTree, directions: tuple[PyTree, PyTree],
                 alphas: Any, betas: Any) -> jax.Array:
  """loss(params + a d1 + b d2) on a grid of steps.

  Args:
    directions: (d1, d2), pytrees shaped like params.
    alphas: [n] steps along d1; betas: [m] steps along d2.
  Returns:
    [n, m] float32, entry (i, j) at (alphas[i], betas[j]).
  """
  alphas = jnp.asarray(alphas, jnp.float32)
  betas = jnp.asarray(betas, jnp.float32)
  d1, d2 = directions

  @jax.jit
  def run(p, a, b):
    coeffs = jnp.stack(jnp.meshgrid(a, b, indexing="ij"), -1).reshape(-1, 2)

    def at(c):
      moved = jax.tree.map(lambda x, u, w: (x + c[0] * u + c[1] * w).astype(x.dtype), p, d1, d2)
      return loss_fn(moved).astype(jnp.float32)
    return jax.lax.map(at, coeffs).reshape(a.shape[0], b.shape[0])

  return run(params, alphas, betas)


class Landscape(NamedTuple):
  alphas: np.ndarray  # [n] steps along the first eigenvector
  betas: np.ndarray  # [m] steps along the second
  surface: np.ndarray  # [n, m] losses
  eigenvalues: np.ndarray  # [2] the two eigenvalues of the directions


def eigen_landscape(loss_fn: LossFn, params: PyTree, rng: jax.Array, *, radius: float = 1.0,
                    num_points: int = 11, filter_norm: bool = False, max_iters: int = 100,
                    tol: float = 1e-5) -> Landscape:
  """The loss on a num_points x num_points grid of steps in [-radius, radius] along the top two
  Hessian eigenvectors (the paper's Figure 7), optionally filter-normalised."""
  pairs = top_eigenpairs(loss_fn, params, rng, k=2, max_iters=max_iters, tol=tol)
  directions = tuple(pairs.vectors)
  if filter_norm:
    directions = tuple(filter_normalize(d, params) for d in directions)
  steps = np.linspace(-radius, radius, num_points, dtype=np.float32)
  surface = loss_surface(loss_fn, params, directions, steps, steps)
  return Landscape(steps, steps.copy(), np.asarray(surface), np.asarray(pairs.values))
