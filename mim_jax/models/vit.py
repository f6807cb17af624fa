"""The student Vision Transformer (Flax linen).

Pre-LN blocks, LayerNorm eps 1e-6, qkv bias, GELU MLP, stochastic depth, MAE's fixed 2-D sin-cos
position embedding and MAE's initialisation by default. Options for BEiT-style students
(MaskDistill): BEiT's relative position bias, layer scale, BEiT's initialisation. Options for a
student started from a CLIP vision tower (`init_from`): its MLP activation ("quick_gelu"), its
LayerNorm epsilon (1e-5) and its LayerNorm before the first block (`pre_norm`).

Three ways to feed it, one `__call__`:

- Visible tokens (MaskAlign, MAE, MR-MAE): `model(images, ids_keep)`. The position embedding is
  added to all patches, then `ids_keep` gathers the visible ones, then CLS is prepended; the
  sequence is [CLS, visible patches].
- Dense inpainting (MaskDistill, BEiT): `model(images, mask=mask)`. Every patch embedding is
  blended with a learnable mask token, `x * (1 - m) + mask_token * m`, the position embedding is
  added, CLS is prepended; the sequence is [CLS, all N patches].
- Everything: `model(images)`, the full sequence [CLS, all N patches] (fine-tuning, FD).

Either visible-token or full forward can also take a second set of mask tokens inside the encoder
(robust MAE's "mid-level masked tokens") at depth `mid_depth`: `mid_mask` replaces chosen tokens
of the sequence, `mid_ids` appends new tokens for chosen patches; see `__call__`.

Returns `(out, aux)`: `out` = final LayerNorm of the tokens [B, L, D]; `aux["blocks"]` = the
residual stream after each block (before the final LayerNorm), a tuple of `depth` arrays
[B, L, D]; `aux["attn"]` = {layer index: probs [B, H, L, L]} for the layers asked for.
"""
from __future__ import annotations

import functools
import re
from typing import Any, Callable, Mapping, Optional, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mim_jax import config as config_lib
from mim_jax.models import layers

F32 = jnp.float32
POSEMBS = ("sincos", "learned", "none")
REL_POS = ("none", "shared", "per_layer")
INITS = ("mae", "beit")
BEIT_STD = 0.02


def gather_tokens(x: jax.Array, ids: jax.Array) -> jax.Array:
  """x [B, N, D], ids [B, n] int -> [B, n, D]."""
  return jnp.take_along_axis(x, ids[..., None], axis=1)


# --------------------------------------------------------------------------------------------
# BEiT's relative position bias.
# --------------------------------------------------------------------------------------------
def num_relative_distances(grid: tuple[int, int]) -> int:
  """(2 gh - 1)(2 gw - 1) patch-to-patch offsets + 3 CLS entries (cls->tok, tok->cls, cls->cls)."""
  gh, gw = grid
  return (2 * gh - 1) * (2 * gw - 1) + 3


@functools.lru_cache(maxsize=None)
def relative_position_index(grid: tuple[int, int]) -> np.ndarray:
  """int32 [N + 1, N + 1]: row of the bias table for (query, key), token 0 being CLS.

  Patches q = (row_q, col_q), k = (row_k, col_k) in row-major order map to the offset
  (row_q - row_k + gh - 1) * (2 gw - 1) + (col_q - col_k + gw - 1). With R = the table size,
  the CLS query row is R - 3, the CLS key column R - 2, and (CLS, CLS) R - 1.
  """
  gh, gw = grid
  rows, cols = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
  rows, cols = rows.reshape(-1), cols.reshape(-1)
  d_row = rows[:, None] - rows[None, :] + gh - 1
  d_col = cols[:, None] - cols[None, :] + gw - 1
  size = num_relative_distances(grid)
  index = np.empty((gh * gw + 1,) * 2, np.int32)
  index[1:, 1:] = d_row * (2 * gw - 1) + d_col
  index[0, :] = size - 3  # CLS query -> any key
  index[:, 0] = size - 2  # any query -> CLS key
  index[0, 0] = size - 1
  index.setflags(write=False)  # cached: shared by every caller
  return index


