"""IMDB with a small pre-LN transformer encoder (2 blocks, 4 heads, D=128), AdamW, warmup+cosine.

Mixed precision where it pays: model.dtype "auto" computes in bfloat16 on a GPU or TPU and in
float32 on the CPU. On a CPU, train.py's process flags (one XLA:CPU device per core, the "keep"
host allocator) speed it up; they are not part of the experiment.
"""

from jaxnn.train.config import base_config


def get_config():
    config = base_config()
    config.data.corpus = "imdb"
    config.data.max_len = 256
    config.data.min_freq = 2
    config.data.max_vocab_size = 30000
    config.model.name = "transformer"
    config.model.embed_dim = 128
    config.model.num_layers = 2
    config.model.num_heads = 4
    config.model.mlp_dim = 256
    config.model.activation = "gelu"
    config.model.norm = "layer"
    config.model.pooling = "mean"
    config.model.dropout = 0.1
    # bfloat16 compute on GPU/TPU, float32 on CPU; parameters and optimizer state stay float32
    config.model.dtype = "auto"
    config.optim.optimizer = "adamw"
    config.optim.learning_rate = 1e-3
    config.optim.weight_decay = 0.01
    config.optim.grad_clip_norm = 1.0
    config.optim.warmup_steps = 200
    config.train.batch_size = 64
    config.train.eval_batch_size = 256
    config.train.num_epochs = 4
    config.train.patience = 2
    config.train.log_every_steps = 50
    return config
