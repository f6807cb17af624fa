"""The parameter names of each checkpoint format, and the tables between them.

A transformer block is the same eight torch modules in every format, under other names:
one table lists them, a column per format (transformers ViT as `save_pretrained` writes it and
as transformers 5 holds it in memory, CLIP's vision tower, timm with q/k/v still apart), read
into one `BlockNames` per format; every table between two formats is derived from two columns
(`renames`). A block converts to the shared Flax block (`block_from_torch`: the teachers'
converters) and back (`block_to_torch`: the export) through the same names.

Whole-model names:
  canonical_vit     transformers ViT: `vit.` dropped, in-memory names -> file names
  canonical_clip    CLIP: `vision_model.` dropped, the position_ids buffer checked and dropped
  canonical_transformers  transformers ViT / ViTMAE / BEiT -> timm's ViT names (q/k/v fused)
  canonical_beit    BEiT / BEiT v2 / timm beit -> timm's ViT names
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping

import numpy as np

from mim_jax.convert import layout


class CheckpointError(ValueError):
  """A checkpoint (config or weights) that a converter does not handle."""


@dataclasses.dataclass(frozen=True)
class BlockNames:
  """One block's torch module names in one format: `prefix` ("{i}" = the block's index) and each
  module's name under it: the two LayerNorms, q / k / v, the attention output, the MLP's two
  linears."""
  prefix: str
  ln1: str
  q: str
  k: str
  v: str
  out: str
  ln2: str
  fc1: str
  fc2: str

  def at(self, i: int) -> "BlockNames":
    """The same names in full for block i (prefix included, no "{i}" left)."""
    p = self.prefix.format(i=i)
    return BlockNames(p, *(p + getattr(self, f.name) for f in dataclasses.fields(self)[1:]))


PARTS = tuple(f.name for f in dataclasses.fields(BlockNames)[1:])

# One block's modules in each format: a row per module (`PARTS`), a column per format.
_BLOCK_TABLE = """
       vit                        vit_memory        clip                timm
ln1    layernorm_before           layernorm_before  layer_norm1         norm1
q      attention.attention.query  attention.q_proj  self_attn.q_proj    attn.query
k      attention.attention.key    attention.k_proj  self_attn.k_proj    attn.key
v      attention.attention.value  attention.v_proj  self_attn.v_proj    attn.value
out    attention.output.dense     attention.o_proj  self_attn.out_proj  attn.proj
ln2    layernorm_after            layernorm_after   layer_norm2         norm2
fc1    intermediate.dense         mlp.fc1           mlp.fc1             mlp.fc1
fc2    output.dense               mlp.fc2           mlp.fc2             mlp.fc2
"""
_PREFIXES = {"vit": "encoder.layer.{i}.", "vit_memory": "layers.{i}.",
             "clip": "encoder.layers.{i}.", "timm": "blocks.{i}."}


def _formats(table: str) -> dict[str, BlockNames]:
  header, *rows = [line.split() for line in table.strip().splitlines()]
  assert tuple(r[0] for r in rows) == PARTS, "one row per module, in PARTS order"
  return {fmt: BlockNames(_PREFIXES[fmt], *(r[1 + c] for r in rows))
          for c, fmt in enumerate(header)}


_FORMATS = _formats(_BLOCK_TABLE)
VIT = _FORMATS["vit"]  # transformers ViTModel as save_pretrained writes it
VIT_MEMORY = _FORMATS["vit_memory"]  # transformers 5's in-memory names
CLIP = _FORMATS["clip"]  # transformers CLIPVisionModel
# timm with q / k / v apart (`canonical_transformers` fuses them into timm's `attn.qkv`).
TIMM = _FORMATS["timm"]


def renames(src: BlockNames, dst: BlockNames) -> list[tuple[str, str]]:
  """[(pattern, replacement)] for `re.sub`: each module of a `src` block (its `.weight`,
  `.bias`, ...) -> the same module under `dst`'s names, for any block index."""
  pattern = r"(\d+)".join(map(re.escape, src.prefix.split("{i}")))
  repl = dst.prefix.replace("{i}", r"\1")
  return [(rf"^{pattern}{re.escape(getattr(src, part))}\.", rf"{repl}{getattr(dst, part)}.")
          for part in PARTS]