class RelativePositionBias(nn.Module):
  """A learnable table [(2gh-1)(2gw-1)+3, H], zero init, read out as an attention bias."""
  grid: tuple[int, int]
  num_heads: int

  @nn.compact
  def __call__(self, positions: Optional[jax.Array] = None) -> jax.Array:
    """Bias for a sequence [CLS, patches].

    Args:
      positions: int [B, n], the patch index of each patch token of the sequence; None for all
        N patches in order.
    Returns:
      [H, 1 + N, 1 + N] for None, else [B, H, 1 + n, 1 + n] (per example, since each example
      keeps different patches; it costs B * H * (1 + n)^2 floats).
    """
    table = self.param("table", layers.partitioned(nn.initializers.zeros, (None, "heads")),
                       (num_relative_distances(self.grid), self.num_heads), F32)
    index = jnp.asarray(relative_position_index(tuple(self.grid)))
    if positions is None:
      return table[index].transpose(2, 0, 1)
    seq = jnp.concatenate([jnp.zeros_like(positions[:, :1]), positions + 1], axis=1)  # [B, L]
    per_example = index[seq[:, :, None], seq[:, None, :]]  # [B, L, L]
    return table[per_example].transpose(0, 3, 1, 2)


class PatchGrid:
  """`grid` and `num_patches` of a module with `image_size` and `patch` (the ViT, the ConvViT)."""

  @property
  def grid(self) -> tuple[int, int]:
    return layers.patch_grid(self.image_size, self.patch)

  @property
  def num_patches(self) -> int:
    return self.grid[0] * self.grid[1]


def absolute_position_embedding(module: nn.Module, posemb: str, grid: tuple[int, int],
                                width: int, cls_token: bool) -> jax.Array:
  """The [N (+ 1), D] embedding `module` adds to its tokens (with `cls_token`, row 0 is CLS's):
  fixed sin-cos, the learned parameter `pos_embedding`, or zeros (`posemb` of `POSEMBS`)."""
  n = grid[0] * grid[1] + int(cls_token)
  if posemb == "sincos":
    return layers.posemb_sincos_2d(grid, width, cls_token=cls_token)
  if posemb == "learned":
    return module.param("pos_embedding", layers.partitioned(layers.trunc_normal(0.02),
                                                            (None, "embed")), (n, width))
  if posemb == "none":
    return jnp.zeros((n, width), F32)
  raise ValueError(f"Unknown posemb {posemb!r}: use one of {POSEMBS}.")


def block_inits(weight_init: str, i: Any) -> dict:
  """Kernel initialisers of block i (0-based; a traced index under scan); empty for MAE (the
  layers' xavier defaults)."""
  if weight_init != "beit":
    return {}
  # BEiT divides the two kernels that write into the residual stream by sqrt(2 * layer_id),
  # layer_id counted from 1, so the stream's variance grows slowly with depth.
  plain = layers.trunc_normal(BEIT_STD)
  if isinstance(i, int):
    rescaled = layers.trunc_normal(BEIT_STD / np.sqrt(2.0 * (i + 1)))
  else:
    rescaled = lambda key, shape, dtype=F32: plain(key, shape, dtype) * jax.lax.rsqrt(
        2.0 * (i + 1.0)).astype(dtype)
  return dict(qkv_init=plain, fc1_init=plain, out_init=rescaled, fc2_init=rescaled)


