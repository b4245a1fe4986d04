"""jaxnn/train/distributed.py: data parallel and FSDP meshes, several processes, checkpoints
across device counts, bad input. Multi-device runs are subprocesses with forced CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count=N); the reference is always a 1-device run
of the same global batches."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from .conftest import ROOT

# tiny config on the synthetic corpus (argv: tiny.py, corpus, out_dir, mode, [process args])
PRELUDE = textwrap.dedent(
    """
    import copy, importlib.util, json, sys
    from pathlib import Path
    import jax, numpy as np
    from jax.experimental import multihost_utils

    tiny, corpus, out, mode = sys.argv[1:5]
    out = Path(out)
    spec = importlib.util.spec_from_file_location("tiny", tiny)
    module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
    config = module.get_config()
    config.data.corpus = corpus
    config.data.max_len = 48
    config.data.smallest_bucket = 48
    config.data.min_freq = 1
    config.optim.learning_rate = 0.05
    config.optim.schedule = "constant"   # the same schedule whatever num_epochs (resume tests)
    config.optim.warmup_steps = 0
    config.train.batch_size = 16
    config.train.eval_batch_size = 64
    config.train.num_epochs = 2
    config.train.max_steps_per_epoch = 3

    def host(tree):  # the global value of every leaf, on every process
        return [np.asarray(multihost_utils.process_allgather(x, tiled=True))
                for x in jax.tree.leaves(tree)]

    def save(name, state):
        if jax.process_index() == 0:
            np.savez(out / f"{name}.npz", *host(state.params), step=int(state.step))
    """
)

SINGLE = textwrap.dedent(
    """
    from jaxnn.train.config import ConfigError
    from jaxnn.train.distributed import make_mesh, describe_mesh
    from jaxnn.train.loop import fit, load_data

    assert len(jax.devices()) == 4, jax.devices()
    data = load_data(config)
    one, four, fsdp2 = make_mesh(jax.devices()[:1]), make_mesh(), make_mesh(fsdp=2)
    print("MESH4", describe_mesh(four))
    print("MESH22", describe_mesh(fsdp2))
    save("one", fit(config, data, mesh=one).state)
    save("four", fit(config, data, mesh=four).state)
    r = fit(config, data, mesh=fsdp2)
    table = r.state.params["bigram_embed"]["embedding"]  # [4096, 16]
    print("TABLE", table.shape, tuple(table.sharding.spec),
          table.addressable_shards[0].data.shape)
    save("fsdp2", r.state)

    # checkpoints: 1 epoch on one layout, then the second epoch resumed on another
    first = copy.deepcopy(config); first.train.num_epochs = 1
    pairs = [("4to1", four, one)]
    if mode == "all":  # the slow test adds the other directions
        pairs += [("1to4", one, four), ("fsdp2to1", fsdp2, one)]
    for name, a, b in pairs:
        workdir = out / name
        fit(first, data, workdir, mesh=a)
        resumed = fit(config, data, workdir, mesh=b)
        print("RESUMED", name, len(resumed.history), int(resumed.state.step))
        save(name, resumed.state)

    # BatchNorm in a step sharded over 4 devices uses the global batch's statistics
    from jaxnn.nn import BatchNorm
    from jaxnn.train.distributed import batch_sharding, replicated
    bn = BatchNorm()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 5, 3)).astype(np.float32) * np.arange(1, 9)[:, None, None]
    m = rng.random((8, 5)) < 0.7
    v = bn.init(jax.random.key(0), x, train=True)
    apply = lambda v, x, m: bn.apply(v, x, mask=m, train=True, mutable=["batch_stats"])
    y1, s1 = jax.jit(apply)(v, x, m)
    y4, s4 = jax.jit(apply, in_shardings=(replicated(four), batch_sharding(four),
                                          batch_sharding(four)))(v, x, m)
    mean = (x * m[..., None]).sum((0, 1)) / m.sum()
    np.testing.assert_allclose(s4["batch_stats"]["mean"], 0.1 * mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s4["batch_stats"]["var"], s1["batch_stats"]["var"], rtol=1e-5)
    np.testing.assert_allclose(y4, y1, rtol=1e-5, atol=1e-5)
    print("BATCHNORM global", len(y4.sharding.device_set))

    for key, value in [("train.batch_size", 18), ("mesh.fsdp", 3)]:
        bad = copy.deepcopy(config)
        section, field = key.split(".")
        bad[section][field] = value
        try:
            fit(bad, data)
        except ConfigError as err:
            print("REFUSED", err)
    """
)

PROCESS = textwrap.dedent(
    """
    from jaxnn.train.distributed import initialize_distributed
    from jaxnn.train.loop import train_and_evaluate

    address, count, pid = sys.argv[5], int(sys.argv[6]), int(sys.argv[7])
    if count > 1:
        initialize_distributed(address, count, pid, timeout_s=60)
    assert len(jax.devices()) == 4 and len(jax.local_devices()) == 4 // count
    config.mesh.fsdp = 2
    results = train_and_evaluate(config, out / "run")
    print("PROCESS", jax.process_index(), results["devices"])
    if jax.process_index() == 0:
        (out / "results.json").write_text(json.dumps(
            {k: results.get(k) for k in ("test", "val", "devices", "tokenized_per_process")}))
    """
)


# "two processes equal one" at a size CI affords: 2 processes x 1 device, 2 steps, no workdir
FAST_PROCESS = textwrap.dedent(
    """
    from jaxnn.train.distributed import initialize_distributed, make_mesh
    from jaxnn.train.loop import fit, load_data

    address, count, pid = sys.argv[5], int(sys.argv[6]), int(sys.argv[7])
    for key, value in json.loads(sys.argv[8]).items():
        section, name = key.split(".")
        config[section][name] = value
    initialize_distributed(address, count, pid, timeout_s=60)
    assert jax.process_count() == 2 and len(jax.devices()) == 2, jax.devices()
    data = load_data(config)
    result = fit(config, data, mesh=make_mesh())
    save("multi", result.state)
    if jax.process_index() == 0:
        (out / "multi.json").write_text(json.dumps(
            {"best": result.best, "history": result.history,
             "tokenized": [data.train.num_tokenized, len(data.train)]}))
    """
)
FAST_OVERRIDES = {"train.num_epochs": 1, "train.max_steps_per_epoch": 2}


def _run(script: str, args: list[str], devices: int, data_dir: Path | None = None):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    if data_dir is not None:
        env["JAXNN_DATA_DIR"] = str(data_dir)
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.Popen(
        [sys.executable, "-c", PRELUDE + script, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-4000:]
    return out


def _params(path: Path) -> list[np.ndarray]:
    with np.load(path) as f:
        return [f[k] for k in sorted(f.files, key=lambda k: (k != "step", k)) if k != "step"]


def _assert_same(a: Path, b: Path) -> None:
    """Every parameter leaf within 1e-5 relative error, ||x - y|| / ||y|| (Frobenius norm).

    Not elementwise: Adam divides each gradient entry by its own magnitude, so an entry whose
    gradient is near eps (1e-8) amplifies the reordering of a cross-device sum; seen here on 2
    of 65536 bigram entries (2e-6 absolute) while the leaf agrees to ~1e-7.
    """
    pa, pb = _params(a), _params(b)
    assert len(pa) == len(pb)
    for x, y in zip(pa, pb, strict=True):
        assert x.shape == y.shape
        error = np.linalg.norm(x - y) / max(np.linalg.norm(y), 1e-30)
        assert error <= 1e-5, (x.shape, error)
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)


def _args(tmp_path: Path, corpus: Path, mode: str) -> list[str]:
    return [str(ROOT / "configs" / "tiny.py"), str(corpus), str(tmp_path), mode]


@pytest.mark.parametrize("mode", ["fast", pytest.param("all", marks=pytest.mark.slow)])
def test_four_devices_fsdp_and_checkpoints_across_layouts_match_one_device(
    synthetic_corpus, tmp_path, mode
):
    """4 devices, and 2 x 2 with fsdp = 2, end 6 steps with the parameters of 1 device; a
    checkpoint of epoch 1 written on 4 devices resumes on 1 (all: also 1 -> 4, fsdp 2 -> 1) and
    ends where the uninterrupted 1-device run ends; bad batch / fsdp sizes are refused."""
    out = _finish(_run(SINGLE, _args(tmp_path, synthetic_corpus, mode), devices=4))
    assert "MESH4 4 devices (cpu): cpu:0, cpu:1, cpu:2, cpu:3; mesh data=4" in out
    assert "MESH22 4 devices (cpu)" in out and "mesh data=2 x fsdp=2" in out
    # the bigram table [4096, 16] is split in two along its rows: each device holds half
    assert "TABLE (4096, 16) ('fsdp', None) (2048, 16)" in out
    _assert_same(tmp_path / "four.npz", tmp_path / "one.npz")
    _assert_same(tmp_path / "fsdp2.npz", tmp_path / "one.npz")
    for name in ("4to1", "1to4", "fsdp2to1") if mode == "all" else ("4to1",):
        assert f"RESUMED {name} 2 6" in out  # two epochs of 3 steps, the second after restore
        _assert_same(tmp_path / f"{name}.npz", tmp_path / "one.npz")
    assert "BATCHNORM global 4" in out
    assert "REFUSED train.batch_size=18 must be divisible by the number of devices (4" in out
    assert (
        "REFUSED config.mesh.fsdp=3 is not allowed; it must divide the number of devices (4" in out
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_of_two_devices_equal_one_process_of_four(synthetic_corpus, tmp_path):
    """jax.distributed on 127.0.0.1: 2 processes x 2 devices, fsdp=2, the whole run
    (train_and_evaluate: shared workdir, orbax checkpoints, best on test) == 1 process x 4,
    each process tokenizing only its half of the texts plus its rows of each global batch."""
    address = f"127.0.0.1:{_free_port()}"
    multi, single = tmp_path / "multi", tmp_path / "single"
    multi.mkdir()
    single.mkdir()
    cold = tmp_path / "data"  # an empty cache: the processes make the plan themselves
    procs = [
        _run(PROCESS, [*_args(multi, synthetic_corpus, "p"), address, "2", str(i)], 2, cold)
        for i in range(2)
    ]
    outs = [_finish(p) for p in procs]
    _finish(_run(PROCESS, [*_args(single, synthetic_corpus, "p"), "", "1", "0"], devices=4))
    assert "PROCESS 0 4 devices (cpu) in 2 processes" in outs[0]
    assert "PROCESS 1 4 devices (cpu) in 2 processes" in outs[1]
    a = json.loads((multi / "results.json").read_text())
    b = json.loads((single / "results.json").read_text())
    assert a["test"]["confusion_matrix"] == b["test"]["confusion_matrix"]
    np.testing.assert_allclose(a["test"]["loss"], b["test"]["loss"], rtol=1e-5)
    np.testing.assert_allclose(a["val"]["loss"], b["val"]["loss"], rtol=1e-5)
    # texts tokenized per process: its share (every other text), then only the rows it fed: 8 of
    # each training batch of 16 (2 epochs x 3 steps), rows 32p..32p+31 of each evaluation batch
    # of 64 (the last one padded)
    from jaxnn.data.corpora import load_corpus, load_test_split

    corpus = load_corpus(synthetic_corpus)
    sizes = {
        "train": len(corpus.train),
        "validation": len(corpus.validation),
        "test": len(load_test_split(synthetic_corpus)),
    }

    def fed(name: str, p: int) -> int:
        if name == "train":
            return 2 * 3 * 8
        n = sizes[name]
        return sum(len(range(k + 32 * p, min(k + 32 * p + 32, n))) for k in range(0, n, 64))

    assert b["tokenized_per_process"] is None  # one process encodes everything, as before
    assert [t["process"] for t in a["tokenized_per_process"]] == [0, 1]
    for t in a["tokenized_per_process"]:
        p = t["process"]
        for name, n in sizes.items():
            share = len(range(p, n, 2))
            assert share <= t[name] <= min(share + fed(name, p), n), (name, t, sizes)
        assert t["train"] < 0.7 * sizes["train"], (t, sizes)  # never the whole training split
    # process 0 alone wrote the logs; both wrote their checkpoint shards into the same workdir
    run = multi / "run"
    assert (run / "results.json").is_file() and (run / "learning_curves.png").is_file()
    from jaxnn.train.logs import epoch_records, read_jsonl

    assert len(epoch_records(read_jsonl(run / "metrics.jsonl"))) == 2


def test_two_processes_equal_one_fast(synthetic_corpus, tmp_path, compilation_cache):
    """The CI-sized version of the slow test above: jax.distributed on 127.0.0.1, 2 processes
    of 1 CPU device each, tiny config, 2 steps, no workdir. The parameters and the validation
    metrics equal those of this (one) process training on the same global batches, and each
    process tokenized only part of the training texts."""
    import jax

    from jaxnn.train.distributed import make_mesh
    from jaxnn.train.loop import fit, load_data

    from .conftest import load_config_file

    address = f"127.0.0.1:{_free_port()}"
    overrides = json.dumps(FAST_OVERRIDES)
    procs = [
        _run(
            FAST_PROCESS,
            [*_args(tmp_path, synthetic_corpus, "p"), address, "2", str(i), overrides],
            devices=1,
            data_dir=tmp_path / f"data{i}",  # a cold cache each: the plan pass runs
        )
        for i in range(2)
    ]
    # the one-process reference, here, while the two run (the same edits as PRELUDE's)
    config = load_config_file("tiny")
    config.data.corpus = str(synthetic_corpus)
    config.data.max_len = config.data.smallest_bucket = 48
    config.data.min_freq = 1
    config.optim.learning_rate = 0.05
    config.optim.schedule = "constant"
    config.optim.warmup_steps = 0
    config.train.batch_size, config.train.eval_batch_size = 16, 64
    config.train.max_steps_per_epoch = 3
    for key, value in FAST_OVERRIDES.items():
        section, name = key.split(".")
        config[section][name] = value
    one = fit(config, load_data(config), mesh=make_mesh(jax.devices()[:1]))
    np.savez(
        tmp_path / "one.npz",
        *[np.asarray(x) for x in jax.tree.leaves(one.state.params)],
        step=int(one.state.step),
    )
    outs = [_finish(p, timeout=300) for p in procs]
    assert all("Traceback" not in out for out in outs)
    multi = json.loads((tmp_path / "multi.json").read_text())
    with np.load(tmp_path / "multi.npz") as f:
        assert int(f["step"]) == int(one.state.step) == 2
    _assert_same(tmp_path / "multi.npz", tmp_path / "one.npz")
    assert multi["best"]["confusion_matrix"] == one.best["confusion_matrix"]
    for key in ("loss", "accuracy", "macro_f1"):
        np.testing.assert_allclose(multi["best"][key], one.best[key], rtol=1e-5, atol=1e-7)
    tokenized, total = multi["tokenized"]
    assert tokenized < total  # process 0 never tokenized the whole training split


def test_unreachable_coordinator_fails_fast_naming_the_address():
    from jaxnn.train.distributed import DistributedInitError, initialize_distributed

    address = f"127.0.0.1:{_free_port()}"  # nothing listens there
    start = time.monotonic()
    with pytest.raises(DistributedInitError, match=rf"coordinator_address='{address}'.*within"):
        initialize_distributed(address, 2, 1, timeout_s=1)
    assert time.monotonic() - start < 10


def test_coordinator_whose_processes_never_come_fails_naming_them():
    # jax.distributed.initialize on process 0 would end the process with a C++ fatal error
    from jaxnn.train.distributed import DistributedInitError, initialize_distributed

    address = f"127.0.0.1:{_free_port()}"
    start = time.monotonic()
    with pytest.raises(DistributedInitError, match=r"num_processes=3.*id\(s\) \[1, 2\] never"):
        initialize_distributed(address, 3, 0, timeout_s=1)
    assert time.monotonic() - start < 10


def test_processes_check_in_with_the_coordinator_before_jax_starts():
    """The check-in protocol alone (threads, no JAX): all three processes go on together, and
    the port is free again afterwards for JAX's coordination service; with one process
    missing, both the coordinator and the process that came fail, naming what is missing."""
    import threading

    from jaxnn.train.distributed import (
        DistributedInitError,
        _gather_processes,
        _join_coordinator,
    )

    def run_all(address, ids, num_processes, timeout_s):
        errors: dict[int, BaseException | None] = {}

        def one(pid):
            try:
                if pid == 0:
                    _gather_processes(address, num_processes, timeout_s, "run-a")
                else:
                    _join_coordinator(address, pid, timeout_s, "run-a")
                errors[pid] = None
            except BaseException as err:  # reported by the assertions below
                errors[pid] = err

        threads = [threading.Thread(target=one, args=(pid,)) for pid in ids]
        for t in reversed(threads):  # the others may start before the coordinator
            t.start()
        for t in threads:
            t.join(30)
        return errors

    port = _free_port()
    address = f"127.0.0.1:{port}"
    assert run_all(address, [0, 1, 2], 3, 20) == {0: None, 1: None, 2: None}
    with socket.create_server(("127.0.0.1", port)):  # free again
        pass

    address = f"127.0.0.1:{_free_port()}"
    errors = run_all(address, [0, 1], 3, 2)
    assert isinstance(errors[0], DistributedInitError) and "[2] never joined" in str(errors[0])
    assert isinstance(errors[1], DistributedInitError)
    assert "not every process joined" in str(errors[1]) or "could not be reached" in str(errors[1])


def _check_in(jobs, timeout_s=30):
    """Run the check-in of each (kind, address, argument, token, num_processes) on a thread:
    kind "gather" (process 0) or "join" (argument: process id). Returns {index: error or None}
    and the seconds each took."""
    import threading

    from jaxnn.train.distributed import _gather_processes, _join_coordinator

    results: dict[int, BaseException | None] = {}
    took: dict[int, float] = {}

    def one(i, kind, address, argument, token, num_processes, limit):
        start = time.monotonic()
        try:
            if kind == "gather":
                _gather_processes(address, num_processes, limit, token)
            else:
                _join_coordinator(address, argument, limit, token)
            results[i] = None
        except BaseException as err:  # reported by the assertions of the caller
            results[i] = err
        took[i] = time.monotonic() - start

    threads = [
        threading.Thread(target=one, args=(i, *job), daemon=True) for i, job in enumerate(jobs)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout_s)
    return results, took


def _stray(port: int, payload: bytes | None) -> socket.socket:
    """A client that connects (polling until process 0 listens) and sends ``payload``
    (None: nothing at all), then keeps the connection open."""
    deadline = time.monotonic() + 10
    while True:
        try:
            conn = socket.create_connection(("127.0.0.1", port), timeout=2)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    if payload is not None:
        conn.sendall(payload)
    return conn


def test_stray_clients_are_ignored_and_logged_not_fatal(caplog):
    """A client sending the old ``jaxnn-join 1`` (no token), one with another run's token, and
    junk, all before the real process 1: the run still joins, and each is logged."""
    import logging
    import threading

    from jaxnn.train.distributed import _gather_processes, _join_coordinator

    port = _free_port()
    address = f"127.0.0.1:{port}"
    errors = {}

    def coordinator():
        try:
            _gather_processes(address, 2, 20, "run-a")
            errors[0] = None
        except BaseException as err:
            errors[0] = err

    with caplog.at_level(logging.WARNING, logger="jaxnn.train"):
        thread = threading.Thread(target=coordinator, daemon=True)
        thread.start()
        strays = [
            _stray(port, b"jaxnn-join 1\n"),
            _stray(port, b"jaxnn-join run-b 1\n"),
            _stray(port, b"GET / HTTP/1.0\r\n\r\n"),
        ]
        assert strays[1].recv(64) == b"other-run\n"  # the other run's process is told
        for conn in strays:  # each was answered and closed by process 0, not kept
            conn.settimeout(10)
            assert conn.recv(64) == b""
            conn.close()
        _join_coordinator(address, 1, 20, "run-a")
        thread.join(20)
    assert errors == {0: None}
    text = caplog.text
    assert "sent b'jaxnn-join 1\\n', not a jaxnn-join <run token> <id> line" in text
    assert "process id 1 of another run (run token run-b, this run's is run-a)" in text
    assert "sent b'GET / HTTP/1.0" in text


def test_a_silent_client_stalls_nothing(monkeypatch):
    """Two clients that connect and send nothing, first: the real processes still join at once
    (each connection is read on its own thread; the silent ones only until their timeout)."""
    monkeypatch.setattr("jaxnn.train.distributed._READ_TIMEOUT_S", 60.0)
    port = _free_port()
    address = f"127.0.0.1:{port}"
    import threading

    silent: list[socket.socket] = []
    connector = threading.Thread(
        target=lambda: silent.extend(_stray(port, None) for _ in range(2)), daemon=True
    )
    connector.start()
    jobs = [("gather", address, None, "run-a", 3, 40)]

    def later():
        connector.join(10)  # the silent clients are in first
        return _check_in(
            [("join", address, 1, "run-a", 3, 40), ("join", address, 2, "run-a", 3, 40)]
        )

    result: dict = {}
    t = threading.Thread(target=lambda: result.update(joined=later()), daemon=True)
    t.start()
    (errors, took) = _check_in(jobs, timeout_s=45)
    t.join(45)
    assert len(silent) == 2
    for conn in silent:  # process 0 closed them when the check-in ended
        conn.settimeout(10)
        assert conn.recv(16) == b""
        conn.close()
    assert errors == {0: None}
    assert result["joined"][0] == {0: None, 1: None}
    # one at a time, the first silent client would hold the accept loop for its whole 60 s
    assert took[0] < 30, took


def test_two_jobs_sharing_a_port_never_join_each_other():
    """Job A's coordinator listens; job B's processes 1 and 2 (another run token) reach it
    first. A joins only its own processes; B's processes are refused and fail naming the
    other run, never receiving A's go."""
    port = _free_port()
    address = f"127.0.0.1:{port}"
    jobs = [
        ("join", address, 1, "run-b", 3, 4),
        ("join", address, 2, "run-b", 3, 4),
        ("gather", address, None, "run-a", 3, 20),
        ("join", address, 1, "run-a", 3, 20),
        ("join", address, 2, "run-a", 3, 20),
    ]
    errors, _ = _check_in(jobs, timeout_s=40)
    from jaxnn.train.distributed import DistributedInitError

    assert errors[2] is None and errors[3] is None and errors[4] is None, errors
    for i in (0, 1):
        assert isinstance(errors[i], DistributedInitError), errors[i]
        message = str(errors[i])
        assert "belongs to another run" in message or "could not be reached" in message


