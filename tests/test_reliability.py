"""What pods do to a run: corrupt checkpoints, resumes that must not repeat or shift anything,
bad input refused before anything is written."""
import functools
import os
import re
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mim_jax import checkpoint as ckpt_lib
from mim_jax.tools import reliability


# --------------------------------------------------------------------------------------------
# Checkpoints that cannot be read.
# --------------------------------------------------------------------------------------------
def _state(scale):
  return {"a": jnp.arange(300.0) * scale, "b": {"c": jnp.full((20, 20), scale, jnp.float32)}}


def _write_steps(workdir, steps):
  mngr = ckpt_lib.manager(workdir, asynchronous=False)
  for s in steps:
    ckpt_lib.save(mngr, s, _state(float(s)), data={"records": [s * 10], "skipped": [s]})
  mngr.wait_until_finished()
  mngr.close()
  return os.path.join(workdir, "checkpoints")


def _drop_metadata(step_dir):
  reliability.drop_metadata(step_dir)
  for f in reliability.array_files(step_dir):  # and the arrays: nothing left to read
    os.remove(f)


def _restore(workdir):
  abstract = jax.eval_shape(lambda: _state(1.0))
  shardings = jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]),
                           abstract)
  return ckpt_lib.restore_latest(ckpt_lib.manager(workdir, asynchronous=False), abstract,
                                 shardings)


@pytest.mark.parametrize("corrupt,reason", [
    (reliability.truncate, r"its array file state/d/[0-9a-f]+ is truncated"),
    (reliability.garble, r"its array file state/d/[0-9a-f]+ is garbled: it does not decode"),
    (_drop_metadata, r"its metadata file state/_METADATA is missing")])
def test_corrupt_newest_checkpoint_falls_back_to_the_previous(tmp_path, corrupt, reason, caplog):
  root = _write_steps(str(tmp_path), [1, 2, 3])
  corrupt(os.path.join(root, "3"))
  with caplog.at_level("WARNING"):
    step, state, data = _restore(str(tmp_path))
  assert step == 2
  np.testing.assert_array_equal(np.asarray(state["a"]), np.arange(300.0) * 2)
  assert data == {"records": [20], "skipped": [2]}
  assert sorted(os.listdir(root)) == ["1", "2", "corrupt-3-0"]  # moved aside, not deleted
  warnings = [r.getMessage() for r in caplog.records if "cannot be read" in r.getMessage()]
  assert len(warnings) == 1 and "step 3" in warnings[0] and "resumed from step 2" in warnings[0]
  assert re.search(rf"step 3 cannot be read \({reason}\); moved", warnings[0]), warnings[0]


def test_corrupt_twice_keeps_both_aside_and_saving_goes_on(tmp_path):
  root = _write_steps(str(tmp_path), [1, 2, 3])
  reliability.truncate(os.path.join(root, "3"))
  assert _restore(str(tmp_path))[0] == 2
  _write_steps(str(tmp_path), [3])  # the run writes step 3 again...
  reliability.garble(os.path.join(root, "3"))  # ...and it is corrupt again
  assert _restore(str(tmp_path))[0] == 2
  assert sorted(os.listdir(root)) == ["1", "2", "corrupt-3-0", "corrupt-3-1"]


def test_no_readable_checkpoint_is_one_error_and_moves_nothing(tmp_path):
  root = _write_steps(str(tmp_path), [1, 2])
  for s in ("1", "2"):
    reliability.truncate(os.path.join(root, s))
  with pytest.raises(ckpt_lib.CheckpointError, match=r"step 2: .*; step 1: .*fresh --workdir"):
    _restore(str(tmp_path))
  assert sorted(os.listdir(root)) == ["1", "2"]


def test_an_empty_directory_restores_nothing(tmp_path):
  assert _restore(str(tmp_path)) == (None, None, None)


# --------------------------------------------------------------------------------------------
# Metrics exactly once per step across resumes.
# --------------------------------------------------------------------------------------------
def _tb_steps(workdir, tag="loss"):
  from tensorboard.backend.event_processing import plugin_event_accumulator as pea
  acc = pea.EventAccumulator(str(workdir), size_guidance={"tensors": 0})
  acc.Reload()
  return [e.step for e in acc.Tensors(tag)]


