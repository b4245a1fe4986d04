"""Command line: ``python -m jaxnn.tune --config=configs/tune_bbc.py --workdir=runs/tune_bbc``.

--search=progressive (default) tunes stage by stage and writes tune_results.json / .md / plots;
--search=random or tpe runs that baseline alone; --search=compare runs progressive, then each
search of ``tune.compare`` with the same number of trials, and writes compare.json / compare.md.
--storage overrides tune.storage (default sqlite:///<workdir>/tune.db; a PostgreSQL URL lets
many machines share a study). Config values override as usual: --config.tune.metric=accuracy.
Run the same command in several terminals to share the work of one study.
--host_allocator, --cpu_vector_width, --cpu_devices: settings of a CPU process (jaxnn.launch).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from jaxnn.launch import TUNING_DEFAULTS, configure_process
from jaxnn.launch.flags import define_process_flags
from jaxnn.tune.report import comparison_markdown
from jaxnn.tune.runners import make_runner
from jaxnn.tune.tuner import ProgressiveTuner, run_search, split_config

_CONFIG = config_flags.DEFINE_config_file("config", None, "tuning config file (get_config()).")
_WORKDIR = flags.DEFINE_string("workdir", None, "output directory (tune.db lives here by default)")
_STORAGE = flags.DEFINE_string("storage", None, "Optuna database URL (overrides tune.storage)")
_SEARCH = flags.DEFINE_enum(
    "search", "progressive", ["progressive", "random", "tpe", "compare"], "what to run"
)
_N_TRIALS = flags.DEFINE_integer("n_trials", 0, "random/tpe budget (0 = progressive's count)")
_PROCESS_FLAGS = define_process_flags()
flags.mark_flags_as_required(["config", "workdir"])


def _row(corpus: str, search: str, out: dict, metric: str) -> dict:
    best = out.get("best") or {}
    return {
        "corpus": corpus,
        "search": search,
        "n_trials": out["n_trials"],
        "best_value": (best.get("validation") or {}).get("value"),
        "hyperparameters": best.get("hyperparameters"),
        "wall_time_s": out.get("wall_time_s"),
        "metric": metric,
    }


def main(argv: list[str]) -> int | None:
    del argv
    config = _CONFIG.value
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:  # before JAX's first computation; CPU runs only
        configure_process(**_PROCESS_FLAGS(), defaults=TUNING_DEFAULTS)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    workdir = Path(_WORKDIR.value)
    train_config, options = split_config(config)  # every check before any data is loaded
    runner = make_runner(options.engine, max_group=options.group_size)
    corpus = train_config.data.corpus
    if _SEARCH.value in ("progressive", "compare"):
        results = ProgressiveTuner(config, workdir, runner, storage=_STORAGE.value).run()
        print(Path(workdir / "tune_results.md").read_text())
        if _SEARCH.value == "progressive":
            return
        best = max(
            (c for s in results["stages"] for c in s["candidates"] if c["status"] == "complete"),
            key=lambda c: c["validation"]["value"],
        )
        rows = [
            {
                "corpus": corpus,
                "search": "progressive",
                "n_trials": results["num_trials"],
                "best_value": best["validation"]["value"],
                "hyperparameters": results["final"]["hyperparameters"],
                "wall_time_s": results["wall_time_s"],
                "metric": options.metric,
            }
        ]
        n_trials = _N_TRIALS.value or options.compare_trials or results["num_trials"]
        for sampler in options.compare:
            out = run_search(
                config, workdir, runner, sampler=sampler, n_trials=n_trials, storage=_STORAGE.value
            )
            rows.append(_row(corpus, sampler, out, options.metric))
        (workdir / "compare.json").write_text(json.dumps(rows, indent=2) + "\n")
        (workdir / "compare.md").write_text(comparison_markdown(rows, options.metric))
        print(comparison_markdown(rows, options.metric))
        return
    n_trials = _N_TRIALS.value or options.compare_trials
    if n_trials < 1:
        raise app.UsageError("--search=random/tpe needs --n_trials or tune.compare_trials")
    out = run_search(
        config, workdir, runner, sampler=_SEARCH.value, n_trials=n_trials, storage=_STORAGE.value
    )
    (workdir / f"search_{_SEARCH.value}.json").write_text(json.dumps(out, indent=2) + "\n")
    print(comparison_markdown([_row(corpus, _SEARCH.value, out, options.metric)], options.metric))


if __name__ == "__main__":
    app.run(main)
