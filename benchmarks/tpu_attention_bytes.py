r"""HBM bytes of one ViT attention, forward and backward, compiled for a TPU slice: the plain
softmax attention (`layers.softmax_attention`, what `config.attention="auto"` runs on TPU) against
the Pallas flash-attention kernel of jax.experimental.pallas.ops.tpu (not used by the model:
this is the measurement behind that choice, docs/tpu_cost.md "After").

  python benchmarks/tpu_attention_bytes.py [--topology v5e:2x2] [--batch 256] [--tokens 197]

Compile-only (libtpu, no TPU). The flash kernel takes sequence lengths in blocks of 128: the
tokens are padded (zeros) to the next multiple and the padding masked out with segment ids; it
runs per chip under shard_map (a Mosaic kernel is not partitioned automatically). Its forward
kernel carries Pallas's own cost estimate; its two backward kernels carry none, so their FLOPs
are missing from the printed figures (their bytes are their operands and results).
"""
from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mim_jax import aot, hlo_cost
from mim_jax.models import layers


def plain(q, k, v):
  return layers.softmax_attention(q, k, v, None, jnp.bfloat16)[0]


def flash(q, k, v):
  """Pallas flash attention on tokens padded to a multiple of 128, the padding masked."""
  from jax.experimental.pallas.ops.tpu import flash_attention as fa  # pylint: disable=import-outside-toplevel
  n = q.shape[2]
  padded = -(-n // 128) * 128
  pad = ((0, 0), (0, 0), (0, padded - n), (0, 0))
  q, k, v = (jnp.pad(x, pad) for x in (q, k, v))
  seg = jnp.broadcast_to((jnp.arange(padded) < n).astype(jnp.int32), (q.shape[0], padded))
  out = fa.flash_attention(q, k, v, segment_ids=fa.SegmentIds(seg, seg),
                           sm_scale=q.shape[-1] ** -0.5)
  return out[:, :, :n]


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--topology", default="v5e:2x2")
  p.add_argument("--batch", type=int, default=256, help="global batch")
  p.add_argument("--tokens", type=int, default=197)
  p.add_argument("--heads", type=int, default=12)
  p.add_argument("--head_dim", type=int, default=64)
  a = p.parse_args()
  devices = aot.tpu_devices(a.topology)
  mesh = Mesh(np.asarray(devices).reshape(len(devices)), ("data",))
  x = jax.ShapeDtypeStruct((a.batch, a.heads, a.tokens, a.head_dim), jnp.bfloat16,
                           sharding=NamedSharding(mesh, P("data")))
  per_chip = lambda fn: jax.shard_map(fn, mesh=mesh, in_specs=(P("data"),) * 3,
                                      out_specs=P("data"), check_vma=False)
  for name, fn in (("plain softmax (XLA)", plain), ("Pallas flash", per_chip(flash))):
    # A weighted sum: every output element gets its own cotangent.
    loss = lambda q, k, v, fn=fn: (fn(q, k, v).astype(jnp.float32)
                                   * jnp.cos(jnp.arange(a.head_dim, dtype=jnp.float32))).sum()
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(x, x, x).compile()
    module = hlo_cost.analyze(compiled.as_text(), len(devices))
    print(f"{name}: per chip, forward + backward, HBM {module.hbm_bytes / 1e9:.3f} GB, "
          f"matmul TFLOP {module.flops / 1e12:.4f}")
    print(hlo_cost.breakdown(module, top=6))


if __name__ == "__main__":
  main()