def test_resumed_writer_drops_records_after_the_restored_step(tmp_path):
  from mim_jax import metrics
  w = metrics.Writer(str(tmp_path))
  for s in range(1, 7):
    w.write(s, {"loss": float(s)})
  w.close()
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 7, "lo')  # killed mid-line
  time.sleep(2.1)  # a restart takes seconds; TensorBoard orders files by their time stamp
  w = metrics.Writer(str(tmp_path), start_step=4)  # resumed from the checkpoint of step 4
  for s in range(5, 9):
    w.write(s, {"loss": 10.0 * s})
  w.close()
  import json
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in rows] == list(range(1, 9))
  assert [r["loss"] for r in rows] == [1, 2, 3, 4, 50, 60, 70, 80]
  # TensorBoard: the restart marker purges the first run's steps 5 and 6.
  assert _tb_steps(tmp_path) == list(range(1, 9))


def test_writer_of_a_fresh_run_keeps_a_clean_file(tmp_path):
  from mim_jax import metrics
  w = metrics.Writer(str(tmp_path), start_step=0)
  w.write(1, {"loss": 1.0})
  w.close()
  assert not [f for f in os.listdir(tmp_path) if "restart" in f]
  assert metrics.truncate_jsonl(__import__("etils").epath.Path(tmp_path) / "metrics.jsonl", 1) == 0


# --------------------------------------------------------------------------------------------
# The data position is part of the checkpoint: resume with corrupt records is exact.
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cache", [False, True])
def test_resume_with_corrupt_images_reads_what_a_straight_run_reads(tmp_path, cache):
  import tensorflow_datasets as tfds
  from jax.sharding import Mesh
  from mim_jax.data import input_pipeline as ip
  from tests.test_data import _config, _source_with_corrupt_images
  mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("data", "fsdp"))
  config = _config(str(tmp_path), name="imagenet2012", shuffle_buffer=4, cache=cache)
  make = functools.partial(ip.make_pretrain_iterator, config, global_batch_size=8, mesh=mesh,
                           seed=3)
  with tfds.testing.mock_data(as_dataset_fn=_source_with_corrupt_images):
    straight = make()
    batches, skipped = [], []
    for _ in range(6):
      batches.append(np.asarray(next(straight)["image"]))
      skipped.append(straight.num_skipped())
    first = make()
    for _ in range(3):
      next(first)
    saved = ip.gather_positions(first)  # what the checkpoint of step 3 holds
    resumed = make(start_step=3, position=ip.host_position(saved))
    for i in range(3, 6):
      np.testing.assert_array_equal(np.asarray(next(resumed)["image"]), batches[i])
      assert resumed.num_skipped() == skipped[i]
    if not cache:  # without the saved position the stream is shifted by the corrupt records
      old = make(start_step=3)
      assert not np.array_equal(np.asarray(next(old)["image"]), batches[3])


def test_positions_of_another_host_count_are_not_used():
  from mim_jax.data import input_pipeline as ip
  assert ip.host_position({"records": [5, 7], "skipped": [1, 2]}) is None  # 1 process here
  assert ip.host_position(None) is None
  far = type("Far", (), {"position": lambda self: {"records": (3 << 31) + 5, "skipped": 4}})()
  gathered = ip.gather_positions(far)  # beyond int32: carried exactly
  assert gathered == {"records": [(3 << 31) + 5], "skipped": [4]}
  assert ip.host_position(gathered) == {"records": (3 << 31) + 5, "skipped": 4}


