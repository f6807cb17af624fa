"""MAE's lightweight pixel decoder (MAE, robust MAE, MR-MAE).

Input: the encoder's output on [CLS, visible patches], [B, 1 + n, De], in the order the encoder saw
them (`Masks.ids_keep`), and `Masks.ids_restore` [B, N]. The decoder

  1. embeds every token with a Linear De -> Dd (xavier-uniform, zero bias),
  2. appends N - n copies of one learnable mask token (normal(0.02)) after the visible patches
     and puts every patch back at its original position with `ids_restore` (CLS stays first),
  3. adds MAE's fixed 2-D sin-cos position embedding of width Dd (zeros for CLS),
  4. runs `depth` pre-LN blocks (LayerNorm eps 1e-6, qkv bias, GELU MLP, no stochastic depth),
     optionally with dropout on the attention probabilities ("drop edge", robust MAE: 0.3),
  5. applies a final LayerNorm and a Linear Dd -> p*p*3 to every token, and drops CLS.

Output: [B, N, p*p*3], one pixel prediction per patch in the original (row-major) patch order,
pixels within a patch in (row, column, channel) order, as `layers.patchify` lays out targets.
Defaults are MAE's: 512 wide, 8 blocks, 16 heads, MLP 2048.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mim_jax.models import layers

F32 = jnp.float32


def unshuffle(visible: jax.Array, mask_token: jax.Array, ids_restore: jax.Array) -> jax.Array:
  """Puts visible patch tokens back at their positions and fills the rest with the mask token.

  Args:
    visible: [B, n, D] patch tokens (no CLS) in the encoder's order (`ids_keep`).
    mask_token: [D] (or broadcastable to [B, N - n, D]).
    ids_restore: int [B, N], the rank of each original patch in the shuffle "visible first,
      then masked" (`masking.Masks.ids_restore`).
  Returns:
    [B, N, D]: row i holds patch i's token, the mask token where patch i is masked.
  """
  b, n, d = visible.shape
  num_patches = ids_restore.shape[1]
  fill = jnp.broadcast_to(mask_token.astype(visible.dtype), (b, num_patches - n, d))
  shuffled = jnp.concatenate([visible, fill], axis=1)  # [B, N, D] in shuffle order
  return jnp.take_along_axis(shuffled, ids_restore[..., None].astype(jnp.int32), axis=1)


class Decoder(nn.Module):
  """MAE decoder. `__call__(x [B, 1 + n, De], ids_restore [B, N], *, train) -> [B, N, out_dim]`.

  Attributes:
    grid: (gh, gw) patch grid of the student, gh * gw = N.
    out_dim: prediction width per patch, p * p * 3 for pixels.
    width, depth, num_heads, mlp_dim: decoder transformer sizes.
    attn_drop: dropout rate on the attention probabilities, active only when `train`
      (rng stream "dropout").
    dtype: matmul input dtype (parameters stay float32).
    stream_dtype: the blocks' residual stream and activations (`layers`' docstring; the
      student's `student.stream_dtype`); the final norm's output, what the prediction reads, is
      float32 whatever it is.
  """
  grid: tuple[int, int]
  out_dim: int
  width: int = 512
  depth: int = 8
  num_heads: int = 16
  mlp_dim: int = 2048
  attn_drop: float = 0.0
  dtype: Any = F32
  stream_dtype: Any = F32

  @nn.compact
  def __call__(self, x: jax.Array, ids_restore: jax.Array, *, train: bool = False) -> jax.Array:
    num_patches = self.grid[0] * self.grid[1]
    if ids_restore.shape[1] != num_patches:
      raise ValueError(f"ids_restore covers {ids_restore.shape[1]} patches but the decoder's grid "
                       f"{self.grid} has {num_patches}.")
    # The decoder has its own width: "embed" names its rows for sharding; its columns are the
    # decoder's embedding, left replicated (one mesh axis may not appear twice in a spec).
    x = layers.Dense(self.width, dtype=self.dtype, kernel_axes=("embed", None),
                     name="embed")(x)
    mask_token = self.param("mask_token", layers.partitioned(nn.initializers.normal(0.02),
                                                             ("embed",)), (self.width,), F32)
    patches = unshuffle(x[:, 1:], mask_token, ids_restore)
    x = jnp.concatenate([x[:, :1], patches], axis=1)
    x = x + layers.posemb_sincos_2d(self.grid, self.width, cls_token=True)[None]
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    for i in range(self.depth):
      x, _ = layers.Block(self.num_heads, self.mlp_dim, attn_drop=self.attn_drop,
                          dtype=self.dtype, stream_dtype=self.stream_dtype,
                          name=f"block{i}")(x, None, not train)
    x = layers.LayerNorm(1e-6, name="norm")(x)
    pred = layers.Dense(self.out_dim, dtype=self.dtype, kernel_axes=("embed", None),
                        name="pred")(x)
    return pred[:, 1:]
