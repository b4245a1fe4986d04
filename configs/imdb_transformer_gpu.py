"""IMDB with a transformer sized for one accelerator: 6 pre-LN blocks, D=512, 8 heads, T=512.

configs/imdb_transformer.py scaled up until a GPU (an H200) has work to do each step:
D=512, 6 layers, 8 heads of 64, feed-forward 2048, 512 tokens, batch 128, compute dtype "auto"
(bfloat16 on a GPU or TPU, float32 on a CPU; float32 parameters and optimizer state). Model
FLOPs of a train step (forward + backward, counted from the shapes as benchmarks/train.py does):
3 * 6 * (2*T*(4D^2 + 2DF) + 4*T^2*D) = 68 GFLOP per example, 8.7 TFLOP per step of 128.
No attention dropout, so "auto" may pick a fused attention kernel (cuDNN on a GPU).
benchmarks/train.py --models transformer_gpu compares its step with the same architecture in
PyTorch on the same device. On a 2-core CPU one step takes many seconds: use
configs/imdb_transformer.py there.
"""

from pathlib import Path

from jaxnn.train.config import config_from_file


def get_config():
    config = config_from_file(Path(__file__).with_name("imdb_transformer.py"))
    config.data.max_len = 512
    config.model.embed_dim = 512
    config.model.num_layers = 6
    config.model.num_heads = 8
    config.model.mlp_dim = 2048
    config.model.dtype = "auto"  # bfloat16 on GPU/TPU; float32 on CPU, where it compiles faster
    config.model.attention_dropout = 0.0
    config.optim.learning_rate = 3e-4
    config.optim.warmup_steps = 100
    config.train.batch_size = 128
    config.train.eval_batch_size = 256
    return config
