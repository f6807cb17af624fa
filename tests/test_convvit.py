"""The hybrid ConvMAE student: multi-scale masks, no leak through the convolutions, the output
contract, parameter counts, layer decay groups and sharding names."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mim_jax import config as config_lib
from mim_jax import masking, optim
from mim_jax.models.convvit import ConvViT


def param_count(model, image_size):
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, image_size, image_size, 3)))
  return sum(int(np.prod(s.shape)) for s in jax.tree.leaves(nn.unbox(shapes)))


def random_params(model, images, ids_keep=None, seed=0):
  shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), images, ids_keep))["params"]
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(0.3 * rng.normal(size=s.shape), s.dtype), shapes)


def test_multiscale_masks_cover_exactly_the_children():
  g = 3
  ids_keep = jnp.asarray([[0, 4, 8], [2, 3, 7]], jnp.int32)
  visible = masking.visible_from_ids(ids_keep, g * g)
  np.testing.assert_array_equal(visible.sum(1), [3, 3])
  m8, m4 = (np.asarray(m) for m in masking.multiscale_masks(visible, (g, g), (2, 4)))
  coarse = np.asarray(visible).reshape(2, g, g)
  for f, fine in ((2, m8), (4, m4)):
    assert fine.shape == (2, (g * f) ** 2)
    grid = fine.reshape(2, g * f, g * f)
    for b in range(2):
      for r in range(g * f):
        for c in range(g * f):
          assert grid[b, r, c] == coarse[b, r // f, c // f]
    np.testing.assert_array_equal(fine.sum(1), f * f * coarse.reshape(2, -1).sum(1))


def test_masked_pixels_do_not_reach_the_visible_tokens():
  """Two images that differ only inside masked 1/16 patches give identical encoder outputs (the
  pretraining form, stage skips included); the full forward of the same pair does differ at
  visible tokens (the convolutions mix neighbours), so the test can see a leak."""
  model = ConvViT.from_variant("Convnano/16", image_size=64, stage_skips=True)
  rng = np.random.default_rng(0)
  a = rng.normal(size=(2, 64, 64, 3)).astype(np.float32)
  masks = masking.random_masks(jax.random.key(3), 2, 16, 0.75)
  pixel_mask = np.asarray(masking.upsample_mask(masks.mask, (4, 4), 16)).reshape(2, 64, 64, 1)
  b = np.where(pixel_mask > 0, rng.normal(size=a.shape) * 5, a).astype(np.float32)
  params = random_params(model, jnp.asarray(a), masks.ids_keep)

  @jax.jit
  def forward(x, ids):
    out, aux = model.apply({"params": params}, x, ids, attn_layers=(-1,))
    return out, aux["blocks"]

  out_a, blocks_a = forward(a, masks.ids_keep)
  out_b, blocks_b = forward(b, masks.ids_keep)
  assert out_a.shape == (2, 1 + 4, 32)
  np.testing.assert_allclose(out_a, out_b, atol=1e-5, rtol=0)
  for x, y in zip(blocks_a, blocks_b):
    np.testing.assert_allclose(x, y, atol=1e-5, rtol=0)
  full_a, _ = model.apply({"params": params}, jnp.asarray(a))
  full_b, _ = model.apply({"params": params}, jnp.asarray(b))
  visible_a = np.take_along_axis(np.asarray(full_a[:, 1:]), np.asarray(masks.ids_keep)[..., None],
                                 axis=1)
  visible_b = np.take_along_axis(np.asarray(full_b[:, 1:]), np.asarray(masks.ids_keep)[..., None],
                                 axis=1)
  assert np.abs(visible_a - visible_b).max() > 1e-2


def test_output_contract_mean_token_and_attention():
  model = ConvViT.from_variant("Convnano/16", image_size=32)
  images = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  params = random_params(model, images)
  out, aux = model.apply({"params": params}, images, attn_layers=(0, -1), fuse=(0, 1))
  assert out.shape == (2, 5, 32) and len(aux["blocks"]) == 2
  fused = aux["blocks"][0] + aux["blocks"][1]  # token 0 of each is its mean: sums stay means
  np.testing.assert_allclose(fused[:, 0], fused[:, 1:].mean(1), atol=1e-5)
  x = np.asarray(fused, np.float64)
  ln = params["norm"]
  expected = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6)
  np.testing.assert_allclose(out, expected * ln["scale"] + ln["bias"], atol=1e-4)
  attn = aux["attn"][1]
  assert set(aux["attn"]) == {0, 1} and attn.shape == (2, 2, 5, 5)
  np.testing.assert_allclose(attn.sum(-1), 1.0, atol=1e-5)
  np.testing.assert_array_equal(attn[..., 0], 0.0)
  np.testing.assert_allclose(attn[:, :, 0, 1:], attn[:, :, 1:, 1:].mean(2), atol=1e-6)


# ConvMAE-B's encoder as its public code builds it (models_convmae.py,
# `convmae_convvit_base_patch16_dec512d8b`: img_size [224, 56, 28], patch_size [4, 2, 2],
# embed_dim [256, 384, 768], depth [2, 2, 11], mlp_ratio 4; vision_transformer.py: PatchEmbed =
# Conv2d(k = stride = patch) + LayerNorm, CBlock = LayerNorm, 1x1 conv, depthwise 5x5 conv
# (groups = dim), 1x1 conv, LayerNorm, CMlp of two 1x1 convs; Block = timm's ViT block with
# qkv_bias=True): each module's PyTorch tensor shapes, written from those definitions.
def _conv(cin, cout, k, groups=1):
  return [(cout, cin // groups, k, k), (cout,)]


def _ln(c):
  return [(c,), (c,)]


def _linear(cin, cout):
  return [(cout, cin), (cout,)]


def _patch_embed(cin, cout, k):
  return _conv(cin, cout, k) + _ln(cout)


def _cblock(c):
  return (_ln(c) + _conv(c, c, 1) + _conv(c, c, 1) + _conv(c, c, 5, groups=c) + _ln(c)
          + _conv(c, 4 * c, 1) + _conv(4 * c, c, 1))


def _block(c):
  return (_ln(c) + _linear(c, 3 * c) + _linear(c, c) + _ln(c) + _linear(c, 4 * c)
          + _linear(4 * c, c))


CONVMAE_B_ENCODER = {
    "patch_embed1": _patch_embed(3, 256, 4), "patch_embed2": _patch_embed(256, 384, 2),
    "patch_embed3": _patch_embed(384, 768, 2), "patch_embed4": _linear(768, 768),
    **{f"blocks1.{i}": _cblock(256) for i in range(2)},
    **{f"blocks2.{i}": _cblock(384) for i in range(2)},
    **{f"blocks3.{i}": _block(768) for i in range(11)},
    "norm": _ln(768),
    # the pretraining encoder's stage skips (forward_encoder adds them before `norm`)
    "stage1_output_decode": _conv(256, 768, 4), "stage2_output_decode": _conv(384, 768, 2),
}
# ConvMAE's module -> ours (mim_jax/models/convvit.py).
OURS = {"patch_embed1": "patch_embed1", "patch_embed2": "patch_embed2",
        "patch_embed3": "patch_embed3", "patch_embed4": "patch_embed4", "norm": "norm",
        **{f"blocks1.{i}": f"conv1_block{i}" for i in range(2)},
        **{f"blocks2.{i}": f"conv2_block{i}" for i in range(2)},
        **{f"blocks3.{i}": f"block{i}" for i in range(11)},
        "stage1_output_decode": "skip1", "stage2_output_decode": "skip2"}


def tensor_sizes(shapes) -> list[int]:
  return sorted(int(np.prod(s)) for s in shapes)


def test_base_parameter_count_matches_convmae():
  """Our ConvB/16, counted from its own parameter shapes (jax.eval_shape of init), has ConvMAE-B's
  tensors module by module (the element count of every tensor; layouts differ), and the
  pretraining encoder's total is the published 88M (ConvMAE paper / README; MR-MAE Table 1,
  "CViT-B 88"). The fine-tuning ConvViT (vision_transformer.py) adds a learned pos_embed and a
  head, which the student has not (MAE's fixed sin-cos table, heads live in the objectives)."""
  model = ConvViT.from_variant("ConvB/16").clone(stage_skips=True)
  shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(0),
                                   jnp.zeros((1, 224, 224, 3))))["params"]
  assert set(shapes) == set(OURS.values())
  for theirs, ours in OURS.items():
    assert tensor_sizes(x.shape for x in jax.tree.leaves(shapes[ours])) == tensor_sizes(
        CONVMAE_B_ENCODER[theirs]), (theirs, ours)
  total = sum(int(np.prod(s)) for shapes_ in CONVMAE_B_ENCODER.values() for s in shapes_)
  assert param_count(model, 224) == total == 88_782_208
  assert int(total / 1e6) == 88  # the published 88M: 88.78M, truncated
  skips = CONVMAE_B_ENCODER["stage1_output_decode"] + CONVMAE_B_ENCODER["stage2_output_decode"]
  assert param_count(model.clone(stage_skips=False), 224) == total - sum(
      int(np.prod(s)) for s in skips) == 84_455_296


