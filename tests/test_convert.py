"""mim_jax.convert: the name tables and the block conversion both ways (the parity tests of the
teachers, init_from and export check them against transformers and timm; these check the pieces
without torch)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mim_jax.convert import names
from mim_jax.models import layers

WIDTH, MLP, HEADS = 8, 12, 2


@pytest.mark.parametrize("fmt", [names.VIT, names.CLIP, names.TIMM], ids=["vit", "clip", "timm"])
def test_a_torch_block_converts_to_the_flax_block_and_back(fmt):
  """Every weight of a torch block lands in the shared Flax block with that block's shapes, and
  converting back gives the very same tensors under the same names."""
  rng = np.random.default_rng(0)
  torch_block = {k: rng.normal(size=s).astype(np.float32)
                 for k, s in names.block_shapes(fmt.at(3), WIDTH, MLP).items()}
  ours = names.block_from_torch(torch_block, fmt.at(3), HEADS)
  flax_block = layers.Block(HEADS, MLP)
  want = jax.eval_shape(lambda: flax_block.init(jax.random.key(0),
                                                jnp.zeros((1, 5, WIDTH)))["params"])
  shapes = jax.tree.map(lambda a: a.shape, nn.meta.unbox(want))
  assert jax.tree.map(np.shape, ours) == shapes
  back = names.block_to_torch(ours, fmt.at(3))
  assert sorted(back) == sorted(torch_block)
  for k, v in torch_block.items():
    np.testing.assert_array_equal(back[k], v, err_msg=k)


def test_the_derived_tables_rename_every_module_of_a_block():
  """transformers 5's in-memory names reach the file names, and file names reach timm's (q, k, v
  stacked in that order), for every module of a block and any index."""
  for i in (0, 11):
    memory, file = names.VIT_MEMORY.at(i), names.VIT.at(i)
    for part in names.PARTS:
      got = names.canonical_vit({getattr(memory, part) + ".weight": np.zeros(1)})
      assert list(got) == [getattr(file, part) + ".weight"], part
  hf_to_timm = {"layernorm_before": "norm1", "attention.output.dense": "attn.proj",
                "layernorm_after": "norm2", "intermediate.dense": "mlp.fc1",
                "output.dense": "mlp.fc2"}
  hf = {f"encoder.layer.2.{m}.weight": np.full(2, n, np.float32)
        for n, m in enumerate(list(hf_to_timm) + ["attention.attention." + t
                                                  for t in ("query", "key", "value")])}
  timm = names.canonical_transformers(hf)
  assert sorted(timm) == sorted([f"blocks.2.{m}.weight" for m in hf_to_timm.values()] +
                                ["blocks.2.attn.qkv.weight"])
  for n, (theirs, ours) in enumerate(hf_to_timm.items()):
    assert timm[f"blocks.2.{ours}.weight"][0] == n, theirs
  np.testing.assert_array_equal(timm["blocks.2.attn.qkv.weight"], [5, 5, 6, 6, 7, 7])
