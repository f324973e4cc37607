"""Generation-quality evaluation: feature extractors (InceptionV3 of FID) and metrics on features.

Layer: beside `train`; imports errors, models, weights, sharding, numpy, scipy, jax and flax only.
  metrics    FID, Inception Score, precision/recall, sample accuracy, streamed statistics, reference `.npz`
  inception  the FID InceptionV3 in Flax and its weights loader
  features   extractors by name (`get_extractor('inception:PATH')`, `'shapes:DIR'`)
  generate   evaluation-scale sampling: balanced labels, per-index keys, resumable chunks, data parallel
  quality    images (folders, .npz, chunks) and references -> metrics.json figures
"""