# transformers 5's in-memory names -> the names save_pretrained writes.
MEMORY_TO_FILE = renames(VIT_MEMORY, VIT)

# transformers ViT / ViTMAE / BEiT file names (after `canonical_vit`) -> timm's.
HF_TO_TIMM = [
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.mask_token$", "mask_token"),
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    *renames(VIT, TIMM),
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.relative_position_bias\."
     r"relative_position_bias_table$", r"blocks.\1.attn.relative_position_bias_table"),
    (r"^encoder\.relative_position_bias\.relative_position_bias_table$",
     "rel_pos_bias.relative_position_bias_table"),
    (r"^encoder\.layer\.(\d+)\.lambda_([12])$", r"blocks.\1.ls\2.gamma"),
    (r"^layernorm\.", "norm."),
    (r"^pooler\.layernorm\.", "fc_norm."),
]

# transformers 4 wrote CLIP's position_ids buffer into some checkpoints; it is arange(1 + N).
CLIP_POSITION_IDS = "embeddings.position_ids"


def put_unique(out: dict[str, np.ndarray], name: str, key: str, value: np.ndarray,
               kind: str) -> None:
  """out[name] = value, refusing a second file key that maps to the same canonical name."""
  if name in out:
    raise CheckpointError(f"{kind} checkpoint: weight {key!r} duplicates another name for "
                          f"{name!r}.")
  out[name] = value


def _renamed(name: str, table: list[tuple[str, str]]) -> str:
  for pattern, repl in table:
    name = re.sub(pattern, repl, name)
  return name


