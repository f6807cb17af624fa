"""The student Vision Transformer (Flax linen).

Pre-LN blocks, LayerNorm eps 1e-6, qkv bias, GELU MLP, stochastic depth, MAE's fixed 2-D sin-cos
position embedding and MAE's initialisation.

Forward on visible tokens (MaskAlign, MAE, MR-MAE): the position embedding is added to all
patches, then `ids_keep` gathers the visible ones, then CLS is prepended; the sequence is
[CLS, visible patches].

Returns `(out, aux)`: `out` = final LayerNorm of the tokens [B, 1 + n, D]; `aux["blocks"]` = the
residual stream after each block (before the final LayerNorm), a tuple of `depth` arrays
[B, 1 + n, D]; `aux["attn"]` = {layer index: probs [B, H, L, L]} for the layers asked for.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mim_jax import config as config_lib
from mim_jax.models import layers

F32 = jnp.float32


def gather_tokens(x: jax.Array, ids: jax.Array) -> jax.Array:
  """x [B, N, D], ids [B, n] int -> [B, n, D]."""
  return jnp.take_along_axis(x, ids[..., None], axis=1)


class ViT(nn.Module):
  """Student ViT. Sizes come from `config.SIZES` through `ViT.from_variant`."""
  patch: int
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  image_size: int = 224
  drop_path: float = 0.0
  posemb: str = "sincos"  # "sincos" (fixed, MAE) | "learned" | "none"
  layer_scale: Optional[float] = None
  dtype: Any = F32

  @classmethod
  def from_variant(cls, variant: str, **kwargs) -> "ViT":
    size, patch = config_lib.decode_variant(variant)
    return cls(patch=patch, width=size.width, depth=size.depth, num_heads=size.heads,
               mlp_dim=size.mlp_dim, **kwargs)

  @property
  def grid(self) -> tuple[int, int]:
    if self.image_size % self.patch:
      raise ValueError(f"image_size {self.image_size} is not a multiple of patch {self.patch}")
    g = self.image_size // self.patch
    return (g, g)

  @property
  def num_patches(self) -> int:
    return self.grid[0] * self.grid[1]

  def position_embedding(self) -> jax.Array:
    """[N + 1, D]: row 0 is CLS's."""
    n = self.num_patches
    if self.posemb == "sincos":
      return layers.posemb_sincos_2d(self.grid, self.width, cls_token=True)
    if self.posemb == "learned":
      return self.param("pos_embedding", layers.partitioned(layers.trunc_normal(0.02),
                                                            (None, "embed")), (n + 1, self.width))
    if self.posemb == "none":
      return jnp.zeros((n + 1, self.width), F32)
    raise ValueError(f"Unknown posemb {self.posemb!r}: use 'sincos', 'learned' or 'none'.")

  @nn.compact
  def __call__(self, images: jax.Array, ids_keep: Optional[jax.Array] = None, *,
               train: bool = False, attn_layers: Sequence[int] = ()):
    """images [B, H, W, C] float; ids_keep [B, n] int32 or None (all patches)."""
    if images.shape[1:3] != (self.image_size, self.image_size):
      raise ValueError(f"Student expects {self.image_size}x{self.image_size} images, got "
                       f"{images.shape[1]}x{images.shape[2]}.")
    x = layers.PatchEmbed(self.patch, self.width, dtype=self.dtype, name="patch_embed")(images)
    pos = self.position_embedding()
    x = x + pos[None, 1:]
    if ids_keep is not None:
      x = gather_tokens(x, ids_keep)
    cls = self.param("cls", layers.partitioned(nn.initializers.normal(0.02), (None, None, "embed")),
                     (1, 1, self.width), F32)
    cls = jnp.broadcast_to(cls + pos[None, :1], (x.shape[0], 1, self.width))
    x = jnp.concatenate([cls, x], axis=1)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    return self.encode(x, train=train, attn_layers=attn_layers)

  def encode(self, x: jax.Array, *, train: bool, attn_layers: Sequence[int] = (),
             bias: Optional[jax.Array] = None):
    """Runs the blocks and the final norm on a token sequence [B, L, D]."""
    blocks, attn = [], {}
    wanted = {i % self.depth for i in attn_layers}
    for i in range(self.depth):
      rate = self.drop_path * i / max(self.depth - 1, 1)  # linear stochastic-depth decay
      x, probs = layers.Block(self.num_heads, self.mlp_dim, drop_path=rate,
                              layer_scale=self.layer_scale, dtype=self.dtype,
                              name=f"block{i}")(x, bias, not train, i in wanted)
      blocks.append(x)
      if i in wanted:
        attn[i] = probs
    out = layers.LayerNorm(1e-6, name="norm")(x)
    return out, {"blocks": tuple(blocks), "attn": attn}

