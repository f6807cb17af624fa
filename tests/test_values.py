"""Every config value is checked in one place before a run writes anything: each key of every
config has a declared range or choice (mim_jax/allowed.py, declared beside the defaults), a
value outside it is one `error:` line naming key, value and range, and nothing is written; data
and workdir problems too."""
import copy
import glob
import importlib
import os
import shutil
import subprocess
import sys

import ml_collections
import pytest

from mim_jax import defaults
from mim_jax import allowed, objectives, optim, saved_config, validate
from mim_jax import config as config_lib
from mim_jax.data import digits, input_pipeline
from mim_jax.tools import config_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "configs",
                                                                               "*.py"))
                      if not os.path.basename(p).startswith(("_", "common")))
# The keys with no range of their own, and what checks them instead.
FREE = {
    "teacher.spec": "a checkpoint directory or zoo name: read before the run writes",
    "init_from": "a workdir, checkpoint or file: read before the run writes",
    "data.name": "a TFDS name: looked up before the run writes",
    "data.data_dir": "a directory: validate.check_data_dir",
    "data.split": "a TFDS split: looked up with the dataset",
    "data.eval_split": "a TFDS split: looked up with the dataset",
    "objective.stats_path": "an .npz file: read when the model is built",
    "optim.frozen": "parameter groups: the linear probe requires its own",
}


def every_config():
  """(name, plain dict) of each get_*config of each config file, at default and runlocal."""
  for name in CONFIG_FILES:
    module = importlib.import_module(f"configs.{name}")
    for fn in sorted(n for n in dir(module) if n.startswith("get_") and n.endswith("config")):
      for arg in (None, "runlocal=True"):
        yield f"{name}.{fn}({arg or ''})", getattr(module, fn)(arg).to_dict()


CONFIGS = dict(every_config())


def set_key(config: dict, key: str, value) -> dict:
  out = copy.deepcopy(config)
  *parents, leaf = key.split(".")
  node = out
  for p in parents:
    node = node[p]
  node[leaf] = value
  return out


# ---- the declarations ------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_key_has_a_declaration_and_every_default_fits_it(name):
  config = CONFIGS[name]
  declared = validate.declarations(config)
  keys = set(config_lib.flatten(config))
  assert sorted(keys - set(declared)) == [], "declare these keys beside their defaults"
  assert validate.problems(config) == []


def test_the_keys_without_a_range_are_these():
  free = {k for config in CONFIGS.values() for k, d in validate.declarations(config).items()
          if d.bad is None and k in config_lib.flatten(config)}
  assert free == set(FREE)


def test_declarations_name_existing_keys_only():
  """No stale declaration: each names a key its defaults build."""
  for method in objectives.METHODS:
    module = objectives.get(method)
    assert set(module.ALLOWED) == set(config_lib.flatten(module.default_config().to_dict()))
  assert set(input_pipeline.ALLOWED) == set(input_pipeline.default_config())
  every_key = {k for config in CONFIGS.values() for k in config_lib.flatten(config)}
  assert set(defaults.ALLOWED) <= every_key
  assert {f"augment.{k}" for k in input_pipeline.AUGMENT_ALLOWED} <= every_key


# ---- the walk: one bad value per key of every config -------------------------------------------
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_one_bad_value_per_key_is_refused_naming_the_key(name):
  config = CONFIGS[name]
  declared = validate.declarations(config)
  walked = 0
  for key in sorted(config_lib.flatten(config)):
    rule = declared[key]
    if rule.bad is None:  # a free key (FREE)
      continue
    bad = set_key(config, key, rule.bad)
    with pytest.raises(ValueError) as e:
      validate.check_values(bad)
    line = str(e.value)
    assert "\n" not in line
    assert line.startswith(f"--config.{key}={rule.bad!r} is out of range: {key} takes "), line
    walked += 1
  assert walked >= len(config_lib.flatten(config)) - len(FREE)


