"""The hybrid student of MCMAE / ConvMAE ("ConvViT"): masked convolution stages, then a ViT.

METHODS. Every fact below is read from ConvMAE's public code (github.com/Alpha-VL/ConvMAE):
`models_convmae.py` (the pretraining model, `convmae_convvit_base_patch16`),
`vision_transformer.py` (`PatchEmbed`, `CBlock`, `CMlp`, `ConvViT`), `models_convvit.py` (the
fine-tuning model, `convvit_base_patch16`) and `util/lr_decay.py`. The code is written here
from those facts, not copied.

  stem          three strided "patch embeddings" (`PatchEmbed`): a conv with kernel = stride
                (4, then 2, then 2; total stride 16), then LayerNorm (torch default eps 1e-5)
                and GELU over channels. Base widths 256, 384, 768 (`embed_dim=[256, 384, 768]`).
  stage 1 / 2   `depth` 2 and 2 convolution blocks (`CBlock`) at 1/4 and 1/8 resolution:
                  x = x + DropPath(conv2(dwconv5x5(visible * conv1(LN(x)))))
                  x = x + DropPath(fc2(GELU(fc1(LN(x)))))
                conv1, conv2, fc1, fc2 are 1x1 convolutions (a Linear over channels here), the
                "attention" is a depthwise 5x5 conv with padding 2, LN eps 1e-5 (CBlock builds
                `nn.LayerNorm(dim)`, ignoring the model's eps-1e-6 norm_layer), MLP ratio 4.
                `visible` (1 = visible) multiplies the features right before the depthwise conv,
                and only there (`CBlock.forward(x, mask)`, called with `1 - mask_for_patch`):
                the only op that mixes positions sees zeros at masked positions, so no visible
                output depends on a masked pixel (the strided convs never cross a 1/16 patch,
                everything else is per position).
  transition    `patch_embed3` (the third strided conv) gives the 1/16 tokens, then a Linear
                768 -> 768 (`patch_embed4`), then the position embedding: fixed 2-D sin-cos
                without a CLS row in pretraining (`pos_embed`, requires_grad=False), added
                before the visible tokens are gathered.
  transformer   `depth[2]` = 11 pre-LN ViT blocks (12 heads, MLP ratio 4, qkv bias, LN eps
                1e-6; `layers.Block`), then a final LayerNorm (eps 1e-6).
  stage skips   pretraining only (`models_convmae.forward_encoder`): the stage-1 and stage-2
                outputs are brought to 1/16 by strided convs (kernel = stride 4 and 2,
                `stage1_output_decode`, `stage2_output_decode`), gathered at the visible
                tokens and added to the last block's output before the final norm. The
                fine-tuning model (`models_convvit.ConvViT`) has neither: `stage_skips`.
  no CLS        ConvMAE has no CLS token (its cls_token init is commented out); fine-tuning
                average-pools the last block's tokens and applies `fc_norm` (global_pool).
  masks         random masking of 75% at the 1/16 grid (`random_masking`), repeated to the
                1/8 and 1/4 grids (`mask_for_patch2`, `mask_for_patch1`).
  drop path     linear in [0, rate] over all blocks, convolution blocks included
                (`dpr = linspace(0, drop_path_rate, sum(depth))`).
  init          Linear layers and the third patch conv xavier-uniform (MAE's init); the other
                convs torch's default kaiming-uniform(a=sqrt(5)), i.e. U(+-1/sqrt(fan_in)).
                Conv biases are zero here (torch draws them from that uniform; a deviation
                that only touches the starting point).
  layer decay   patch embeddings and both conv stages are layer 0, transformer block i is
                layer i + 1, the rest the top (`util/lr_decay.py`; `mim_jax.optim.layer_id`).

Our choice for CLS. The transformer never sees a CLS token (as in ConvMAE). To keep the
student's output contract ([B, 1 + n, D], token 0 first) every returned sequence gets a
parameter-free token 0, the mean of its patch tokens: `aux["blocks"][i][:, 0]` is the mean of
block i's patch tokens and `out[:, 0] = norm(mean of the patch tokens)`, ConvMAE's fine-tuning
feature (global average pool + a LayerNorm). Consumers need no change: kNN's "cls" pool is the
average-pooled feature, the classifier's "avg" pool is ConvMAE's, MR-MAE mimics patch tokens
only, and the MAE decoder receives the mean token as its CLS (ConvMAE's decoder has none: one
extra decoder token is our deviation). `aux["attn"][i]` is [B, H, 1 + n, 1 + n]: row 0 is the
mean over patch queries of their attention rows, exactly the weights through which the mean
token's attention output is formed (a mean of weighted sums is the sum weighted by the mean
weights); column 0 is zero (no token attends to the mean token).

Call: `ConvViT(...)(images, ids_keep, *, train, attn_layers, fuse)` as `ViT.__call__` (the
visible-token and full forwards; no dense inpainting, no mid-level mask tokens). `fuse` sums
transformer blocks (0-based) before the skips and the final norm, as the ViT does.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mim_jax import config as config_lib
from mim_jax import masking
from mim_jax.models import layers
from mim_jax.models.vit import PatchGrid, absolute_position_embedding, gather_tokens

F32 = jnp.float32
STEM_EPS = 1e-5  # PatchEmbed's and CBlock's nn.LayerNorm(dim): torch's default eps
# torch's default Conv2d kernel init, kaiming_uniform(a=sqrt(5)): U(+-1/sqrt(fan_in)).
TORCH_CONV_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
STRIDES = (4, 2, 2)
DW_KERNEL = 5


def with_mean_token(x: jax.Array) -> jax.Array:
  """[B, n, D] patch tokens -> [B, 1 + n, D], token 0 their mean (the CLS slot)."""
  return jnp.concatenate([x.mean(axis=1, keepdims=True), x], axis=1)


def with_mean_query(probs: jax.Array) -> jax.Array:
  """Attention [B, H, n, n] -> [B, H, 1 + n, 1 + n] with the mean token (see the module
  docstring): row 0 = mean of the patch rows, column 0 = 0."""
  b, h, n, _ = probs.shape
  rows = jnp.concatenate([probs.mean(axis=2, keepdims=True), probs], axis=2)
  return jnp.concatenate([jnp.zeros((b, h, n + 1, 1), probs.dtype), rows], axis=3)


class StridedConv(nn.Module):
  """Conv with kernel = stride on a token grid: [B, g * g, Cin] (row-major) -> [B, (g/s)^2,
  Cout]; kernel [s, s, Cin, Cout] (HWIO). With `norm_act`, LayerNorm (eps 1e-5) and GELU after
  it (ConvMAE's PatchEmbed)."""
  stride: int
  width: int
  grid: int
  norm_act: bool = True
  dtype: Any = F32
  kernel_init: Any = TORCH_CONV_INIT

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    images = x.reshape(x.shape[0], self.grid, self.grid, x.shape[-1])
    y = layers.PatchEmbed(self.stride, self.width, dtype=self.dtype,
                          kernel_init=self.kernel_init, name="proj")(images)
    if self.norm_act:
      y = layers.activation("gelu")(layers.LayerNorm(STEM_EPS, name="norm")(y))
    return nn.with_logical_constraint(y, ("batch", "length", "embed"))


class DepthwiseConv(nn.Module):
  """Depthwise k x k conv, padding k // 2 ("SAME"), on a token grid [B, g * g, C] -> same."""
  grid: int
  kernel: int = DW_KERNEL
  dtype: Any = F32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, _, c = x.shape
    k = self.param("kernel", layers.partitioned(TORCH_CONV_INIT, (None, None, None, "mlp")),
                   (self.kernel, self.kernel, 1, c), F32)
    y = jax.lax.conv_general_dilated(
        x.reshape(b, self.grid, self.grid, c).astype(self.dtype), k.astype(self.dtype),
        (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c,
        preferred_element_type=F32)
    y = y + self.param("bias", layers.partitioned(nn.initializers.zeros, ("mlp",)), (c,), F32)
    return y.reshape(b, self.grid * self.grid, c)


class ConvBlock(nn.Module):
  """ConvMAE's CBlock on tokens [B, g * g, C]; `visible` [B, g * g, 1] (1 = visible) or None."""
  grid: int
  mlp_dim: int
  drop_path: float = 0.0
  dtype: Any = F32

  def _dense(self, features: int, axes: tuple[str, str], name: str) -> layers.Dense:
    return layers.Dense(features, dtype=self.dtype, kernel_axes=axes,
                        kernel_init=TORCH_CONV_INIT, name=name)

  @nn.compact
  def __call__(self, x: jax.Array, visible: Optional[jax.Array], deterministic: bool
               ) -> jax.Array:
    c = x.shape[-1]
    y = self._dense(c, ("embed", "mlp"), "conv1")(layers.LayerNorm(STEM_EPS, name="ln1")(x))
    if visible is not None:
      y = y * visible  # masked positions enter the only spatial op as zeros
    y = DepthwiseConv(self.grid, dtype=self.dtype, name="attn")(y)
    y = self._dense(c, ("mlp", "embed"), "conv2")(y)
    x = x + layers.drop_path(self.drop_path)(y, deterministic)
    y = self._dense(self.mlp_dim, ("embed", "mlp"), "fc1")(
        layers.LayerNorm(STEM_EPS, name="ln2")(x))
    y = self._dense(c, ("mlp", "embed"), "fc2")(layers.activation("gelu")(y))
    x = x + layers.drop_path(self.drop_path)(y, deterministic)
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class ConvViT(PatchGrid, nn.Module):
  """The hybrid student; sizes from `config.CONV_SIZES` through `ConvViT.from_variant`.

  Attributes:
    widths, depths: per stage (1/4, 1/8, 1/16); num_heads and mlp_ratio (every stage's MLP).
    stage_skips: add the stage-1/2 outputs (strided convs to 1/16) to the last block's output
      before the final norm: ConvMAE's pretraining encoder (True), its fine-tuning one (False).
    posemb: "sincos" (fixed, no CLS row) | "learned" | "none".
    remat: per transformer block, `layers.REMAT_POLICIES` or "none".
  """
  widths: tuple[int, int, int]
  depths: tuple[int, int, int]
  num_heads: int
  mlp_ratio: int = 4
  image_size: int = 224
  drop_path: float = 0.0
  posemb: str = "sincos"
  stage_skips: bool = False
  dtype: Any = F32
  remat: str = "none"

  @classmethod
  def from_variant(cls, variant: str, **kwargs) -> "ConvViT":
    size = config_lib.decode_conv_variant(variant)
    return cls(widths=size.widths, depths=size.depths, num_heads=size.heads,
               mlp_ratio=size.mlp_ratio, **kwargs)

  # ---- the student's contract (what objectives, evaluation and analysis read) ----------------
  @property
  def patch(self) -> int:
    """The stem's total stride: one 1/16 token covers patch x patch pixels."""
    return config_lib.CONV_PATCH

  @property
  def width(self) -> int:
    return self.widths[2]

  @property
  def depth(self) -> int:
    """Transformer blocks (what fusion, attention layers and layer decay count)."""
    return self.depths[2]

  def position_embedding(self) -> jax.Array:
    """[N, D], no CLS row."""
    return absolute_position_embedding(self, self.posemb, self.grid, self.width,
                                       cls_token=False)

  def drop_path_rates(self) -> list[float]:
    """One rate per block, conv blocks first, linear from 0 to `drop_path` (ConvMAE's dpr)."""
    total = sum(self.depths)
    return [self.drop_path * i / max(total - 1, 1) for i in range(total)]

  # ---- forward ------------------------------------------------------------------------------
  def _conv_stage(self, s: int, x: jax.Array, visible: Optional[jax.Array], train: bool
                  ) -> jax.Array:
    """Stage s (1: 1/4, 2: 1/8): its strided embedding of x [B, g_in^2, C], then its blocks."""
    g = self.grid[0] * (4 if s == 1 else 2)
    x = StridedConv(STRIDES[s - 1], self.widths[s - 1], g * STRIDES[s - 1], dtype=self.dtype,
                    name=f"patch_embed{s}")(x)
    first = 0 if s == 1 else self.depths[0]
    rates = self.drop_path_rates()
    for j in range(self.depths[s - 1]):
      x = ConvBlock(g, self.mlp_ratio * self.widths[s - 1], rates[first + j], dtype=self.dtype,
                    name=f"conv{s}_block{j}")(x, visible, not train)
    return x

  @nn.compact
  def __call__(self, images: jax.Array, ids_keep: Optional[jax.Array] = None, *,
               train: bool = False, attn_layers: Sequence[int] = (),
               fuse: Sequence[int] = ()):
    """Hybrid forward.

    Args:
      images: float [B, H, W, C], H = W = `image_size`.
      ids_keep: int32 [B, n] visible 1/16 patches (the conv stages see the same mask, repeated
        to their grids by `masking.multiscale_masks`), or None (everything visible).
      train: enables drop path (rng stream "dropout").
      attn_layers: transformer blocks whose attention goes to `aux["attn"]` (negative = from
        the end), each [B, H, 1 + n, 1 + n] (see the module docstring).
      fuse: transformer blocks summed before the final norm (MR-MAE's fusion); () = the last.
    Returns:
      (out [B, 1 + n, D], aux), token 0 the mean token; aux["blocks"]: the residual stream
      after each transformer block with its mean token, `depth` arrays [B, 1 + n, D].
    """
    if images.shape[1:3] != (self.image_size, self.image_size):
      raise ValueError(f"Student expects {self.image_size}x{self.image_size} images, got "
                       f"{images.shape[1]}x{images.shape[2]}.")
    vis1 = vis2 = None
    if ids_keep is not None:
      visible = masking.visible_from_ids(ids_keep, self.num_patches)
      vis1, vis2 = (m[..., None] for m in masking.multiscale_masks(visible, self.grid))
    x = images.reshape(images.shape[0], -1, images.shape[-1])  # pixels as a token grid
    x1 = self._conv_stage(1, x, vis1, train)
    x2 = self._conv_stage(2, x1, vis2, train)
    g = self.grid[0]
    x = StridedConv(STRIDES[2], self.width, 2 * g, dtype=self.dtype,
                    kernel_init=layers.PATCH_INIT, name="patch_embed3")(x2)
    # Columns named (not rows, as a plain ("embed", "mlp") Dense would): its bias is sharded too.
    x = layers.Dense(self.width, dtype=self.dtype, kernel_axes=(None, "embed"),
                     name="patch_embed4")(x)
    x = x + self.position_embedding()[None]
    skips = None
    if self.stage_skips:
      skips = (StridedConv(4, self.width, 4 * g, norm_act=False, dtype=self.dtype,
                           name="skip1")(x1) +
               StridedConv(2, self.width, 2 * g, norm_act=False, dtype=self.dtype,
                           name="skip2")(x2))
    if ids_keep is not None:
      x = gather_tokens(x, ids_keep)
      skips = None if skips is None else gather_tokens(skips, ids_keep)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    return self.encode(x, skips, train=train, attn_layers=attn_layers, fuse=fuse)

  def encode(self, x: jax.Array, skips: Optional[jax.Array], *, train: bool,
             attn_layers: Sequence[int], fuse: Sequence[int]):
    """Transformer blocks on patch tokens [B, n, D], then skips, mean tokens, final norm."""
    blocks, attn = [], {}
    wanted = {i % self.depth for i in attn_layers}
    rates = self.drop_path_rates()[sum(self.depths[:2]):]
    for i in range(self.depth):
      block = layers.block_class(self.remat)(
          self.num_heads, self.mlp_ratio * self.width, drop_path=rates[i], dtype=self.dtype,
          name=f"block{i}")
      x, probs = block(x, None, not train, i in wanted)
      blocks.append(x)
      if i in wanted:
        attn[i] = with_mean_query(probs)
    if fuse:
      x = sum(blocks[i] for i in fuse)
    if skips is not None:
      x = x + skips
    out = layers.LayerNorm(1e-6, name="norm")(with_mean_token(x))
    return out, {"blocks": tuple(with_mean_token(y) for y in blocks), "attn": attn}
