"""The teachers' network: one ViT for both transformers' `ViTModel` (DINO) and `CLIPVisionModel`.

Both are pre-LN ViTs built from the shared layers (`mim_jax.models.layers`); they differ only in
switches recorded in `Arch`:

  ViTModel (DINO):  patches (conv with bias) -> [CLS, patches] + pos -> blocks -> layernorm
  CLIP vision:      patches (conv, no bias)  -> [CLS, patches] + pos -> pre_layrnorm -> blocks
                    -> post_layernorm (transformers applies it to CLS only; we apply it to every
                    token, which gives the same CLS) -> visual_projection of CLS (optional)

Parameter tree (what the converters produce):
  patch_embed/{kernel [p, p, 3, D], bias [D]?}, cls [1, 1, D], pos_embedding [1 + g*g, D],
  pre_norm/{scale, bias}?, block{i}/(ln1, attn, ln2, mlp as in layers.Block), norm/{scale, bias},
  proj/kernel [D, P]?
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mim_jax.models import layers

F32 = jnp.float32


@dataclasses.dataclass(frozen=True)
class Arch:
  """Static description of a teacher network (hashable: safe as a jit static argument).

  `grid` is the side of the token grid the position embedding is laid out for; the network runs
  on square images of side grid * patch.
  """
  patch: int
  grid: int
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  act: str               # a name in layers.ACTIVATIONS
  ln_eps: float
  qkv_bias: bool = True
  patch_bias: bool = True   # ViTModel: True; CLIP: False
  pre_norm: bool = False    # CLIP's pre_layrnorm
  proj_dim: int = 0         # CLIP's visual_projection width; 0 = none

  @property
  def image_size(self) -> int:
    return self.grid * self.patch

  @property
  def num_patches(self) -> int:
    return self.grid * self.grid


def layer_indices(attn_layers: Sequence[int], depth: int) -> tuple[int, ...]:
  """Non-negative, sorted, unique block indices; negative ones count from the end."""
  out = set()
  for i in attn_layers:
    if not -depth <= i < depth:
      raise ValueError(f"attention layer {i} out of range for a teacher of depth {depth}")
    out.add(i % depth)
  return tuple(sorted(out))


class TeacherNet(nn.Module):
  """images [B, S, S, 3] (teacher-normalised, S = arch.image_size) -> dict of features.

  Returns {"hidden_states": tuple of depth + 1 arrays [B, 1 + N, D] (embedding output, for CLIP
  after pre_norm, then each block's output), "final": norm of the last block output [B, 1 + N, D],
  "pooled": final[:, 0] [B, D], "attn": {i: probs [B, H, 1 + N, 1 + N]} for i in attn_layers
  (non-negative indices), "embeds": [B, P] when arch.proj_dim}.

  `dtype` is the teacher's whole dtype: matmul inputs and every activation (residual stream,
  LayerNorm outputs, attention scores), so a bf16 teacher stores nothing in float32 but its
  attention maps; statistics stay float32 (`layers`' docstring). The outputs are in `dtype`.
  """
  arch: Arch
  dtype: Any = F32

  @nn.compact
  def __call__(self, images: jax.Array, attn_layers: Sequence[int] = ()) -> dict[str, Any]:
    a = self.arch
    if images.shape[1:] != (a.image_size, a.image_size, 3):
      raise ValueError(f"TeacherNet expects [B, {a.image_size}, {a.image_size}, 3] images, got "
                       f"{images.shape}")
    x = layers.PatchEmbed(a.patch, a.width, use_bias=a.patch_bias, dtype=self.dtype,
                          stream_dtype=self.dtype, name="patch_embed")(images)
    cls = self.param("cls", nn.initializers.zeros, (1, 1, a.width), F32)
    pos = self.param("pos_embedding", nn.initializers.zeros, (a.num_patches + 1, a.width), F32)
    cls = jnp.broadcast_to(cls.astype(x.dtype), (x.shape[0], 1, a.width))
    x = jnp.concatenate([cls, x], axis=1) + pos[None].astype(x.dtype)
    if a.pre_norm:
      x = layers.LayerNorm(a.ln_eps, stream_dtype=self.dtype, name="pre_norm")(x)
    hidden, attn = [x], {}
    wanted = layer_indices(attn_layers, a.depth)
    for i in range(a.depth):
      x, probs = layers.Block(a.num_heads, a.mlp_dim, act=a.act, ln_eps=a.ln_eps,
                              qkv_bias=a.qkv_bias, dtype=self.dtype, stream_dtype=self.dtype,
                              name=f"block{i}")(
                                  x, None, True, i in wanted)
      hidden.append(x)
      if i in wanted:
        attn[i] = probs
    final = layers.LayerNorm(a.ln_eps, stream_dtype=self.dtype, name="norm")(x)
    out = {"hidden_states": tuple(hidden), "final": final, "pooled": final[:, 0], "attn": attn}
    if a.proj_dim:
      out["embeds"] = layers.Dense(a.proj_dim, use_bias=False, dtype=self.dtype,
                                   kernel_axes=("embed", None), stream_dtype=self.dtype,
                                   name="proj")(final[:, 0])
    return out


def param_shapes(arch: Arch) -> Any:
  """The parameter tree of TeacherNet(arch) as jax.ShapeDtypeStruct leaves (no compute)."""
  net = TeacherNet(arch)
  images = jax.ShapeDtypeStruct((1, arch.image_size, arch.image_size, 3), F32)
  variables = jax.eval_shape(net.init, jax.random.key(0), images)
  return nn.meta.unbox(variables["params"])