@pytest.mark.parametrize("key,value,words", [
    ("optim.base_lr", -0.001, "a number >= 0"),
    ("optim.lr", -0.001, "a number >= 0, or None"),
    ("optim.weight_decay", -0.05, "a number >= 0"),
    ("total_steps", 0, "an integer >= 1, or None"),
    ("batch_size", 0, "an integer >= 1"),
    ("mask.ratio", 1.5, "a number in [0, 1]"),
    ("warmup_percent", 1.2, "a number in [0, 1], or None"),
    ("mask.kind", "blocks", "one of 'none', 'random', 'attentive', 'focused', 'block'"),
    ("student.variant", "B/0x", "a ViT variant"),
    ("data.crop_scale", (0.5, 0.2), "two numbers lo <= hi in (0, 1]"),
])
def test_the_issue_values_are_refused(key, value, words):
  config = set_key(CONFIGS["maskalign_b16_clip_b16.get_config(runlocal=True)"], key, value)
  with pytest.raises(ValueError, match=r"^--config\." + key.replace(".", r"\.")) as e:
    validate.check_values(config)
  assert words in str(e.value)


# ---- bounds by other values --------------------------------------------------------------------
MASKALIGN_LOCAL = "maskalign_b16_clip_b16.get_config(runlocal=True)"  # nano/4 at 16 px: 16 patches


@pytest.mark.parametrize("kind", ["random", "attentive", "block"])
def test_a_mask_ratio_must_leave_a_patch_visible(kind):
  config = set_key(CONFIGS[MASKALIGN_LOCAL], "mask.kind", kind)
  validate.check_values(set_key(config, "mask.ratio", 0.9))  # 1 of 16 patches visible
  with pytest.raises(ValueError, match=r"mask.ratio=1.0 .* leaves at least one of the 16 patches"):
    validate.check_values(set_key(config, "mask.ratio", 1.0))
  validate.check_values(set_key(set_key(config, "mask.kind", "none"), "mask.ratio", 1.0))  # no masking


def test_lr_replaces_base_lr_and_an_ignored_base_lr_is_refused(tmp_path):
  """optim.lr replaces the batch-scaled optim.base_lr: a config that sets lr leaves base_lr None,
  and --config.optim.base_lr while lr is set (by the config or the command line) is refused."""
  maskalign = CONFIGS[MASKALIGN_LOCAL]  # base_lr 1.5e-4, lr None
  assert optim.peak_lr(ml_collections.ConfigDict(maskalign["optim"]), 512) == 1.5e-4 * 2
  both = set_key(maskalign, "optim.lr", 1e-3)
  assert optim.peak_lr(ml_collections.ConfigDict(both["optim"]), 512) == 1e-3
  with pytest.raises(ValueError, match="optim.lr and optim.base_lr are both None"):
    optim.peak_lr(ml_collections.ConfigDict(set_key(maskalign, "optim.base_lr", None)["optim"]), 8)
  for name, config in CONFIGS.items():
    if config["optim"]["lr"] is not None:
      assert config["optim"]["base_lr"] is None, name
  demo = config_file.load("configs/demo.py:runlocal=True")  # lr 1e-3
  with pytest.raises(ValueError, match=r"^--config.optim.base_lr=0.01 would not be used: "
                                       r"optim.lr=0.001 replaces it; set --config.optim.lr"):
    config_file.check_replaced(demo, {"optim.base_lr": "0.01"}, prefix="--config.")
  config_file.check_replaced(demo, {"optim.lr": "0.01"})
  maskalign = config_file.load("configs/maskalign_b16_clip_b16.py:runlocal=True")
  config_file.check_replaced(maskalign, {"optim.base_lr": "0.01"})
  with pytest.raises(ValueError, match="optim.lr=0.1 replaces it"):
    config_file.check_replaced(maskalign, {"optim.base_lr": "0.01", "optim.lr": "0.1"})
  r, errors = run_main(["--config", "configs/demo.py:runlocal=True",
                        "--config.optim.base_lr=0.01"], tmp_path / "run")
  assert r.returncode == 1 and len(errors) == 1, r.stderr[-2000:]
  assert errors[0].startswith("error: --config.optim.base_lr=0.01 would not be used")
  assert not (tmp_path / "run").exists()


