"""A cheap, known objective for tuner tests (loaded by path; also run in subprocesses).

Validation macro F1 of a config is a separable function of its hyperparameters with a known
optimum; validation accuracy prefers a different learning rate, and the (misleading) training
accuracy and the test metrics prefer other values again, so a test can tell which one the tuner
selected on. A learning rate >= 1 "diverges": the trial fails with a non-finite loss.
"""

import math
import os
import time

from jaxnn.train.config import base_config
from jaxnn.tune.tuner import TrialResult

F1_BEST = {
    "learning_rate": 3e-3,
    "dropout": 0.3,
    "hidden_size": 64,
    "batch_size": 32,
    "weight_decay": 1e-4,
    "embed_dim": 32,
    "optimizer": "adamw",
    "activation": "gelu",
}
ACC_BEST_LR = 1e-2
EPOCHS = 3


def term(name, value, best):
    if name in ("optimizer", "activation"):
        return 0.0 if value == best else -0.01
    if name in ("learning_rate", "weight_decay"):
        return -0.02 * (math.log10(max(value, 1e-8)) - math.log10(best)) ** 2
    if name == "dropout":
        return -0.1 * (value - best) ** 2
    return -0.01 * abs(math.log2(value / best))


def hparams(config):
    return {
        "learning_rate": config.optim.learning_rate,
        "dropout": config.model.dropout,
        "hidden_size": config.model.hidden_size,
        "batch_size": config.train.batch_size,
        "weight_decay": config.optim.weight_decay,
        "embed_dim": config.model.embed_dim,
        "optimizer": config.optim.optimizer,
        "activation": config.model.activation,
    }


def f1_score(h):
    return 0.9 + sum(term(k, v, F1_BEST[k]) for k, v in h.items())


def acc_score(h):
    return f1_score(
        {**h, "learning_rate": h["learning_rate"] * F1_BEST["learning_rate"] / ACC_BEST_LR}
    )


class FakeRunner:
    """Records every call; ``sleep_s`` per trial; ``barrier`` waits for ``parties`` processes."""

    def __init__(self, sleep_s=0.0, log_path=None, barrier=None, parties=1, block_at=None):
        self.calls, self.test_calls = [], []
        self.sleep_s, self.log_path, self.barrier, self.parties = (
            sleep_s,
            log_path,
            barrier,
            parties,
        )
        self.block_at = block_at
        self.count = 0

    def _wait_for_others(self):
        if not self.barrier:
            return
        os.makedirs(self.barrier, exist_ok=True)
        open(os.path.join(self.barrier, str(os.getpid())), "w").close()
        deadline = time.time() + 120
        while len(os.listdir(self.barrier)) < self.parties and time.time() < deadline:
            time.sleep(0.05)

    def run(self, configs):
        if not self.calls:
            self._wait_for_others()
        self.calls.append([c.to_dict() for c in configs])
        out = []
        for config in configs:
            self.count += 1
            if self.block_at is not None and self.count == self.block_at:
                open(self.log_path + ".blocked", "w").close()
                time.sleep(3600)
            if self.log_path:
                with open(self.log_path, "a") as f:
                    f.write(f"{os.getpid()} {hparams(config)}\n")
            time.sleep(self.sleep_s)
            out.append(result(config))
        return out

    def evaluate_test(self, config):
        self.test_calls.append(config.to_dict())
        h = hparams(config)
        return {"accuracy": acc_score(h) - 0.05, "macro_f1": f1_score(h) - 0.05}


def result(config):
    h = hparams(config)
    if h["learning_rate"] >= 1.0:
        history = [
            {"epoch": 1, "train_loss": math.nan, "val_accuracy": math.nan, "val_macro_f1": math.nan}
        ]
        return TrialResult("failed", history, 0.01, "non-finite training loss at epoch 1, step 3")
    history = []
    for epoch in range(1, EPOCHS + 1):
        late = 0.01 * (EPOCHS - epoch)  # the last epoch is the best
        history.append(
            {
                "epoch": epoch,
                "train_loss": 1.0 / epoch,
                "train_accuracy": 1.0 - 0.5 * h["dropout"],  # misleading: prefers no dropout
                "val_accuracy": acc_score(h) - late,
                "val_macro_f1": f1_score(h) - late,
            }
        )
    return TrialResult("complete", history, 0.01)


def make_config(candidates, pairs=(), metric="macro_f1", group_size=8, **tune):
    config = base_config()
    config.model.hidden_size = 16
    config.tune = dict(
        candidates=candidates,
        pairs=list(pairs),
        metric=metric,
        group_size=group_size,
        poll_interval_s=0.05,
        **tune,
    )
    return config
