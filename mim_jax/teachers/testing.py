"""Helpers for the parity tests against transformers (imports torch lazily; tests only)."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from mim_jax.data.normalization import STUDENT_MEAN, STUDENT_STD


def student_images(batch: int, size: int, seed: int = 0) -> np.ndarray:
  """Random pixels in [0, 1], normalised like the student's inputs: [B, size, size, 3] f32."""
  pixels = np.random.default_rng(seed).uniform(0.0, 1.0, (batch, size, size, 3))
  return ((pixels - STUDENT_MEAN) / STUDENT_STD).astype(np.float32)


def teacher_pixels(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
  """Student-normalised [B, H, W, 3] -> the teacher's own normalisation, NCHW for torch."""
  pixels = images.astype(np.float64) * STUDENT_STD + STUDENT_MEAN
  return ((pixels - mean) / std).transpose(0, 3, 1, 2).astype(np.float32)


def perturb_layer_norms(model: Any, seed: int = 0, scale: float = 0.3) -> None:
  """Moves every LayerNorm's weight off 1 and bias off 0, so the port of each is tested."""
  import torch  # pylint: disable=import-outside-toplevel
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, torch.nn.LayerNorm):
        module.weight.add_(scale * torch.randn(module.weight.shape, generator=gen))
        module.bias.add_(scale * torch.randn(module.bias.shape, generator=gen))


def max_errors(out: Mapping[str, Any], ref_hidden: Sequence[Any], ref_final: Any,
               ref_attn_last: Any) -> dict[str, float]:
  """Max absolute differences: every hidden state, the final output, last-layer attention."""
  errs = {f"hidden_states[{i}]": max_abs_error(a, b)
          for i, (a, b) in enumerate(zip(out["hidden_states"], ref_hidden, strict=True))}
  errs["final"] = max_abs_error(out["final"], ref_final)
  last = len(out["hidden_states"]) - 2
  errs[f"attn[{last}]"] = max_abs_error(out["attn"][last], ref_attn_last)
  return errs


def max_abs_error(a: Any, b: Any) -> float:
  """max |a - b| in float64; a and b are jax/numpy arrays or torch tensors of the same shape."""
  a, b = np.asarray(a, np.float64), np.asarray(_numpy(b), np.float64)
  if a.shape != b.shape:
    raise AssertionError(f"shape {a.shape} vs reference {b.shape}")
  return float(np.abs(a - b).max())


def _numpy(x: Any) -> np.ndarray:
  return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
