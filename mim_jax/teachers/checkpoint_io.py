"""Reading transformers checkpoint directories, and the checks every converter shares.

A checkpoint directory is what `save_pretrained` writes (or a Hugging Face cache snapshot):
`config.json` plus the weights, as `model.safetensors`, as shards listed in
`model.safetensors.index.json`, or as a legacy `pytorch_model.bin`. An optional
`preprocessor_config.json` gives the model's own normalisation.

Converters refuse what they do not understand: every config field is either handled (with a check
of its value), ignored for a stated reason, or an error naming it. Weights are matched exactly:
missing, unexpected and mis-shaped tensors are errors naming them.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Iterable, Mapping, Optional

import numpy as np

from mim_jax.convert.names import CheckpointError

CONFIG_FILE = "config.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_FILE = "pytorch_model.bin"

# A check returns None when the value is acceptable, else a short reason.
Check = Callable[[Any], Optional[str]]

# Fields every transformers config may carry that do not change what a vision encoder computes in
# inference: bookkeeping, generation settings, task labels, output switches (we always return
# everything). Old checkpoints (transformers 4.x) write all of them; new ones a few.
GENERIC_FIELDS: frozenset[str] = frozenset("""
    architectures model_type transformers_version dtype torch_dtype use_bfloat16 return_dict
    output_hidden_states output_attentions output_scores torchscript tf_legacy_loss
    chunk_size_feed_forward is_encoder_decoder is_decoder add_cross_attention
    cross_attention_hidden_size tie_encoder_decoder tie_word_embeddings gradient_checkpointing
    use_cache max_length min_length do_sample early_stopping num_beams num_beam_groups
    diversity_penalty temperature top_k top_p typical_p repetition_penalty length_penalty
    no_repeat_ngram_size encoder_no_repeat_ngram_size bad_words_ids num_return_sequences
    return_dict_in_generate forced_bos_token_id forced_eos_token_id remove_invalid_values
    exponential_decay_length_penalty suppress_tokens begin_suppress_tokens finetuning_task
    id2label label2id tokenizer_class prefix bos_token_id pad_token_id eos_token_id sep_token_id
    decoder_start_token_id task_specific_params problem_type