def test_every_hybrid_size_is_pinned():
  pinned = {"nano": 33_728, "B": 84_455_296}
  assert set(pinned) == set(config_lib.CONV_SIZES)
  for name, count in pinned.items():
    assert param_count(ConvViT.from_variant(f"Conv{name}/16", image_size=32), 32) == count


def test_variants_decode_and_refuse():
  size, patch = config_lib.decode_variant("ConvB/16")
  assert (size.width, size.depth, size.heads, size.mlp_dim, patch) == (768, 11, 12, 3072, 16)
  assert config_lib.decode_variant("B/16") == (config_lib.SIZES["B"], 16)
  for bad in ("ConvB/8", "ConvX/16", "Conv/16"):
    with pytest.raises(ValueError, match="Bad hybrid variant"):
      config_lib.decode_variant(bad)


def test_layer_decay_puts_the_conv_stages_at_layer_zero():
  model = ConvViT.from_variant("Convnano/16", image_size=32)
  shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  scales = optim.layer_decay_scales(shapes["params"], 0.5)  # depth 2: layers 0..3
  assert scales["conv1_block0"]["attn"]["kernel"] == 0.5 ** 3
  assert scales["conv2_block0"]["fc1"]["kernel"] == 0.5 ** 3
  assert scales["patch_embed1"]["proj"]["kernel"] == 0.5 ** 3
  assert scales["patch_embed4"]["kernel"] == 0.5 ** 3
  assert scales["block0"]["attn"]["qkv_kernel"] == 0.5 ** 2
  assert scales["block1"]["mlp"]["fc1"]["kernel"] == 0.5
  assert scales["norm"]["scale"] == 1.0