def test_job_with_only_other_runs_processes_times_out_naming_the_token():
    port = _free_port()
    address = f"127.0.0.1:{port}"
    errors, _ = _check_in(
        [("gather", address, None, "run-a", 2, 3), ("join", address, 1, "run-b", 2, 3)],
        timeout_s=20,
    )
    from jaxnn.train.distributed import DistributedInitError

    assert isinstance(errors[0], DistributedInitError)
    assert re.search(
        r"\[1\] never joined \(\d+ check-in\(s\) with another run token", str(errors[0])
    )
    assert isinstance(errors[1], DistributedInitError)
    assert "belongs to another run (it refused this run's token run-b)" in str(errors[1])


def test_the_same_process_id_twice_in_one_run_is_an_error():
    port = _free_port()
    address = f"127.0.0.1:{port}"
    errors, _ = _check_in(
        [
            ("gather", address, None, "run-a", 3, 3),
            ("join", address, 1, "run-a", 3, 3),
            ("join", address, 1, "run-a", 3, 3),
        ],
        timeout_s=20,
    )
    assert "two processes of this run have process_id=1" in str(errors[0])


def test_run_token_is_shared_by_a_run_and_differs_between_runs(monkeypatch):
    from jaxnn.train.config import ConfigError
    from jaxnn.train.distributed import derive_run_token, initialize_distributed

    from .conftest import load_config_file

    config = load_config_file("tiny")
    same = load_config_file("tiny")
    token = derive_run_token(config, 2, "h:1")
    assert token == derive_run_token(same, 2, "h:1") and len(token) == 16
    other = load_config_file("tiny")
    other.optim.learning_rate = config.optim.learning_rate * 2
    assert derive_run_token(other, 2, "h:1") != token
    assert derive_run_token(config, 3, "h:1") != token
    assert derive_run_token(config, 2, "h:2") != token
    # explicit > $JAXNN_RUN_TOKEN > derived: seen in the token process 1 sends
    seen = []

    def join(address, pid, timeout_s, token):  # stands in for the check-in: records the token
        seen.append(token)
        raise RuntimeError("stop")

    monkeypatch.setattr("jaxnn.train.distributed._join_coordinator", join)
    monkeypatch.setenv("JAXNN_RUN_TOKEN", "from-env")
    for kwargs, expected in [
        ({"run_token": "given"}, "given"),
        ({}, "from-env"),
    ]:
        with pytest.raises(RuntimeError, match="stop"):
            initialize_distributed("h:1", 2, 1, **kwargs)
        assert seen[-1] == expected
    monkeypatch.delenv("JAXNN_RUN_TOKEN")
    with pytest.raises(RuntimeError, match="stop"):
        initialize_distributed("h:1", 2, 1, config=config)
    assert seen[-1] == token
    with pytest.raises(ConfigError, match="run_token='a b' is not allowed"):
        initialize_distributed("h:1", 2, 1, run_token="a b")
    monkeypatch.setenv("JAXNN_RUN_TOKEN", "x" * 200)
    with pytest.raises(ConfigError, match="JAXNN_RUN_TOKEN='x"):
        initialize_distributed("h:1", 2, 1)