def test_image_size_must_be_whole_patches():
  config = CONFIGS[MASKALIGN_LOCAL]
  with pytest.raises(ValueError, match=r"data.image_size=18 .* multiple of the student's patch 4"):
    validate.check_values(set_key(config, "data.image_size", 18))
  validate.check_values(set_key(config, "data.image_size", 20))


def test_top_k_and_mid_layer_lie_within_the_teachers_depth(tiny_vit_teacher_dir):
  config = set_key(CONFIGS[MASKALIGN_LOCAL], "teacher.spec", tiny_vit_teacher_dir)  # 2 blocks
  validate.check_values(set_key(config, "objective.top_k", 2))
  with pytest.raises(ValueError, match=r"top_k=3 .* integer in \[1, 2\] \(the teacher has 2"):
    validate.check_values(set_key(config, "objective.top_k", 3))
  mid = set_key(config, "objective.layer_weights", "mid")
  validate.check_values(set_key(mid, "objective.mid_layer", 1))
  with pytest.raises(ValueError, match=r"mid_layer=2 .* integer in \[0, 1\]"):
    validate.check_values(set_key(mid, "objective.mid_layer", 2))
  # the bound follows the weighting that reads the key: top_k=3 is not read by "mid"
  validate.check_values(set_key(set_key(mid, "objective.mid_layer", 1), "objective.top_k", 3))


def test_warmup_within_the_run_and_decoder_heads_divide_its_width():
  config = CONFIGS[MASKALIGN_LOCAL]  # total_steps 4
  with pytest.raises(ValueError, match=r"warmup_steps=5 .* at most total_steps \(4\)"):
    validate.check_values(set_key(config, "warmup_steps", 5))
  mae = CONFIGS["mae_b16.get_config(runlocal=True)"]  # decoder width 32
  with pytest.raises(ValueError, match=r"decoder.heads=3 .* divisor of objective.decoder.width"):
    validate.check_values(set_key(mae, "objective.decoder.heads", 3))


# ---- through the command line: one line, printed once, nothing written -------------------------
def run_main(args, workdir, cwd=ROOT, prefix=()):
  r = subprocess.run([*prefix, sys.executable, "-m", "mim_jax.main", *args, "--workdir",
                      str(workdir)], capture_output=True, text=True, cwd=cwd, timeout=300)
  errors = [line for line in r.stderr.splitlines() if "error:" in line]
  return r, errors


@pytest.mark.parametrize("override,words", [
    ("--config.optim.base_lr=-0.001",
     "error: --config.optim.base_lr=-0.001 is out of range: optim.base_lr takes a number >= 0, "
     "or None."),
    pytest.param("--config.total_steps=0", "error: --config.total_steps=0 is out of range: "
                 "total_steps takes an integer >= 1, or None.", marks=pytest.mark.slow),
    pytest.param("--config.mask.ratio=1.0", "error: --config.mask.ratio=1.0 is out of range: "
                 "mask.ratio takes a number in [0, 1] that leaves at least one of the 16 patches",
                 marks=pytest.mark.slow),
])
def test_a_bad_value_is_one_line_printed_once_and_nothing_is_written(tmp_path, override, words):
  workdir = tmp_path / "run"
  r, errors = run_main(["--config", "configs/maskalign_b16_clip_b16.py:runlocal=True",
                        override], workdir)
  assert r.returncode == 1
  assert len(errors) == 1 and errors[0].startswith(words), r.stderr[-2000:]
  assert r.stderr.count(words[len("error: "):]) == 1  # not logged a second time
  assert not workdir.exists()


@pytest.mark.slow
@pytest.mark.parametrize("workdir,words", [
    ("/proc/mim_jax_run", "/proc is on the kernel's proc file system, which holds no files; "
                          "choose a workdir on a writable disk"),
])
def test_a_workdir_where_nothing_can_be_written_is_one_line(workdir, words):
  r, errors = run_main(["--config", "configs/classify_digits.py:runlocal=True"], workdir)
  assert r.returncode == 1 and len(errors) == 1 and words in errors[0], r.stderr[-2000:]


