"""`python -m var_jax.demo --out demo_out [--size full|tiny]` (see var_jax/demo/__init__.py)."""
import pathlib
import sys
import time

from absl import flags

from var_jax import cli
from var_jax.demo import report
from var_jax.demo import stages


def main(argv):
  cli.no_positional(argv)
  f = flags.FLAGS
  out = pathlib.Path(f.out).resolve()
  out.mkdir(parents=True, exist_ok=True)
  start = time.monotonic()
  try:
    timings = stages.run_stages(stages.make_stages(out, f.size), out)
  except stages.StageError as e:
    print(f'[demo] FAILED: {e}', file=sys.stderr)
    sys.exit(1)
  path = report.write_report(out, timings, f.size)
  print(f'[demo] done in {time.monotonic() - start:.0f} s; report: {path}', flush=True)


def run():
  flags.DEFINE_string('out', 'demo_out', 'Folder for everything the demo writes.')
  flags.DEFINE_enum('size', 'full', ['full', 'tiny'], "'full' is the real demo (under 10 minutes on 2 cores); "
                    "'tiny' runs each stage for a few steps, for tests.")
  cli.run(main, prog='var-demo')


if __name__ == '__main__':
  run()
