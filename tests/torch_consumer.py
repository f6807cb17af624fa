"""What a PyTorch user does with mim_jax's exports, in an environment that never imports mim_jax.

  python tests/torch_consumer.py --image photo.png --expect features.npy [--hf DIR] [--timm DIR]

Loads the transformers export with `pipeline("image-feature-extraction")` (AutoModel and the
exported AutoImageProcessor) and the timm export with `timm.create_model("local-dir:DIR",
pretrained=True)` and timm's own data config (skipped when timm is not installed), runs each on
the photo through its own preprocessing, and compares the CLS token and the mean patch token with
`--expect` (mim_jax's evaluation features of the same photo, [1 + N, D]). Exits 1 when a relative
difference exceeds --tol (default 2%) or a load reports missing / unexpected weights.
"""
import argparse
import sys

import numpy as np
import torch
from PIL import Image


def rel(a: np.ndarray, b: np.ndarray) -> float:
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def compare(name: str, tokens: np.ndarray, expect: np.ndarray, tol: float) -> bool:
  cls_err, mean_err = rel(tokens[0], expect[0]), rel(tokens[1:].mean(0), expect[1:].mean(0))
  ok = max(cls_err, mean_err) <= tol
  print(f"{name}: CLS {100 * cls_err:.2f}%, mean patch {100 * mean_err:.2f}% "
        f"({'ok' if ok else 'TOO FAR'})")
  return ok


def hf_tokens(directory: str, photo: Image.Image) -> np.ndarray:
  from transformers import AutoModel, pipeline  # pylint: disable=import-outside-toplevel
  _, info = AutoModel.from_pretrained(directory, output_loading_info=True)
  wrong = {k: v for k, v in info.items() if v and k != "error_msgs"}
  if wrong:
    sys.exit(f"transformers load is not clean: {wrong}")
  extractor = pipeline("image-feature-extraction", model=directory, device="cpu")
  return np.asarray(extractor(photo)[0], np.float32)


def timm_tokens(directory: str, photo: Image.Image) -> np.ndarray:
  import timm  # pylint: disable=import-outside-toplevel
  model = timm.create_model("local-dir:" + directory, pretrained=True).eval()
  config = timm.data.resolve_data_config({}, model=model)
  x = timm.data.create_transform(**config)(photo.convert("RGB"))[None]
  with torch.no_grad():
    return model.forward_features(x)[0].numpy()


def main() -> int:
  p = argparse.ArgumentParser()
  p.add_argument("--image", required=True)
  p.add_argument("--expect", required=True)
  p.add_argument("--hf")
  p.add_argument("--timm")
  p.add_argument("--tol", type=float, default=0.02)
  args = p.parse_args()
  photo, expect = Image.open(args.image), np.load(args.expect)
  ok = True
  if args.hf:
    ok &= compare("transformers pipeline", hf_tokens(args.hf, photo), expect, args.tol)
  if args.timm:
    try:
      import timm  # pylint: disable=import-outside-toplevel,unused-import
    except ImportError:
      print("timm: not installed, skipped")
    else:
      ok &= compare("timm local-dir", timm_tokens(args.timm, photo), expect, args.tol)
  assert "mim_jax" not in sys.modules
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
