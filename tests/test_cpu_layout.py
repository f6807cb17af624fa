"""The single-CPU-device layout switches (`config.cpu_matmul_layout`, layers.cpu_matmul_layout):
what they change in the compiled step, read from its HLO."""
import re

import pytest

from configs import maskalign_b16_clip_b16
from mim_jax import aot


def widest_activation_fusion(hlo: str, batch: int) -> int:
  """The most operands of a fusion whose result has the batch as its leading axis."""
  widest = 0
  for line in hlo.splitlines():
    m = re.search(r"= \w+\[(\d+),[\d,]*\]\S* fusion\((.*?)\), kind", line)
    if m and int(m.group(1)) == batch:
      widest = max(widest, len(re.findall(r"%[\w.\-]+", m.group(2))))
  return widest


def qkv_kernel_copies(hlo: str) -> int:
  """Loop fusions that read nothing but a qkv kernel parameter: copies of the kernel (the
  parameter's name carries its path, `..._qkv_kernel_...`)."""
  params = set(re.findall(r"%([\w.\-]*qkv_kernel[\w.\-]*) = \S+ parameter\(", hlo))
  return sum(1 for m in re.finditer(r"fusion\(%([\w.\-]+)\), kind=kLoop", hlo)
             if m.group(1) in params)


@pytest.mark.slow
def test_cpu_layout_of_the_compiled_step(tmp_path):
  """Ti/16 MaskAlign step (12 blocks), one CPU device, with and without the switch:
  - the residual stream's cotangent: without the barrier XLA's CPU fusion rebuilds it, a chain
    through every later block, inside each of its consumers, so the widest fusion grows with
    depth (~18 operands a block); with it, one block's worth;
  - no qkv kernel is copied (transposed) in every step: here XLA copies the teacher's without
    the switch (at ViT-B size the student's too: 13 ms a step each in float32)."""
  import torch
  import transformers
  torch.manual_seed(0)
  transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
      hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
      image_size=224, patch_size=16)).save_pretrained(str(tmp_path))

  def hlo(layout: bool) -> str:
    c = maskalign_b16_clip_b16.get_config("variant=Ti/16")  # depth 12, 59 visible tokens
    c.teacher.spec = str(tmp_path)
    c.batch_size = 4  # no width of these models is 4
    c.cpu_matmul_layout = layout
    return aot.compile_step(c, aot.cpu_devices(1)).compiled.as_text()

  on, off = hlo(True), hlo(False)
  assert widest_activation_fusion(on, 4) <= 30, widest_activation_fusion(on, 4)
  assert widest_activation_fusion(off, 4) > 4 * widest_activation_fusion(on, 4)
  assert qkv_kernel_copies(on) == 0
  assert qkv_kernel_copies(off) >= 1