# --------------------------------------------------------------------------------------------
# The student.
# --------------------------------------------------------------------------------------------
class ViT(PatchGrid, nn.Module):
  """Student ViT. Sizes come from `config.SIZES` through `ViT.from_variant`.

  Attributes (beyond the size):
    posemb: absolute position embedding, "sincos" (fixed, MAE) | "learned" | "none".
    rel_pos: BEiT relative position bias, "none" | "shared" (one table for all blocks, parameter
      `rel_pos_bias/table`; MaskDistill / BEiT pretraining) | "per_layer" (`rel_pos_bias_{i}`;
      fine-tuning, see `convert.layout.unshare_relative_position_bias`).
    layer_scale: None, or the initial value of the per-channel residual gains (0.1 for B, 1e-5
      for L and H in BEiT / MaskDistill).
    weight_init: "mae" (xavier-uniform kernels, normal(0.02) tokens) | "beit" (trunc_normal(0.02)
      for every kernel, patch embedding and token; the attention output and fc2 kernels of
      block i divided by sqrt(2 (i + 1))). Not called `init`: that is nn.Module.init.
    remat: what each block keeps for the backward pass, `layers.REMAT_POLICIES` or "none".
    act: the MLP's activation, a name in `layers.ACTIVATIONS` ("gelu"; CLIP: "quick_gelu").
    ln_eps: every LayerNorm's epsilon (1e-6; CLIP: 1e-5).
    pre_norm: a LayerNorm (`pre_norm`) on [CLS, patches] + position embedding before the first
      block (CLIP's "pre_layrnorm").
    scan: run the blocks under `nn.scan` (one block compiled once, looped `depth` times: compile
      time and program size stop growing with depth). The blocks' parameters are then stacked,
      `layers/block/...` (and `layers/rel_pos_bias/table` for per-layer tables) with a leading
      [depth] axis named "layers"; `convert.scan.unstack_blocks` / `stack_blocks` convert to
      and from the `block{i}` layout, which init_from and export use. Per-block outputs come
      back as the scan's outputs (`aux["blocks"]` unchanged); asking for attention of any
      layer returns it for all layers inside the scan (costly: analysis-sized batches only).
      Robust MAE's mid-depth tokens change the sequence inside the stack, so with them
      (`mid_depth` k > 0) the stack is two scans: blocks [0, k) in `layers` and [k, depth) in
      `layers_{k}` (`stack_starts` reads the segments back from a parameter tree).
  """
  patch: int
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  image_size: int = 224
  drop_path: float = 0.0
  posemb: str = "sincos"
  layer_scale: Optional[float] = None
  dtype: Any = F32
  rel_pos: str = "none"
  weight_init: str = "mae"
  remat: str = "none"
  scan: bool = False
  act: str = "gelu"
  ln_eps: float = 1e-6
  pre_norm: bool = False
  # The blocks' residual stream and activations (`layers`' docstring); the final norm's output,
  # what heads and losses read, is float32 whatever it is.
  stream_dtype: Any = F32

  @classmethod
  def from_variant(cls, variant: str, **kwargs) -> "ViT":
    size, patch = config_lib.decode_variant(variant)
    return cls(patch=patch, width=size.width, depth=size.depth, num_heads=size.heads,
               mlp_dim=size.mlp_dim, **kwargs)

  def position_embedding(self) -> jax.Array:
    """[N + 1, D]: row 0 is CLS's."""
    return absolute_position_embedding(self, self.posemb, self.grid, self.width, cls_token=True)

  # ---- initialisers -------------------------------------------------------------------------
  def _check_options(self) -> None:
    if self.weight_init not in INITS:
      raise ValueError(f"Unknown weight_init {self.weight_init!r}: use one of {INITS}.")
    if self.rel_pos not in REL_POS:
      raise ValueError(f"Unknown rel_pos {self.rel_pos!r}: use one of {REL_POS}.")
    if self.act not in layers.ACTIVATIONS:
      raise ValueError(f"Unknown act {self.act!r}: use one of {tuple(layers.ACTIVATIONS)}.")

  def _token_init(self) -> Callable:
    """CLS and mask tokens: MAE draws normal(0.02), BEiT trunc_normal(0.02)."""
    if self.weight_init == "beit":
      return layers.trunc_normal(BEIT_STD)
    return nn.initializers.normal(0.02)

  def _token(self, name: str) -> jax.Array:
    return self.param(name, layers.partitioned(self._token_init(), (None, None, "embed")),
                      (1, 1, self.width), F32)

  # ---- forward ------------------------------------------------------------------------------
  @nn.compact
  def __call__(self, images: jax.Array, ids_keep: Optional[jax.Array] = None, *,
               mask: Optional[jax.Array] = None, mid_mask: Optional[jax.Array] = None,
               mid_ids: Optional[jax.Array] = None, mid_depth: int = 8, train: bool = False,
               attn_layers: Sequence[int] = (), fuse: Sequence[int] = ()):
    """Student forward.

    Args:
      images: float [B, H, W, C], H = W = `image_size`.
      ids_keep: int32 [B, n] visible patch indices (visible-token forward) or None (all N).
      mask: [B, N] float/bool, 1 = masked, or None. Given, the forward is dense inpainting:
        patch embeddings become `x * (1 - m) + mask_token * m` (parameter `mask_token` [1, 1, D]),
        then the position embedding is added, CLS prepended, all N patches kept. Excludes
        `ids_keep`.
      mid_mask: [B, n] float/bool over the n patch tokens of the sequence (the `ids_keep` order,
        or all N patches), 1 = replace, or None. Before block `mid_depth` (i.e. after
        `mid_depth` blocks), each chosen token's residual stream is replaced by
        `mid_mask_token + pos_embed[its patch]` (parameter `mid_mask_token` [1, 1, D]). The
        sequence length is unchanged.
      mid_ids: int32 [B, m] patch indices, or None. Before block `mid_depth`, m new tokens
        `mid_mask_token + pos_embed[mid_ids]` are appended after the existing tokens (robust
        MAE's insertion of another 25% of masked patches); the outputs of blocks >= mid_depth
        and `out` have 1 + n + m tokens, in that order. Combines with `mid_mask`.
      mid_depth: static int in [0, depth), used only with `mid_mask` / `mid_ids`.
      train: enables drop path (rng stream "dropout").
      attn_layers: blocks whose attention probabilities go to `aux["attn"]` (negative = from
        the end).
      fuse: block indices (0-based, sorted, static) whose residual streams are summed before
        the final norm (MR-MAE's multi-layer fusion): `out = norm(sum of those blocks)`, so the
        final norm, which evaluation and export apply to the last block, is trained; () = the
        last block alone.
    Returns:
      (out [B, L, D], aux) with L = 1 + n (+ m); see the module docstring.
    """
    self._check_options()
    if images.shape[1:3] != (self.image_size, self.image_size):
      raise ValueError(f"Student expects {self.image_size}x{self.image_size} images, got "
                       f"{images.shape[1]}x{images.shape[2]}.")
    if mask is not None and ids_keep is not None:
      raise ValueError("Pass either `ids_keep` (visible tokens) or `mask` (dense inpainting), "
                       "not both.")
    patch_init = layers.trunc_normal(BEIT_STD) if self.weight_init == "beit" else None
    x = layers.PatchEmbed(self.patch, self.width, dtype=self.dtype, kernel_init=patch_init,
                          name="patch_embed")(images)
    if mask is not None:
      x = inpaint(x, mask, self._token("mask_token"))
    pos = self.position_embedding()
    x = x + pos[None, 1:]
    if ids_keep is not None:
      x = gather_tokens(x, ids_keep)
    cls = jnp.broadcast_to(self._token("cls") + pos[None, :1], (x.shape[0], 1, self.width))
    x = jnp.concatenate([cls, x], axis=1)
    if self.pre_norm:
      x = layers.LayerNorm(self.ln_eps, name="pre_norm")(x)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))

    mid_fn = None
    if mid_mask is not None or mid_ids is not None:
      if not 0 <= mid_depth < self.depth:
        raise ValueError(f"mid_depth must be in [0, {self.depth}), got {mid_depth}.")
      mid_fn = functools.partial(insert_mid_tokens, token=self._token("mid_mask_token"),
                                 patch_pos=pos[1:], mid_mask=mid_mask, mid_ids=mid_ids)
    return self.encode(x, train=train, attn_layers=attn_layers, positions=ids_keep,
                       mid_depth=mid_depth, mid_fn=mid_fn, fuse=fuse)

  def encode(self, x: jax.Array, *, train: bool, attn_layers: Sequence[int] = (),
             bias: Optional[jax.Array] = None, positions: Optional[jax.Array] = None,
             mid_depth: Optional[int] = None, mid_fn: Optional[Callable] = None,
             fuse: Sequence[int] = ()):
    """Runs the blocks and the final norm on a token sequence [B, L, D] = [CLS, patches].

    Args:
      bias: an extra attention bias for every block, [H, L, L] or [B, H, L, L], or None.
      positions: int [B, L - 1] patch index of each patch token, None = all N in order; read
        only by the relative position bias.
      mid_depth, mid_fn: before block `mid_depth`, `(x, positions) = mid_fn(x, positions)`.
      fuse: blocks summed before the final norm (see `__call__`); () = the last block.
    """
    x = x.astype(self.stream_dtype)  # the carry of a scanned stack keeps one dtype
    if self.scan:
      return self._encode_scanned(x, train=train, attn_layers=attn_layers, bias=bias,
                                  positions=positions, fuse=fuse, mid_depth=mid_depth,
                                  mid_fn=mid_fn)
    blocks, attn = [], {}
    wanted = {i % self.depth for i in attn_layers}
    shared = (RelativePositionBias(self.grid, self.num_heads, name="rel_pos_bias")
              if self.rel_pos == "shared" else None)
    shared_bias = None
    for i in range(self.depth):
      if mid_fn is not None and i == mid_depth:
        x, positions = mid_fn(x, positions)
        shared_bias = None  # the sequence changed: read the table again
      if shared is not None and shared_bias is None:
        shared_bias = shared(positions)
      block_bias = _add_bias(bias, shared_bias)
      if self.rel_pos == "per_layer":
        block_bias = _add_bias(block_bias, RelativePositionBias(
            self.grid, self.num_heads, name=f"rel_pos_bias_{i}")(positions))
      rate = self.drop_path * i / max(self.depth - 1, 1)  # linear stochastic-depth decay
      block = layers.block_class(self.remat)(
          self.num_heads, self.mlp_dim, drop_path=rate, layer_scale=self.layer_scale,
          act=self.act, ln_eps=self.ln_eps, dtype=self.dtype, stream_dtype=self.stream_dtype,
          name=f"block{i}", **block_inits(self.weight_init, i))
      x, probs = block(x, block_bias, not train, i in wanted)
      blocks.append(x)
      if i in wanted:
        attn[i] = probs
    if fuse:
      x = sum(blocks[i].astype(F32) for i in fuse)
    out = layers.LayerNorm(self.ln_eps, name="norm")(x)
    return out, {"blocks": tuple(blocks), "attn": attn}

  def _encode_scanned(self, x: jax.Array, *, train: bool, attn_layers: Sequence[int],
                      bias: Optional[jax.Array], positions: Optional[jax.Array],
                      fuse: Sequence[int], mid_depth: Optional[int] = None,
                      mid_fn: Optional[Callable] = None):
    """`encode` with the blocks under `nn.scan`: one scan, or two split at `mid_depth` when
    `mid_fn` changes the sequence there (see the class docstring)."""
    wanted = sorted({i % self.depth for i in attn_layers})
    split = mid_depth if mid_fn is not None else 0
    shared = (RelativePositionBias(self.grid, self.num_heads, name="rel_pos_bias")
              if self.rel_pos == "shared" else None)
    blocks, attn = [], {}
    for start, stop in ((0, split), (split, self.depth)):
      if start == stop:
        continue
      if mid_fn is not None and start == split:
        x, positions = mid_fn(x, positions)
      seg_bias = bias if shared is None else _add_bias(bias, shared(positions))
      seg_wanted = [i for i in wanted if start <= i < stop]
      stack = nn.scan(ScannedLayer, variable_axes={"params": 0},
                      split_rngs={"params": True, "dropout": True},
                      in_axes=(0, nn.broadcast, nn.broadcast), length=stop - start,
                      metadata_params={nn.PARTITION_NAME: "layers"})
      x, (outs, probs) = stack(
          self.num_heads, self.mlp_dim, self.depth, drop_path=self.drop_path,
          layer_scale=self.layer_scale, dtype=self.dtype, remat=self.remat,
          weight_init=self.weight_init, act=self.act, ln_eps=self.ln_eps,
          stream_dtype=self.stream_dtype,
          table_grid=self.grid if self.rel_pos == "per_layer" else None,
          deterministic=not train, return_probs=bool(seg_wanted), name=stack_name(start),
      )(x, jnp.arange(start, stop), seg_bias, positions)
      blocks += [outs[i] for i in range(stop - start)]  # [n, B, L, D] -> n arrays
      attn.update({i: probs[i - start] for i in seg_wanted})
    if fuse:
      x = sum(blocks[i].astype(F32) for i in fuse)
    out = layers.LayerNorm(self.ln_eps, name="norm")(x)
    return out, {"blocks": tuple(blocks), "attn": attn}


