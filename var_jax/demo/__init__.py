r"""`make demo`: the whole var_jax loop on a CPU, on a dataset it draws itself.

  python -m var_jax.demo --out demo_out [--size full|tiny]

Stages (`stages.make_stages`), each a subprocess of one of var_jax's own commands, logged to OUT/logs/STAGE.log:
data -> tokenizer -> tokenize -> sweep -> fit -> classifier -> sample, then the report (`report.write_report`,
OUT/report.md). `quality` is the sample stage's command: samples of every size of the sweep, scored by the
shapes classifier (FD against held-out images, sample accuracy). A stage whose output already exists is reused,
so a rerun after a failure continues where it stopped.
"""