def test_train_py_reports_an_unreachable_coordinator(tmp_path):
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    start = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            "--config=configs/tiny.py",
            f"--workdir={tmp_path / 'run'}",
            f"--coordinator_address=127.0.0.1:{port}",
            "--num_processes=2",
            "--process_id=1",
            "--initialization_timeout=2",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"coordinator_address='127.0.0.1:{port}' could not be reached" in result.stderr
    assert "initialization_timeout=2 s" in result.stderr
    assert time.monotonic() - start < 60
    assert not (tmp_path / "run").exists()  # nothing written


def test_distributed_is_off_without_a_cluster_or_arguments(monkeypatch):
    from jaxnn.train.config import ConfigError
    from jaxnn.train.distributed import initialize_distributed

    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("jaxnn.train.distributed._cluster_detected", lambda: False)
    assert initialize_distributed() is False
    assert initialize_distributed(mode="off") is False
    with pytest.raises(ConfigError, match="process_id=2 is not allowed"):
        initialize_distributed("127.0.0.1:1234", 2, 2)
    with pytest.raises(ConfigError, match="distributed='maybe'"):
        initialize_distributed(mode="maybe")


@pytest.mark.parametrize(
    ("shape", "fsdp", "expected"),
    [
        ((1000, 64), 4, P("fsdp", None)),  # largest axis
        ((64, 1000), 4, P(None, "fsdp")),
        ((1002, 64), 4, P(None, "fsdp")),  # the largest axis does not divide: the next one
        ((1001, 63), 4, P()),  # nothing divides: replicated
        ((10,), 2, P()),  # small: replicated
        ((4096,), 1, P()),  # fsdp = 1: everything replicated
        ((), 2, P()),
    ],
)
def test_leaf_spec_splits_the_largest_divisible_axis(shape, fsdp, expected):
    from jaxnn.train.distributed import leaf_spec

    assert leaf_spec(shape, fsdp) == expected


def test_mesh_errors_name_the_value():
    import jax

    from jaxnn.train.config import ConfigError
    from jaxnn.train.distributed import check_divisible, make_mesh

    with pytest.raises(ConfigError, match=r"config\.mesh\.fsdp=0 is not allowed"):
        make_mesh(fsdp=0)
    with pytest.raises(ConfigError, match=r"config\.mesh\.fsdp=2 .* must divide the number of"):
        make_mesh(jax.devices()[:1], fsdp=2)
    check_divisible("train.batch_size", 3, make_mesh())  # one device takes any batch