# ---- the data directory: read-only works, unreadable is one line -------------------------------
def without_root_powers() -> list[str]:
  """A command prefix under which file permissions hold even for root (it drops the
  capabilities that bypass them), or [] for another user."""
  if os.geteuid() != 0:
    return []
  if not shutil.which("setpriv"):
    pytest.skip("running as root without setpriv: permissions cannot be tested")
  caps = "-dac_override,-dac_read_search"
  return ["setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}"]


@pytest.fixture
def built_digits(tmp_path):
  """A copy of the built digits dataset, in tmp."""
  source = digits.ensure_built(os.environ["TFDS_DATA_DIR"]).data_dir_root
  data_dir = tmp_path / "tfds"
  shutil.copytree(os.path.join(source, digits.NAME), data_dir / digits.NAME)
  return data_dir


def files_under(path) -> list[str]:
  return sorted(os.path.relpath(os.path.join(d, f), path)
                for d, _, fs in os.walk(path) for f in fs)


@pytest.mark.slow
def test_a_read_only_dataset_is_read_and_nothing_is_written_into_it(built_digits):
  before = files_under(built_digits)
  for d, _, _ in os.walk(built_digits):
    os.chmod(d, 0o555)
  script = ("from mim_jax import validate\nfrom mim_jax.data import input_pipeline\n"
            f"data = dict(name='mim_digits', data_dir={str(built_digits)!r})\n"
            "validate.check_data_dir(data)\n"
            "print(input_pipeline.num_examples(__import__('ml_collections').ConfigDict(data)))\n")
  r = subprocess.run([*without_root_powers(), sys.executable, "-c", script], cwd=ROOT,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  assert r.stdout.split() == ["1497"]
  assert files_under(built_digits) == before  # no lock file, nothing else


@pytest.mark.slow
def test_an_unreadable_data_dir_is_one_line(built_digits, tmp_path):
  os.chmod(built_digits, 0)
  workdir = tmp_path / "run"
  try:
    r, errors = run_main(["--config", "configs/classify_digits.py:runlocal=True",
                          f"--config.data.data_dir={built_digits}"], workdir,
                         prefix=without_root_powers())
  finally:
    os.chmod(built_digits, 0o755)
  assert r.returncode == 1 and len(errors) == 1, r.stderr[-2000:]
  assert errors[0] == (f"error: --config.data.data_dir={built_digits} cannot be read "
                       f"(permissions): make it readable for this user (chmod u+rx, or a+rx for a "
                       f"shared one), or set --config.data.data_dir to a readable copy.")
  assert "Traceback" not in r.stderr and not workdir.exists()


@pytest.mark.slow
def test_an_unbuilt_dataset_in_a_read_only_place_is_refused_before_building(tmp_path):
  read_only = tmp_path / "ro"
  read_only.mkdir()
  os.chmod(read_only, 0o555)
  script = ("from mim_jax import validate\n"
            f"validate.check_data_dir(dict(name='mim_digits', data_dir={str(read_only / 'd')!r}))\n")
  r = subprocess.run([*without_root_powers(), sys.executable, "-c", script], cwd=ROOT,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 1 and "ValueError: --config.data.data_dir=" in r.stderr
  assert "(the digits dataset is built there on first use): " in r.stderr
  assert f"{read_only} is not writable" in r.stderr and os.listdir(read_only) == []


def test_the_file_system_table_is_read_for_the_longest_mount_point(tmp_path):
  mounts = tmp_path / "mounts"
  mounts.write_text("/dev/sda1 / ext4 rw 0 0\nproc /proc proc rw 0 0\n"
                    "tmpfs /procedures tmpfs rw 0 0\n")
  assert validate.file_system("/proc/1/x", str(mounts)) == "proc"
  assert validate.file_system("/procedures/x", str(mounts)) == "tmpfs"
  assert validate.file_system("/home/x", str(mounts)) == "ext4"
  assert validate.file_system("/x", str(tmp_path / "missing")) is None
