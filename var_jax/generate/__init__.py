"""Generation without training code: any finished run (or official weights) as models, params and a sampler.

  orderings  the registry of sampled tasks: how a run config's `model` group builds its network, and its sampler
  generator  `Generator` (model, params, tokenizer, sampler) loaded from a `RunDir` or from official weights

No training task and no optimizer is built: a run folder's params come from its checkpoint alone
(`var_jax.train.checkpoint.restore_params`), its networks from its config.json.
"""