""".split())


# --------------------------------------------------------------------------------------------
# Files.
# --------------------------------------------------------------------------------------------
def read_json(path: str) -> dict[str, Any]:
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def read_config(directory: str) -> dict[str, Any]:
  path = os.path.join(directory, CONFIG_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"No {CONFIG_FILE} in {directory!r}: a teacher checkpoint directory "
                            f"holds {CONFIG_FILE} and {SAFETENSORS_FILE} (as save_pretrained "
                            "writes them).")
  return read_json(path)


def read_preprocessor(directory: str) -> dict[str, Any]:
  """The preprocessor config, or {} when the directory has none."""
  path = os.path.join(directory, PREPROCESSOR_FILE)
  return read_json(path) if os.path.isfile(path) else {}


def weight_files(directory: str) -> list[str]:
  """The weight files of a checkpoint directory, in the order they are read."""
  single = os.path.join(directory, SAFETENSORS_FILE)
  if os.path.isfile(single):
    return [single]
  index = os.path.join(directory, SAFETENSORS_INDEX)
  if os.path.isfile(index):
    shards = sorted(set(read_json(index)["weight_map"].values()))
    return [os.path.join(directory, s) for s in shards]
  legacy = os.path.join(directory, TORCH_FILE)
  if os.path.isfile(legacy):
    return [legacy]
  return []


def has_weights(directory: str) -> bool:
  return bool(weight_files(directory))


def read_weights(directory: str) -> dict[str, np.ndarray]:
  """All tensors of a checkpoint as float32 numpy arrays, keyed by their names in the files."""
  files = weight_files(directory)
  if not files:
    raise FileNotFoundError(f"No weights in {directory!r}: expected {SAFETENSORS_FILE}, "
                            f"{SAFETENSORS_INDEX} with its shards, or {TORCH_FILE}.")
  out: dict[str, np.ndarray] = {}
  for path in files:
    tensors = _read_torch(path) if path.endswith(".bin") else _read_safetensors(path)
    for key, value in tensors.items():
      if key in out:
        raise CheckpointError(f"Weight {key!r} appears in more than one file of {directory!r}.")
      out[key] = value
  return out


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  # Read through JAX (no torch needed): numpy cannot hold bfloat16, jax.numpy can; floating
  # tensors of every width leave as float32.
  from safetensors import safe_open  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  out = {}
  with safe_open(path, framework="flax") as f:
    for key in f.keys():
      x = f.get_tensor(key)
      out[key] = np.asarray(x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x)
  return out


def _read_torch(path: str) -> dict[str, np.ndarray]:
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise CheckpointError(f"{path!r} is a PyTorch pickle and reading it needs torch: "
                          "pip install -r requirements-torch.txt, or convert it to "
                          "safetensors.") from e
  state = torch.load(path, map_location="cpu", weights_only=True)
  return {k: _to_numpy(v, torch) for k, v in state.items()}


def _to_numpy(tensor, torch) -> np.ndarray:
  if tensor.is_floating_point():
    tensor = tensor.to(torch.float32)
  return tensor.numpy()


# --------------------------------------------------------------------------------------------
# Config checks.
# --------------------------------------------------------------------------------------------
def check_config(config: Mapping[str, Any], handled: Mapping[str, Check],
                 ignored: Mapping[str, str], where: str) -> None:
  """Raises CheckpointError naming the first field that is unknown or has a value not handled.

  `handled`: field -> check of its value. `ignored`: field -> why it does not matter here.
  Fields starting with '_' (private bookkeeping) and GENERIC_FIELDS are ignored.
  """
  for field, value in config.items():
    if field.startswith("_") or field in GENERIC_FIELDS or field in ignored:
      continue
    if field not in handled:
      raise CheckpointError(
          f"{where}: config field {field!r} (= {value!r}) is not handled by this converter. "
          f"Handled fields: {sorted(handled)}; ignored: {sorted(ignored)}.")
    reason = handled[field](value)
    if reason is not None:
      raise CheckpointError(f"{where}: config field {field!r} = {value!r} is not supported: "
                            f"{reason}.")


def positive_int(value: Any) -> Optional[str]:
  ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
  return None if ok else "expected a positive integer"


def positive_float(value: Any) -> Optional[str]:
  ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
  return None if ok else "expected a positive number"


def one_of(*allowed: Any) -> Check:
  def check(value: Any) -> Optional[str]:
    return None if value in allowed and type(value) in {type(a) for a in allowed} else (
        f"handled values: {list(allowed)}")
  return check


def square_size(value: Any) -> Optional[str]:
  """An int, or a pair of equal ints (image and patch sizes)."""
  if isinstance(value, (list, tuple)):
    if len(value) == 2 and value[0] == value[1] and positive_int(value[0]) is None:
      return None
    return "only square sizes (an int or a pair of equal ints) are handled"
  return positive_int(value)


def square_value(value: Any) -> int:
  return int(value[0]) if isinstance(value, (list, tuple)) else int(value)


def encoder_fields(activations: Iterable[str]) -> dict[str, Check]:
  """The config fields of a ViT-like vision encoder (transformers ViT, CLIP's vision tower) with
  their checks; `activations`: the `hidden_act` values the converter maps."""
  return {
      "hidden_size": positive_int,
      "num_hidden_layers": positive_int,
      "num_attention_heads": positive_int,
      "intermediate_size": positive_int,
      "hidden_act": one_of(*activations),
      "layer_norm_eps": positive_float,
      "image_size": square_size,
      "patch_size": square_size,
      "num_channels": one_of(3),
      "pruned_heads": lambda v: None if not v else "pruned attention heads are not handled",
  }


def checked_geometry(config: Mapping[str, Any], kind: str, default_patch: int
                     ) -> tuple[int, int, int, int]:
  """(width, heads, patch, grid) of a ViT-like config, refusing what the Flax net cannot run:
  a width the heads do not divide, an image the patch does not tile."""
  width, heads = config.get("hidden_size", 768), config.get("num_attention_heads", 12)
  if width % heads:
    raise CheckpointError(f"{kind} checkpoint: hidden_size {width} is not a multiple of "
                          f"num_attention_heads {heads}.")
  image = square_value(config.get("image_size", 224))
  patch = square_value(config.get("patch_size", default_patch))
  if image % patch:
    raise CheckpointError(f"{kind} checkpoint: image_size {image} is not a multiple of "
                          f"patch_size {patch}.")
  return width, heads, patch, image // patch


# --------------------------------------------------------------------------------------------
# Weight matching.
# --------------------------------------------------------------------------------------------
def match_weights(weights: Mapping[str, np.ndarray], expected: Mapping[str, tuple[int, ...]],
                  ignore: Callable[[str], bool], where: str) -> None:
  """Checks that `weights` hold exactly the `expected` names and shapes, apart from ignored ones.

  Raises CheckpointError naming the missing, unexpected or mis-shaped tensors.
  """
  present = {k for k in weights if not ignore(k)}
  missing = sorted(set(expected) - present)
  unexpected = sorted(present - set(expected))
  problems = []
  if missing:
    problems.append(f"missing weights {_some(missing)}")
  if unexpected:
    problems.append(f"unexpected weights {_some(unexpected)}")
  if problems:
    raise CheckpointError(f"{where}: " + "; ".join(problems) + ".")
  for key, shape in expected.items():
    if tuple(weights[key].shape) != tuple(shape):
      raise CheckpointError(f"{where}: weight {key!r} has shape {tuple(weights[key].shape)}, "
                            f"expected {tuple(shape)} from the config.")


def _some(names: Iterable[str], limit: int = 12) -> str:
  names = list(names)
  head = ", ".join(repr(n) for n in names[:limit])
  return f"[{head}{', ...' if len(names) > limit else ''}] ({len(names)} in all)"