def canonical_vit(weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """transformers ViT weights: the `vit.` prefix stripped, in-memory names -> file names."""
  out: dict[str, np.ndarray] = {}
  for key, value in weights.items():
    name = key[len("vit."):] if key.startswith("vit.") else key
    put_unique(out, _renamed(name, MEMORY_TO_FILE), key, value, "ViT")
  return out


def canonical_clip(weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """CLIP weights: `vision_model.` stripped; the position_ids buffer dropped after checking it
  is the identity."""
  out: dict[str, np.ndarray] = {}
  for key, value in weights.items():
    name = key[len("vision_model."):] if key.startswith("vision_model.") else key
    if name == CLIP_POSITION_IDS:
      if not np.array_equal(np.ravel(value), np.arange(np.size(value))):
        raise CheckpointError(f"CLIP checkpoint: {key!r} is not arange(N): positions are "
                              "permuted, which is not handled.")
      continue
    put_unique(out, name, key, value, "CLIP")
  return out


def canonical_transformers(w: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """transformers ViT / ViTMAE / BEiT file (or in-memory) names -> timm's ViT names; q/k/v
  fused (a missing key bias, BEiT's, is zero)."""
  w = canonical_vit({k[len("beit."):] if k.startswith("beit.") else k: v for k, v in w.items()})
  out, qkv = {}, {}
  for key, value in w.items():
    name = _renamed(key, HF_TO_TIMM)
    m = re.fullmatch(r"blocks\.(\d+)\.attn\.(query|key|value)\.(weight|bias)", name)
    if m:
      qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = value
      continue
    put_unique(out, name, key, value, "init_from")
  for (i, kind), parts in qkv.items():
    if kind == "bias" and "key" not in parts and "query" in parts:
      parts["key"] = np.zeros_like(parts["query"])
    if set(parts) == {"query", "key", "value"}:
      out[f"blocks.{i}.attn.qkv.{kind}"] = np.concatenate(
          [parts[n] for n in ("query", "key", "value")], 0)
    else:
      out.update({f"blocks.{i}.attn.{n}.{kind}": v for n, v in parts.items()})
  return out


def canonical_beit(w: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """BEiT / BEiT v2 / timm beit names -> timm's ViT names: q_bias, (k_bias), v_bias -> qkv.bias,
  gamma_1/2 -> ls1/2.gamma; the relative position index buffers are rebuilt by the student."""
  out = {}
  for key, value in w.items():
    if key.endswith("relative_position_index") or re.search(r"attn\.[qkv]_bias$", key):
      continue
    name = re.sub(r"\.gamma_([12])$", r".ls\1.gamma", key)
    out[name] = value
  for key, value in w.items():
    m = re.fullmatch(r"(blocks\.\d+\.attn)\.q_bias", key)
    if m:
      k_bias = w.get(f"{m.group(1)}.k_bias", np.zeros_like(value))
      out[f"{m.group(1)}.qkv.bias"] = np.concatenate([value, k_bias, w[f"{m.group(1)}.v_bias"]])
  return out


def is_beit(w: Mapping[str, np.ndarray]) -> bool:
  """Whether a timm-style state dict holds BEiT's names (q/v biases, gamma_*, relative tables)."""
  return any(k.endswith((".q_bias", ".gamma_1")) or "relative_position_bias_table" in k
             for k in w)


# ---- one block, torch <-> the shared Flax block --------------------------------------------
def block_shapes(names: BlockNames, width: int, mlp_dim: int, qkv_bias: bool = True
                 ) -> dict[str, tuple[int, ...]]:
  """Name -> shape of every weight of one torch block (`names.at(i)`) of this width."""
  d, m = width, mlp_dim
  out = {}
  for part in (names.q, names.k, names.v):
    out[part + ".weight"] = (d, d)
    if qkv_bias:
      out[part + ".bias"] = (d,)
  for part, shape in ((names.ln1, (d,)), (names.out, (d, d)), (names.ln2, (d,)),
                      (names.fc1, (m, d)), (names.fc2, (d, m))):
    out[part + ".weight"], out[part + ".bias"] = shape, shape[:1]
  return out


def block_from_torch(w: Mapping[str, np.ndarray], names: BlockNames, heads: int,
                     qkv_bias: bool = True) -> dict[str, Any]:
  """One torch block (`names.at(i)`) -> the shared Flax block's parameters (`layers.Block`)."""
  q, k, v = names.q, names.k, names.v
  attn = {"qkv_kernel": layout.fused_qkv(w[q + ".weight"], w[k + ".weight"], w[v + ".weight"],
                                         heads),
          "out_kernel": layout.out_kernel(w[names.out + ".weight"], heads),
          "out_bias": w[names.out + ".bias"]}
  if qkv_bias:
    attn["qkv_bias"] = layout.fused_qkv_bias(w[q + ".bias"], w[k + ".bias"], w[v + ".bias"],
                                             heads)
  return {"ln1": layout.layer_norm(w, names.ln1), "attn": attn,
          "ln2": layout.layer_norm(w, names.ln2),
          "mlp": {"fc1": layout.dense(w, names.fc1), "fc2": layout.dense(w, names.fc2)}}


def block_to_torch(block: Mapping[str, Any], names: BlockNames) -> dict[str, np.ndarray]:
  """The shared Flax block's parameters -> one torch block's weights (`names.at(i)`), host
  float32; q / k / v apart."""
  attn = block["attn"]
  sd = {}
  for part, w, bias in zip((names.q, names.k, names.v), layout.qkv_weights(attn["qkv_kernel"]),
                           layout.host(attn["qkv_bias"]).reshape(3, -1)):
    sd[part + ".weight"], sd[part + ".bias"] = w, bias
  sd[names.out + ".weight"] = layout.out_weight(attn["out_kernel"])
  sd[names.out + ".bias"] = layout.host(attn["out_bias"])
  for part, ln in ((names.ln1, "ln1"), (names.ln2, "ln2")):
    sd[part + ".weight"] = layout.host(block[ln]["scale"])
    sd[part + ".bias"] = layout.host(block[ln]["bias"])
  for part, fc in ((names.fc1, "fc1"), (names.fc2, "fc2")):
    sd[part + ".weight"] = layout.linear_weight(block["mlp"][fc]["kernel"])
    sd[part + ".bias"] = layout.host(block["mlp"][fc]["bias"])
  return sd
