"""The single-CPU-device layout switches (`config.cpu_matmul_layout`, layers.cpu_matmul_layout):
what they change in the compiled step, read from its HLO."""
import re

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


def test_residual_cotangent_is_materialised_once_per_block(tmp_path):
  """Without the barrier XLA's CPU fusion rebuilds the residual stream's cotangent, a chain
  through every later block, inside each of its consumers: the widest fusion then grows with
  depth (~18 operands a block). With it, one block's worth, at any depth."""
  import torch
  import transformers
  torch.manual_seed(0)
  transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
      hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
      image_size=224, patch_size=16)).save_pretrained(str(tmp_path))

  def widest(layout: bool) -> int:
    c = maskalign_b16_clip_b16.get_config("variant=Ti/16")  # depth 12, 59 visible tokens
    c.teacher.spec = str(tmp_path)
    c.batch_size = 4  # no width of these models is 4
    c.cpu_matmul_layout = layout
    return widest_activation_fusion(aot.compile_step(c, aot.cpu_devices(1)).compiled.as_text(),
                                    c.batch_size)

  with_barrier = widest(True)
  assert with_barrier <= 30, with_barrier
  assert widest(False) > 4 * with_barrier
