r"""XLA's bytes accessed (and the HBM bytes read from the compiled module) of one ViT block,
forward and backward, compiled for one TPU chip: the unit of issue 21's traffic work.

  python benchmarks/tpu_block_bytes.py [--topology v5e:1x1] [--batch 64] [--tokens 197] \
      [--variant B] [--big_vision /path/to/big_vision_checkout]

Compile-only (libtpu, no TPU). Gradients of the block's parameters and input under a bf16
matmul dtype, with the student's residual stream in float32 and in bfloat16
(`student.stream_dtype`). With `--big_vision`, the same for `Encoder1DBlock` of
google-research/big_vision's `models/vit.py` (`dtype_mm="bfloat16"`), imported from a checkout
outside this repository (its code is not part of mim_jax), as the reference of
docs/tpu_cost.md.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

from mim_jax import aot, chips, config as config_lib, hlo_cost  # noqa: E402
from mim_jax.models import layers  # noqa: E402


def block_bytes(block: nn.Module, x_dtype, batch: int, tokens: int, width: int,
                devices) -> tuple[float, float, float]:
  """(XLA's FLOPs, XLA's bytes accessed, HBM bytes) of `block`'s forward and backward."""
  repl = NamedSharding(Mesh(devices, ("data",)), P())
  x = jax.ShapeDtypeStruct((batch, tokens, width), x_dtype, sharding=repl)
  params = nn.unbox(jax.eval_shape(
      lambda: block.init(jax.random.key(0), jnp.zeros((1, tokens, width), x_dtype))))["params"]
  params = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=repl), params)

  def fwd_bwd(p, x, g):
    y, vjp = jax.vjp(lambda p, x: block.apply({"params": p}, x)[0], p, x)
    return y, vjp(g.astype(y.dtype))

  compiled = jax.jit(fwd_bwd).lower(params, x, x).compile()
  flops, nbytes = chips.step_cost(compiled.cost_analysis())
  return flops, nbytes, hlo_cost.analyze(compiled.as_text()).hbm_bytes


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--topology", default="v5e:1x1")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--tokens", type=int, default=197)
  parser.add_argument("--variant", default="B", help=f"one of {list(config_lib.SIZES)}")
  parser.add_argument("--big_vision", default=None, help="a big_vision checkout (its parent "
                      "directory holds the big_vision package)")
  args = parser.parse_args(argv)
  devices = aot.tpu_devices(args.topology)[:1]
  size = config_lib.SIZES[args.variant]
  rows = []
  for stream in (jnp.float32, jnp.bfloat16):
    block = layers.Block(size.heads, size.mlp_dim, dtype=jnp.bfloat16, stream_dtype=stream)
    rows.append((f"mim_jax Block, stream {jnp.dtype(stream).name}",
                 block_bytes(block, stream, args.batch, args.tokens, size.width, devices)))
  if args.big_vision:
    sys.path.insert(0, args.big_vision)
    from big_vision.models import vit as bv_vit  # pylint: disable=import-outside-toplevel
    block = bv_vit.Encoder1DBlock(mlp_dim=size.mlp_dim, num_heads=size.heads,
                                  dtype_mm="bfloat16")
    rows.append(("big_vision Encoder1DBlock", block_bytes(
        block, jnp.bfloat16, args.batch, args.tokens, size.width, devices)))
  print(f"one {args.variant} block, forward + backward, {args.batch} x {args.tokens} tokens, "
        f"one chip of {args.topology}, bf16 matmuls")
  print(f"{'block':40s} {'XLA TFLOP':>10s} {'XLA GB':>8s} {'FLOP/byte':>10s} {'HBM GB':>8s}")
  for name, (flops, nbytes, hbm) in rows:
    print(f"{name:40s} {flops / 1e12:10.4f} {nbytes / 1e9:8.3f} {flops / nbytes:10.1f} "
          f"{hbm / 1e9:8.3f}")


if __name__ == "__main__":
  main()
