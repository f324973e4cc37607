"""Generation-quality evaluation: feature extractors (InceptionV3 of FID) and metrics on features.

Layer: beside `train`; imports errors, models, weights, numpy, scipy, jax and flax only.
  metrics    FID, Inception Score, precision/recall, sample accuracy, streamed statistics, reference `.npz`
  inception  the FID InceptionV3 in Flax and its weights loader
  features   extractors by name (`get_extractor('inception:PATH')`, `'shapes:DIR'`)
"""