def test_every_parameter_has_logical_names():
  model = ConvViT.from_variant("Convnano/16", image_size=32, stage_skips=True,
                               posemb="learned")
  boxed = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert leaves and all(isinstance(x, nn.Partitioned) for x in leaves)
  for x in leaves:
    assert len(x.names) == x.value.ndim and any(x.names), x.names


def test_vit_only_switches_are_refused_for_a_hybrid():
  from configs import mrmcmae_b16_clip_b16  # pylint: disable=import-outside-toplevel
  from mim_jax.objectives import common  # pylint: disable=import-outside-toplevel
  c = mrmcmae_b16_clip_b16.get_config("runlocal=True")
  assert isinstance(common.make_student(c), ConvViT)
  c.student.rel_pos, c.student.scan = "shared", True
  with pytest.raises(ValueError, match=r"no rel_pos='shared', scan=True: reset student.rel_pos"):
    common.make_student(c)
  c.student.rel_pos, c.student.scan = "none", False
  c.student.stream_dtype = "float32"  # what a hybrid's blocks run anyway
  assert isinstance(common.make_student(c), ConvViT)
  c.student.stream_dtype = "bfloat16"
  with pytest.raises(ValueError, match=r"no stream_dtype='bfloat16'"):
    common.make_student(c)
  c.student.stream_dtype = "auto"
  c.student.variant = "nano/4"
  with pytest.raises(ValueError, match="stage_skips=True needs a hybrid student"):
    common.make_student(c)