# --------------------------------------------------------------------------------------------
# Bad input: one `error:` line, nothing written.
# --------------------------------------------------------------------------------------------
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(cwd, workdir, *overrides):
  import subprocess
  import sys
  env = dict(os.environ, PYTHONPATH=REPO)
  return subprocess.run(
      [sys.executable, "-m", "mim_jax.main", "--config",
       os.path.join(REPO, "configs/maskalign_b16_clip_b16.py:runlocal=True"), "--workdir",
       workdir, *overrides], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def _read_only_dir(tmp_path):
  """A read-only tmpfs mounted in tmp_path (root can write anywhere else); skips without one."""
  import subprocess
  path = tmp_path / "ro"
  path.mkdir()
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)],
                    capture_output=True).returncode:
    if os.access(path, os.W_OK):
      os.chmod(path, 0o555)  # enough when not root
      if os.access(path, os.W_OK):
        pytest.skip("no read-only directory can be made here")
  return path


@pytest.mark.parametrize("case", ["empty", "under_file", "read_only", "batch"])
def test_bad_input_is_one_error_line_and_writes_nothing(tmp_path, case):
  import subprocess
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  (tmp_path / "file").write_text("x")
  overrides, where = [], None
  if case == "empty":
    workdir, expect = "", "--workdir '' is empty"
  elif case == "under_file":
    workdir, expect = str(tmp_path / "file" / "run"), "is a file, not a directory"
  elif case == "read_only":
    where = _read_only_dir(tmp_path)
    workdir, expect = str(where / "run"), "is not writable"
  else:
    workdir, expect = str(tmp_path / "run"), "--config.batch_size=12: "
    overrides = ["--config.batch_size=12", "--config.mesh.data=-1"]  # 8 devices: 8 shards
  before = sorted(os.listdir(tmp_path))
  try:
    r = _main(str(cwd), workdir, *overrides)
    after_ro = os.listdir(where) if where else []
  finally:
    if where:
      subprocess.run(["umount", str(where)], capture_output=True)
  assert r.returncode != 0
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith("error:") and expect in last, r.stderr[-2000:]
  if case == "batch":
    assert "use a multiple of 8" in last
  assert os.listdir(cwd) == [] and sorted(os.listdir(tmp_path)) == before and after_ro == []


@pytest.mark.slow
def test_random_kills_leave_one_record_per_step_and_the_straight_state(
    tmp_path, tiny_vit_teacher_dir, tfds_data_dir, capsys):
  """3 real SIGKILLs of `python -m mim_jax.main` at random moments, each resumed: the final
  checkpoint equals the straight run's bit for bit, metrics.jsonl has one record per step.

  Each kill lands 1-3 logged steps after the previous resume plus up to 0.4 s (in which a run
  here logs 2 steps at most: every other step waits ~0.6-2 s for its checkpoint), and a resume
  starts over from the last checkpoint: 24 steps leave room for all three; 8 need not (a
  run that finishes first ends the scenario with fewer kills)."""
  from mim_jax.data import digits
  digits.ensure_built(tfds_data_dir)
  code = reliability.main(["--teacher", tiny_vit_teacher_dir, "--out", str(tmp_path / "k"),
                           "--only", "kills", "--kills", "3", "--steps", "24"])
  out = capsys.readouterr().out
  assert code == 0, out
  row = next(line for line in out.splitlines() if line.startswith("| kills |"))
  assert row.startswith("| kills | 3 SIGKILLs ") and row.endswith("| ok |"), row
  assert "24 records for 24 steps" in row, row


# --------------------------------------------------------------------------------------------
# The long suite (not run by default; `pytest -m reliability tests/test_reliability.py`).
# --------------------------------------------------------------------------------------------
@pytest.mark.reliability
@pytest.mark.slow
def test_reliability_suite(tmp_path, tiny_vit_teacher_dir, tfds_data_dir, capsys):
  """Every scenario of mim_jax/tools/reliability.py for real; prints its table."""
  from mim_jax.data import digits
  digits.ensure_built(tfds_data_dir)
  kills = int(os.environ.get("MIM_JAX_RELIABILITY_KILLS", "10"))
  code = reliability.main(["--teacher", tiny_vit_teacher_dir, "--out", str(tmp_path / "suite"),
                           "--kills", str(kills)])
  with capsys.disabled():
    print("\n" + capsys.readouterr().out)
  assert code == 0