# The scanned stack's name in the parameter tree (blocks from 0), and its per-layer children; a
# stack that starts at block k > 0 (the second scan of a split stack) is `layers_{k}`.
SCANNED = "layers"
_STACK = re.compile(rf"^{SCANNED}(?:_(\d+))?$")


def stack_name(start: int) -> str:
  return SCANNED if start == 0 else f"{SCANNED}_{start}"


def stack_start(key: str) -> Optional[int]:
  """The first block of the scanned stack named `key` (`layers`: 0, `layers_{k}`: k), or None
  for any other name."""
  m = _STACK.match(key)
  return int(m.group(1) or 0) if m else None


def is_block_name(key: str) -> bool:
  """`block{i}` of an unscanned student or a scanned stack's name."""
  return bool(re.fullmatch(r"block\d+", key)) or stack_start(key) is not None


def stack_starts(params: Mapping[str, Any]) -> tuple[int, ...]:
  """The first block of each scanned stack in a student's parameters, sorted; () unscanned."""
  return tuple(sorted(k for k in map(stack_start, params) if k is not None))


class ScannedLayer(nn.Module):
  """Block i of a scanned ViT (i traced; its drop-path rate and BEiT init scale follow it), with
  its own relative position bias table when `rel_pos="per_layer"`. Carry: the residual stream;
  outputs: (the block's output, its attention probabilities or None)."""
  num_heads: int
  mlp_dim: int
  depth: int
  drop_path: float = 0.0
  layer_scale: Optional[float] = None
  dtype: Any = F32
  remat: str = "none"
  weight_init: str = "mae"
  table_grid: Optional[tuple[int, int]] = None  # per-layer relative position bias tables
  act: str = "gelu"
  ln_eps: float = 1e-6
  stream_dtype: Any = F32
  deterministic: bool = True
  return_probs: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, i: jax.Array, bias: Optional[jax.Array],
               positions: Optional[jax.Array]):
    if self.table_grid is not None:
      bias = _add_bias(bias, RelativePositionBias(self.table_grid, self.num_heads,
                                                  name="rel_pos_bias")(positions))
    # linear stochastic-depth decay, as in `encode`
    rate = self.drop_path * i.astype(F32) / max(self.depth - 1, 1) if self.drop_path else 0.0
    block = layers.block_class(self.remat)(
        self.num_heads, self.mlp_dim, drop_path=rate, layer_scale=self.layer_scale,
        act=self.act, ln_eps=self.ln_eps, dtype=self.dtype, stream_dtype=self.stream_dtype,
        name="block", **block_inits(self.weight_init, i))
    with layers.scanned_stack():
      x, probs = block(x, bias, self.deterministic, self.return_probs)
    return x, (x, probs)


