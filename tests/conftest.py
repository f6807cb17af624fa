"""Test setup: 8 simulated CPU devices, set before jax is imported anywhere."""
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def tfds_data_dir(tmp_path_factory):
  """One TFDS data dir per test session: the digits dataset is built at most once."""
  path = os.environ.get("MIM_JAX_TEST_TFDS_DIR") or str(tmp_path_factory.mktemp("tfds"))
  os.environ["TFDS_DATA_DIR"] = path
  return path


def _save_hf_vit(path: str, **overrides) -> str:
  import torch
  import transformers
  torch.manual_seed(0)
  kw = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            image_size=16, patch_size=4)
  kw.update(overrides)
  transformers.ViTModel(transformers.ViTConfig(**kw)).save_pretrained(path)
  return path


REQUIRE_TPU_ENV = "MIM_JAX_REQUIRE_TPU"


@pytest.fixture
def libtpu():
  """For tests that compile for a TPU topology (libtpu, requirements-tpu.txt): skipped where
  libtpu is not installed, a failure instead when MIM_JAX_REQUIRE_TPU=1 (CI sets it: .ci/run)."""
  try:
    import libtpu  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError as e:
    if os.environ.get(REQUIRE_TPU_ENV) == "1":
      pytest.fail(f"{REQUIRE_TPU_ENV}=1 but libtpu cannot be imported ({e}): install "
                  f"requirements-tpu.txt (MIM_JAX_EXTRAS=tpu bash launch/local.sh test).")
    pytest.skip("TPU topologies need libtpu (requirements-tpu.txt)")


@pytest.fixture(scope="session")
def tiny_vit_teacher_dir(tmp_path_factory):
  """A transformers ViTModel checkpoint (random weights, 16x16 images, patch 4, depth 2)."""
  return _save_hf_vit(str(tmp_path_factory.mktemp("tiny_vit_teacher")))


@pytest.fixture(scope="session")
def tiny_clip_teacher_dir(tmp_path_factory):
  """A transformers CLIPVisionModel checkpoint (random weights, 16x16 images, patch 4)."""
  import torch
  import transformers
  torch.manual_seed(0)
  path = str(tmp_path_factory.mktemp("tiny_clip_teacher"))
  cfg = transformers.CLIPVisionConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                                      intermediate_size=64, image_size=16, patch_size=4)
  transformers.CLIPVisionModel(cfg).save_pretrained(path)
  return path


@pytest.fixture(scope="session")
def tiny_clip_model_dir(tmp_path_factory):
  """A full transformers CLIPModel (vision + text towers, visual projection), random weights."""
  import torch
  import transformers
  torch.manual_seed(0)
  path = str(tmp_path_factory.mktemp("tiny_clip_model"))
  cfg = transformers.CLIPConfig(
      vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, image_size=16, patch_size=4),
      text_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64, vocab_size=100, max_position_embeddings=16),
      projection_dim=24)
  transformers.CLIPModel(cfg).save_pretrained(path)
  return path


@pytest.fixture(scope="session")
def tiny_dino_l8_teacher_dir(tmp_path_factory):
  """A ViTModel with patch 8 at 32px: a 4x4 grid that a /4 student at 16px matches by resize."""
  return _save_hf_vit(str(tmp_path_factory.mktemp("tiny_vit8_teacher")), patch_size=8,
                      image_size=32, hidden_size=48, num_attention_heads=3, num_hidden_layers=3)


@pytest.fixture(scope="session")
def make_teacher():
  """A real `Teacher` (transformers ViTModel architecture) with random weights, in memory:
  make_teacher(width=48, depth=3, grid=4, patch=4) runs on 16x16 images by default."""
  from mim_jax import teachers
  from mim_jax.teachers.network import Arch

  def make(width: int = 48, depth: int = 3, grid: int = 4, patch: int = 4, seed: int = 7):
    arch = Arch(patch=patch, grid=grid, width=width, depth=depth, num_heads=2,
                mlp_dim=2 * width, act="gelu", ln_eps=1e-6)
    return teachers.random_teacher("vit", arch, seed=seed)

  return make


@pytest.fixture(scope="session")
def train_on_batch():
  """train_on_batch(setup, batch, teacher_params, n, state=None) -> (losses, last metrics,
  jitted step): n steps of the real jitted step on one fixed batch (from a fresh state unless
  one is given)."""
  import jax
  from mim_jax import step as step_lib

  def run(setup, batch, teacher_params, n, state=None):
    if state is None:
      state = step_lib.init_state(setup, jax.random.key(0))
    fn = step_lib.jit_train_step(setup, batch)
    losses = []
    for _ in range(n):
      state, metrics = fn(state, teacher_params, batch)
      losses.append(float(metrics["loss"]))
    return losses, metrics, fn

  return run


@pytest.fixture(scope="session")
def runlocal_run(tmp_path_factory):
  """runlocal_run(name) -> LocalRun: configs/<name>.py:runlocal=True through the real loop on the
  digits data, 16 steps at a constant lr of 2e-3 with the kNN evaluation at the last step, its
  teacher the demo's own (trained on first use into a session cache), its config a
  `config_reads.ReadRecorder`. Once per config and session: tests/test_configs.py checks the
  training, tests/test_config_keys.py the keys it read."""
  import dataclasses
  import importlib
  import json
  from unittest import mock
  from mim_jax import demo, train
  from tests import config_reads

  @dataclasses.dataclass(frozen=True)
  class LocalRun:
    method: str
    step: int
    checkpoints: list
    losses: list
    reads: frozenset

  cache_dir = str(tmp_path_factory.mktemp("demo_cache"))
  runs = {}

  def run(name):
    if name not in runs:
      c = importlib.import_module(f"configs.{name}").get_config("runlocal=True")
      c.total_steps, c.warmup_steps, c.warmup_percent = 16, 0, None
      c.optim.lr, c.optim.base_lr, c.optim.schedule = 2e-3, None, "constant"
      c.log_every, c.checkpoint_every, c.eval.every = 1, 16, 16
      workdir = tmp_path_factory.mktemp(f"runlocal_{name}")
      with mock.patch.dict(os.environ, MIM_JAX_CACHE=cache_dir):
        c, reads = config_reads.recorded(c)
        c = demo.resolve_teachers(c)  # as main does (its reads count): the loop sees the
        # teacher's directory
        with config_reads.validation_unrecorded():
          result = train.train_and_evaluate(c, str(workdir))
      with open(workdir / "metrics.jsonl") as f:
        losses = [r["loss"] for r in map(json.loads, f) if "loss" in r]
      runs[name] = LocalRun(method=c.method, step=int(result.state.step),
                            checkpoints=sorted(os.listdir(workdir / "checkpoints")),
                            losses=losses, reads=frozenset(reads.keys))
    return runs[name]

  run.cache_dir = cache_dir  # the demo teacher's, for other uses of the same teacher
  return run
