"""jaxnn: neural-network building blocks, text classifiers and training as fast, tested JAX code.

Layers, lowest first (imports point down only):
  jaxnn.ops      pure functions: activations, softmax, dropout, norms, pooling, attention, losses
  jaxnn.nn       thin flax.linen modules over jaxnn.ops
  jaxnn.models   whole text classifiers (bag-of-words, transformer)
  jaxnn.data     corpora, vocabulary with <pad>/<unk>, bucketed batches
  jaxnn.metrics  accuracy, macro F1 and friends over confusion matrices
  jaxnn.train    optimizers, jitted steps, the loop, checkpoints
  jaxnn.tune, jaxnn.analysis   built on jaxnn.train
"""

__version__ = "0.1.0"
