"""The orderings table (`var_jax.scaling.orderings`): inputs checked before any work."""
import pytest

from var_jax import errors
from var_jax.scaling import orderings


def test_a_missing_sweep_table_is_named_before_any_run_is_timed(tmp_path):
  (tmp_path / 'next_scale').mkdir()
  (tmp_path / 'next_scale' / 'results.csv').write_text(
      'run_id,depth,params,flops,loss,acc,status\nd1-absent,1,1000,1e9,3.0,0.1,done\n')
  with pytest.raises(errors.DataError, match=r'raster/results.csv: missing'):
    orderings.rows(str(tmp_path))


def test_any_two_orderings_are_compared_and_masked_sampling_is_t_full_passes(tmp_path):
  from var_jax import flops
  for order in ('raster', 'masked'):  # no next_scale sweep: two orderings are enough
    run = tmp_path / order / 'd2'
    run.mkdir(parents=True)
    (run / 'config.json').write_text('{"model": {"depth": 2, "patch_nums": [4], "vocab_size": 64}}')
    (tmp_path / order / 'results.csv').write_text('run_id,depth,params,flops,loss,acc,status\nd2,2,1000,1e9,3.0,0.1,done\n')
  rows = orderings.rows(str(tmp_path), time_sampling=False)
  assert [r['order'] for r in rows] == ['raster', 'masked']
  kw = dict(depth=2, patch_nums=(4,), vocab_size=64)
  one_pass = 2 * sum(flops.forward_flops_breakdown(kw, order='masked').values())  # CFG: two rows
  assert rows[1]['sample_flops'] == 8 * one_pass