def _add_bias(a: Optional[jax.Array], b: Optional[jax.Array]) -> Optional[jax.Array]:
  if a is None:
    return b
  return a if b is None else a + b


def inpaint(x: jax.Array, mask: jax.Array, token: jax.Array) -> jax.Array:
  """BEiT's corrupted input: x [B, N, D], mask [B, N] (1 = masked), token [1, 1, D] -> [B, N, D].

  A blend rather than a select so that a float mask works too; with a 0/1 mask a masked
  position keeps nothing of its patch (0 * x), which tests/test_vit_extensions.py checks.
  """
  chex.assert_shape(mask, x.shape[:2], custom_message="mask: [B, N]")
  m = mask.astype(F32)[..., None]
  return x * (1.0 - m) + token * m


def insert_mid_tokens(x: jax.Array, positions: Optional[jax.Array], *, token: jax.Array,
                      patch_pos: jax.Array, mid_mask: Optional[jax.Array],
                      mid_ids: Optional[jax.Array]) -> tuple[jax.Array, jax.Array]:
  """The mid-depth mask tokens (see `ViT.__call__`).

  Args:
    x: [B, 1 + n, D] residual stream, CLS first.
    positions: int [B, n] patch index of each patch token, or None (all N in order).
    token: [1, 1, D] the mid mask token; patch_pos: [N, D] the patches' position embeddings.
    mid_mask: [B, n] float/bool (1 = replace) or None; mid_ids: int [B, m] or None.
  Returns:
    (x [B, 1 + n (+ m), D], positions [B, n (+ m)]).
  """
  b, length, _ = x.shape
  if positions is None:
    positions = jnp.broadcast_to(jnp.arange(length - 1, dtype=jnp.int32), (b, length - 1))
  if mid_mask is not None:
    if mid_mask.shape != (b, length - 1):
      raise ValueError(f"mid_mask must be [B, n] = {(b, length - 1)}, got {mid_mask.shape}.")
    m = mid_mask.astype(F32)[..., None]
    fill = token + jnp.take(patch_pos, positions, axis=0)  # each token's own position
    x = jnp.concatenate([x[:, :1], x[:, 1:] * (1.0 - m) + fill * m], axis=1)
  if mid_ids is not None:
    new = jnp.broadcast_to(token, (b, mid_ids.shape[1], x.shape[-1]))
    x = jnp.concatenate([x, new + jnp.take(patch_pos, mid_ids, axis=0)], axis=1)
    positions = jnp.concatenate([positions, mid_ids.astype(positions.dtype)], axis=1)
  return x, positions
