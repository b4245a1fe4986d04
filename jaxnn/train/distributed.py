"""Devices and processes: one `jax.sharding.Mesh` over every device, data parallel (+ FSDP).

The mesh has a "data" axis (data parallelism) and, with ``mesh.fsdp = F > 1``, a second "fsdp"
axis: M devices form an (M / F) x F grid. The global batch (``train.batch_size`` = B) is split
over *all* M devices (B / M rows each, along ("data", "fsdp")). Parameters and optimizer state
are replicated when F = 1; with F > 1 each leaf is split along its largest axis that F divides
(ZeRO-3 / FSDP style: a device keeps 1/F of every large leaf), and small or indivisible leaves
stay replicated (`state_sharding`). The jitted steps name these shardings explicitly, so XLA
inserts the gradient all-reduce (and the FSDP all-gathers / reduce-scatters) itself: no pmap,
and the same numbers as one device up to the order of floating-point sums. BatchNorm and every
batch sum in the step are sums over the global batch (the sharded batch axis is reduced across
devices by XLA). On one CPU this is a 1-device mesh and costs nothing.

Several processes (hosts): `initialize_distributed` joins them with
``jax.distributed.initialize`` (explicit coordinator / process count / process id, or JAX's own
cluster auto-detection: SLURM, Open MPI, Cloud TPU pods, Kubernetes). Then ``jax.devices()``
lists every process's devices, the mesh spans them all, and each process feeds only the rows
of each global batch that live on its own devices (`local_rows`, `shard_batch`). The data side
learns its place from `process_group` (``jax.process_index()``, ``jax.process_count()`` and
`allgather_bytes`), so that each process tokenizes only its share (`jaxnn.data.sharded`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import queue
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxnn.data.sharded import ProcessGroup
from jaxnn.train.config import ConfigError

__all__ = [
    "DATA_AXIS",
    "FSDP_AXIS",
    "RUN_TOKEN_ENV",
    "DistributedInitError",
    "allgather_bytes",
    "batch_sharding",
    "check_divisible",
    "derive_run_token",
    "describe_mesh",
    "in_process_cpu_collectives",
    "initialize_distributed",
    "leaf_spec",
    "local_rows",
    "make_mesh",
    "process_group",
    "replicated",
    "shard_batch",
    "state_sharding",
    "under_mesh",
    "waits_for_each_call",
]

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
# leaves with fewer elements than this stay replicated under FSDP (biases, norms, counters)
FSDP_MIN_SIZE = 1024

log = logging.getLogger("jaxnn.train")


class DistributedInitError(RuntimeError):
    """``jax.distributed.initialize`` could not join the processes (coordinator unreachable)."""


# ----------------------------------------------------------------------------------------------
# The mesh
# ----------------------------------------------------------------------------------------------


def make_mesh(devices: Sequence[jax.Device] | None = None, *, fsdp: int = 1) -> Mesh:
    """The device mesh: axis "data" over ``devices`` (default: every device of every process);
    with ``fsdp`` = F > 1 a 2-D mesh ("data", "fsdp") of shape (M / F, F).

    Devices are laid out in ``jax.devices()`` order (grouped by process), so an FSDP group of F
    consecutive devices stays within one host whenever F divides the devices per host.

    Raises:
      ConfigError: naming ``mesh.fsdp`` when it is < 1 or does not divide the device count.
    """
    devices = list(jax.devices() if devices is None else devices)
    if isinstance(fsdp, bool) or not isinstance(fsdp, int) or fsdp < 1:
        raise ConfigError(f"config.mesh.fsdp={fsdp!r} is not allowed; allowed: an int >= 1")
    if len(devices) % fsdp:
        raise ConfigError(
            f"config.mesh.fsdp={fsdp} is not allowed; it must divide the number of devices "
            f"({len(devices)}: {_device_names(devices)})"
        )
    if fsdp == 1:
        return Mesh(np.asarray(devices), (DATA_AXIS,))
    grid = np.asarray(devices, dtype=object).reshape(len(devices) // fsdp, fsdp)
    return Mesh(grid, (DATA_AXIS, FSDP_AXIS))


def check_divisible(name: str, batch_size: int, mesh: Mesh) -> None:
    """Raise `ConfigError` naming ``name`` when the global batch does not split over the devices."""
    count = mesh.size
    if batch_size % count:
        raise ConfigError(
            f"{name}={batch_size} must be divisible by the number of devices ({count}: "
            f"{describe_mesh(mesh)}); it is the global batch, split evenly over the devices"
        )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over every mesh axis ("data", and "fsdp" if present)."""
    return NamedSharding(mesh, PartitionSpec(tuple(mesh.axis_names)))


def replicated(mesh: Mesh) -> NamedSharding:
    """The same full copy on every device."""
    return NamedSharding(mesh, PartitionSpec())


def leaf_spec(shape: Sequence[int], fsdp: int, min_size: int = FSDP_MIN_SIZE) -> PartitionSpec:
    """The FSDP partition of one leaf of shape ``shape``: split its largest axis that ``fsdp``
    divides (the first such on ties) along "fsdp"; replicated (``PartitionSpec()``) when
    fsdp = 1, the leaf has < ``min_size`` elements, or no axis is divisible.

    >>> leaf_spec((1000, 64), 4)        # PartitionSpec('fsdp', None)
    >>> leaf_spec((64, 1000), 4)        # PartitionSpec(None, 'fsdp')
    >>> leaf_spec((10,), 4)             # PartitionSpec()
    """
    shape = tuple(int(d) for d in shape)
    if fsdp == 1 or math.prod(shape) < min_size:
        return PartitionSpec()
    divisible = [i for i, d in enumerate(shape) if d % fsdp == 0]
    if not divisible:
        return PartitionSpec()
    axis = max(divisible, key=lambda i: (shape[i], -i))
    spec: list[str | None] = [None] * len(shape)
    spec[axis] = FSDP_AXIS
    return PartitionSpec(*spec)


def state_sharding(tree: Any, mesh: Mesh, min_size: int = FSDP_MIN_SIZE) -> Any:
    """A pytree of `NamedSharding`s like ``tree`` (arrays or ShapeDtypeStructs): every leaf
    replicated on a 1-D mesh; on a ("data", "fsdp") mesh each leaf split by `leaf_spec`."""
    fsdp = mesh.shape.get(FSDP_AXIS, 1)
    return jax.tree.map(lambda x: NamedSharding(mesh, leaf_spec(x.shape, fsdp, min_size)), tree)


# ----------------------------------------------------------------------------------------------
# Batches: each process feeds its own rows
# ----------------------------------------------------------------------------------------------


def local_rows(batch_size: int, mesh: Mesh) -> slice:
    """The rows of a global batch of ``batch_size`` that live on this process's devices.

    One process: ``slice(0, batch_size)``. P processes with the usual device order: process p
    holds the contiguous rows [p B / P, (p + 1) B / P).
    """
    indices = batch_sharding(mesh).addressable_devices_indices_map((batch_size,))
    starts = sorted(
        {
            (s[0].start or 0, batch_size if s[0].stop is None else s[0].stop)
            for s in indices.values()
        }
    )
    lo, hi = starts[0][0], starts[-1][1]
    covered = sum(stop - start for start, stop in starts)
    if covered != hi - lo:
        raise ValueError(
            f"this process's devices hold non-contiguous rows of the batch ({starts}); build the "
            "mesh from jax.devices() in its order"
        )
    return slice(lo, hi)


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Host batch (NumPy: this process's rows, `local_rows`; all of them with one process) ->
    global jax.Arrays whose batch axis is sharded over the whole mesh."""
    sharding = batch_sharding(mesh)
    return {
        key: jax.make_array_from_process_local_data(sharding, np.asarray(value))
        for key, value in batch.items()
        if key != "index"
    }


def allgather_bytes(payload: bytes) -> list[bytes]:
    """Every process's ``payload``, process 0's first; ``[payload]`` with one process.

    Two `multihost_utils.process_allgather` calls (a collective: every process calls it, in the
    same order): the P sizes, then the payloads as uint8 [P, S] padded to the longest, S >= 1.
    """
    count = jax.process_count()
    if count == 1:
        return [payload]
    from jax.experimental import multihost_utils

    size = np.asarray([len(payload)], dtype=np.int32)
    sizes = np.asarray(multihost_utils.process_allgather(size)).reshape(count)
    data = np.zeros(max(int(sizes.max()), 1), dtype=np.uint8)
    data[: len(payload)] = np.frombuffer(payload, dtype=np.uint8)
    gathered = np.asarray(multihost_utils.process_allgather(data)).reshape(count, data.size)
    return [gathered[p, : int(sizes[p])].tobytes() for p in range(count)]


def process_group() -> ProcessGroup:
    """This process's `jaxnn.data.ProcessGroup`: (``jax.process_index()``,
    ``jax.process_count()``, `allgather_bytes`); count 1 without ``jax.distributed``."""
    return ProcessGroup(jax.process_index(), jax.process_count(), allgather_bytes)


def _device_names(devices: Sequence[jax.Device]) -> str:
    names = ", ".join(str(d) for d in devices[:8]) + (", ..." if len(devices) > 8 else "")
    return names


def describe_mesh(mesh: Mesh) -> str:
    """e.g. "1 device (cpu): TFRT_CPU_0; mesh data=1" or
    "8 devices (gpu) in 2 processes: cuda:0, ...; mesh data=4 x fsdp=2"."""
    devices = list(mesh.devices.flat)
    platforms = sorted({d.platform for d in devices})
    plural = "s" if len(devices) != 1 else ""
    processes = len({d.process_index for d in devices})
    where = f" in {processes} processes" if processes > 1 else ""
    shape = " x ".join(f"{name}={size}" for name, size in mesh.shape.items())
    return (
        f"{len(devices)} device{plural} ({'/'.join(platforms)}){where}: "
        f"{_device_names(devices)}; mesh {shape}"
    )


# ----------------------------------------------------------------------------------------------
# Several processes
# ----------------------------------------------------------------------------------------------


def _cluster_detected() -> bool:
    """Whether JAX's auto-detection recognises a cluster (SLURM, Open MPI, TPU pod, k8s)."""
    try:  # a private module: degrade to "no cluster" if it moves
        from jax._src import clusters

        return any(
            env.is_env_present()
            for env in clusters.ClusterEnv._cluster_types
            if not getattr(env, "opt_in_only_method", False)
        )
    except Exception:
        return False


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        raise DistributedInitError(
            f"coordinator_address={address!r} is not allowed; expected host:port"
        )
    return host, int(port)


_JOIN = b"jaxnn-join "
_GO = b"go\n"
_OTHER_RUN = b"other-run\n"
RUN_TOKEN_ENV = "JAXNN_RUN_TOKEN"
_TOKEN_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")
# how long one connection may take to send its join line; it holds only its own thread
_READ_TIMEOUT_S = 5.0
# connections being read at once; more are closed at once (a port scan, a flood)
_MAX_PENDING = 64
# ignored join lines logged one by one; the rest only counted
_MAX_LOGGED = 10


def derive_run_token(
    config: Mapping[str, Any] | None,
    num_processes: int,
    coordinator_address: str | None = None,
) -> str:
    """The run token the processes of one run share at check-in: 16 hex digits of the sha256
    of the run config (as sorted JSON), the process count and the coordinator address.

    Every process of a run computes the same token from the same config and command line;
    another job (another config or process count) that reaches the same coordinator port has
    another token, so neither joins the other. Give your own with ``run_token=`` or
    $JAXNN_RUN_TOKEN (`initialize_distributed`) when the processes' configs may differ (they
    then must not) or to tell two identical jobs apart.
    """
    if config is not None and hasattr(config, "to_dict"):
        config = config.to_dict()
    payload = json.dumps(
        {"config": config, "num_processes": int(num_processes), "address": coordinator_address},
        sort_keys=True,
        default=repr,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _check_token(token: object, where: str) -> str:
    if not isinstance(token, str) or not _TOKEN_RE.fullmatch(token):
        raise ConfigError(
            f"{where}={token!r} is not allowed; allowed: 1-128 characters of letters, digits, "
            "'.', '_' and '-'"
        )
    return token


def _join_line(token: str, process_id: int) -> bytes:
    return _JOIN + f"{token} {process_id}\n".encode()


def _parse_join(line: bytes) -> tuple[str, int] | None:
    """(token, process id) of a well-formed ``jaxnn-join <token> <id>`` line, else None."""
    if not line.startswith(_JOIN) or not line.endswith(b"\n"):
        return None
    parts = line[len(_JOIN) :].decode("ascii", "replace").split()
    if len(parts) != 2 or not _TOKEN_RE.fullmatch(parts[0]) or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1])


def _read_line(conn: socket.socket, deadline: float) -> bytes:
    """Bytes up to and including the first newline (or what came before EOF / the deadline)."""
    data = b""
    while not data.endswith(b"\n") and len(data) < 256:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        conn.settimeout(min(left, 2.0))
        try:
            chunk = conn.recv(256 - len(data))
        except TimeoutError:
            continue
        except OSError:
            break
        if not chunk:
            break
        data += chunk
    return data


def _is_closed(conn: socket.socket) -> bool:
    """Whether the peer of ``conn`` has gone (EOF or an error on a non-blocking peek)."""
    try:
        conn.setblocking(False)
        try:
            return conn.recv(1, socket.MSG_PEEK) == b""
        finally:
            conn.setblocking(True)
    except BlockingIOError:
        return False
    except OSError:
        return True


class _CheckIns:
    """Join lines read concurrently, one thread per connection (`_gather_processes`)."""

    def __init__(self, token: str, deadline: float) -> None:
        self.token = token
        self.deadline = deadline
        self.arrived: queue.Queue[tuple[int, socket.socket, str]] = queue.Queue()
        self.lock = threading.Lock()
        self.pending: set[socket.socket] = set()
        self.done = False
        self.ignored = 0
        self.other_runs = 0

    def serve(self, conn: socket.socket, peer: str) -> None:
        with self.lock:
            if self.done or len(self.pending) >= _MAX_PENDING:
                conn.close()
                return
            self.pending.add(conn)
        threading.Thread(
            target=self._read, args=(conn, peer), name=f"jaxnn-join {peer}", daemon=True
        ).start()

    def _ignore(self, conn: socket.socket, peer: str, why: str, answer: bytes = b"") -> None:
        with self.lock:
            self.ignored += 1
            logged = self.ignored <= _MAX_LOGGED
        if logged:
            log.warning("process 0: ignored a connection from %s: %s", peer, why)
        if answer:
            try:
                conn.sendall(answer)
            except OSError:
                pass
        conn.close()

    def _read(self, conn: socket.socket, peer: str) -> None:
        try:
            deadline = min(self.deadline, time.monotonic() + _READ_TIMEOUT_S)
            line = _read_line(conn, deadline)
            joined = _parse_join(line)
            if self.done:  # the check-in is over (or failed): nothing to log
                conn.close()
            elif joined is None:
                what = "sent nothing" if not line else f"sent {line[:60]!r}"
                self._ignore(conn, peer, f"{what}, not a jaxnn-join <run token> <id> line")
            elif joined[0] != self.token:
                with self.lock:
                    self.other_runs += 1
                self._ignore(
                    conn,
                    peer,
                    f"process id {joined[1]} of another run (run token {joined[0]}, this run's "
                    f"is {self.token})",
                    _OTHER_RUN,
                )
            else:
                with self.lock:  # never after close() has drained the queue
                    if self.done:
                        conn.close()
                    else:
                        self.arrived.put((joined[1], conn, peer))
        finally:
            with self.lock:
                self.pending.discard(conn)

    def close(self) -> None:
        """End the check-in: connections still being read are shut (their threads end at
        once), and any that arrived unclaimed are closed (their processes retry and time out)."""
        with self.lock:
            self.done = True
            pending = list(self.pending)
        for conn in pending:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        while True:  # a process that came after the end: it retries and times out itself
            try:
                _, conn, _ = self.arrived.get_nowait()
            except queue.Empty:
                return
            conn.close()


def _listen(address: str, num_processes: int) -> socket.socket:
    _, port = _host_port(address)
    try:
        if socket.has_dualstack_ipv6():  # peers may come over IPv4 or IPv6
            return socket.create_server(
                ("", port),
                family=socket.AF_INET6,
                dualstack_ipv6=True,
                backlog=max(16, num_processes),
            )
        return socket.create_server(("", port), backlog=max(16, num_processes))
    except OSError as err:
        raise DistributedInitError(
            f"process 0 cannot listen on the port of coordinator_address={address!r} ({err}); "
            "is another run using it?"
        ) from err


def _gather_processes(address: str, num_processes: int, timeout_s: float, token: str) -> None:
    """Process 0, before ``jax.distributed.initialize``: wait until processes 1..P-1 of this
    run have checked in on the coordinator's port (``_join_coordinator``), then tell them to go.

    A check-in is the line ``jaxnn-join <run token> <process id>``. Connections are read
    concurrently, each within `_READ_TIMEOUT_S` (a client that sends nothing holds only its own
    thread); a line that is not a check-in, or carries another run's token (`derive_run_token`), is
    logged and ignored, so a stray client or another job on the same port can neither abort
    this run nor join it. The same process id twice with this run's token (two processes
    started with one id) is an error, unless the first connection has closed (a retry).

    ``jax.distributed.initialize`` on process 0 aborts the whole process (a C++ fatal error, not
    a Python exception) when a process never registers, so the coordinator counts them first and
    raises `DistributedInitError` naming the ones that did not come. The port is free again
    before JAX's coordination service binds it.
    """
    deadline = time.monotonic() + timeout_s
    waiting: dict[int, socket.socket] = {}
    expected = set(range(1, num_processes))
    server = _listen(address, num_processes)
    check_ins = _CheckIns(token, deadline)
    try:
        while set(waiting) != expected:
            while True:  # every check-in read so far
                try:
                    pid, conn, peer = check_ins.arrived.get_nowait()
                except queue.Empty:
                    break
                if pid not in expected:
                    conn.close()
                    raise DistributedInitError(
                        f"process 0 (coordinator_address={address!r}, num_processes="
                        f"{num_processes}): a process of this run from {peer} has process_id="
                        f"{pid}, outside 1..num_processes-1"
                    )
                if pid in waiting and not _is_closed(waiting[pid]):
                    conn.close()
                    raise DistributedInitError(
                        f"process 0 (coordinator_address={address!r}, num_processes="
                        f"{num_processes}): two processes of this run have process_id={pid} "
                        f"(the second from {peer}); give each process its own --process_id"
                    )
                if pid in waiting:
                    waiting[pid].close()  # it closed and came again
                waiting[pid] = conn
            if set(waiting) == expected:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                missing = sorted(expected - set(waiting))
                others = (
                    f" ({check_ins.other_runs} check-in(s) with another run token were ignored: "
                    f"start every process with the same config and --num_processes, or the same "
                    f"${RUN_TOKEN_ENV})"
                    if check_ins.other_runs
                    else ""
                )
                raise DistributedInitError(
                    f"process 0 (coordinator_address={address!r}) waited "
                    f"initialization_timeout={timeout_s:g} s for num_processes={num_processes} "
                    f"processes; process id(s) {missing} never joined{others}. Start the same "
                    "command with --process_id=1..N-1 on the other hosts, or check --num_processes"
                )
            server.settimeout(min(left, 0.1))
            try:
                conn, peer_address = server.accept()
            except TimeoutError:
                continue
            check_ins.serve(conn, f"{peer_address[0]}:{peer_address[1]}")
        for conn in waiting.values():
            conn.sendall(_GO)
        for conn in waiting.values():  # let each peer close first (its side keeps TIME_WAIT)
            _read_line(conn, time.monotonic() + 2.0)
    finally:
        check_ins.close()
        for conn in waiting.values():
            conn.close()
        server.close()


def _connect(address: str, deadline: float, timeout_s: float) -> socket.socket:
    """A TCP connection to ``address`` (host:port), polled until it opens or the deadline."""
    host, port = _host_port(address)
    last: OSError | None = None
    while time.monotonic() < deadline:
        try:
            return socket.create_connection((host, port), timeout=min(2.0, timeout_s))
        except OSError as err:
            last = err
            time.sleep(0.25)
    raise DistributedInitError(
        f"the coordinator at coordinator_address={address!r} could not be reached within "
        f"initialization_timeout={timeout_s:g} s ({last}); start process 0 there first, or check "
        "the address, the port and the firewall"
    )


def _wait_for_coordinator(address: str, timeout_s: float) -> None:
    """Wait until the coordinator's port answers (used when the process ids are left to JAX's
    auto-detection, so no check-in is possible)."""
    _connect(address, time.monotonic() + timeout_s, timeout_s).close()


def _join_coordinator(address: str, process_id: int, timeout_s: float, token: str) -> None:
    """Processes 1..P-1: check in with process 0 (`_gather_processes`) and wait for its go.

    Connects to ``address`` (polling until it opens), sends ``jaxnn-join <token> <id>`` and
    waits until process 0 has seen every process, all within ``timeout_s``: a coordinator that
    cannot be reached, or whose other processes never come, or that belongs to another run
    (another token), is a `DistributedInitError` naming the address (``jax.distributed.
    initialize`` would abort the process instead).
    """
    deadline = time.monotonic() + timeout_s
    other_run = False
    while True:
        try:
            with _connect(address, deadline, timeout_s) as conn:
                try:
                    conn.sendall(_join_line(token, process_id))
                    answer = _read_line(conn, deadline)
                except OSError:  # process 0 dropped the connection: try again
                    answer = b""
        except DistributedInitError:
            if not other_run:
                raise
            answer = b""
        if answer == _GO:
            return
        other_run = other_run or answer == _OTHER_RUN
        if time.monotonic() >= deadline:
            if other_run:
                raise DistributedInitError(
                    f"process {process_id}: the coordinator at coordinator_address={address!r} "
                    f"belongs to another run (it refused this run's token {token}) and this "
                    f"run's process 0 did not answer within initialization_timeout={timeout_s:g} "
                    f"s; give each job its own coordinator port, and every process of a run the "
                    f"same config and --num_processes (or the same ${RUN_TOKEN_ENV})"
                )
            raise DistributedInitError(
                f"process {process_id} reached the coordinator at coordinator_address="
                f"{address!r}, but not every process joined within initialization_timeout="
                f"{timeout_s:g} s; check that all --num_processes processes were started"
            )
        time.sleep(1.0 if other_run else 0.25)


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    mode: str = "auto",
    timeout_s: int = 300,
    run_token: str | None = None,
    config: Mapping[str, Any] | None = None,
) -> bool:
    """Join this process to a multi-process JAX run; True when ``jax.distributed`` is now on.

    Every argument left None is read from the environment (JAX_COORDINATOR_ADDRESS,
    JAX_NUM_PROCESSES, JAX_PROCESS_ID), and what is still missing is left to JAX's cluster
    auto-detection. ``mode``:

      "auto": initialize when any of the three is given or a cluster is detected; else run as
              one process (a laptop, one GPU box: nothing to join).
      "on":   always initialize (auto-detection must then find what is not given).
      "off":  never (one process).

    With the address, the process count and the id all given, the processes first meet on the
    coordinator's port (process 0 counts the others in, `_gather_processes`; each other process
    checks in, `_join_coordinator`) and only then start ``jax.distributed``: a coordinator that
    cannot be reached within ``timeout_s`` seconds, or a process that never comes, is a
    `DistributedInitError` naming the address, the timeout and the missing process ids, never
    a hang nor JAX's abort of the whole process. Under auto-detection (ids left to JAX) a
    non-coordinator process only checks that the coordinator's port answers.

    The check-in carries a run token, so that a stray client or another job that shares the
    coordinator port can neither abort this run nor join it: ``run_token`` if given, else
    $JAXNN_RUN_TOKEN, else `derive_run_token` of ``config`` (the run config: pass it), the process
    count and the address. Keep the coordinator port inside the cluster's network: the token
    identifies a run, it is not a secret, and JAX's own coordination service on that port has
    no authentication either.
    """
    if mode not in ("auto", "on", "off"):
        raise ConfigError(f"distributed={mode!r} is not allowed; allowed: auto, on, off")
    if timeout_s < 1:
        raise ConfigError(f"initialization_timeout={timeout_s!r} is not allowed; allowed: >= 1")
    if mode == "off":
        return False
    env = os.environ
    coordinator_address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS") or None
    if num_processes is None and env.get("JAX_NUM_PROCESSES"):
        num_processes = int(env["JAX_NUM_PROCESSES"])
    if process_id is None and env.get("JAX_PROCESS_ID"):
        process_id = int(env["JAX_PROCESS_ID"])
    explicit = (coordinator_address, num_processes, process_id) != (None, None, None)
    if mode == "auto" and not explicit and not _cluster_detected():
        return False
    if num_processes is not None and num_processes < 1:
        raise ConfigError(f"num_processes={num_processes} is not allowed; allowed: >= 1")
    if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
        raise ConfigError(
            f"process_id={process_id} is not allowed; allowed: 0 <= process_id < "
            f"num_processes={num_processes}"
        )
    if coordinator_address and process_id is not None and num_processes not in (None, 1):
        if run_token is not None:
            token = _check_token(run_token, "run_token")
        elif env.get(RUN_TOKEN_ENV):
            token = _check_token(env[RUN_TOKEN_ENV], RUN_TOKEN_ENV)
        else:
            token = derive_run_token(config, num_processes, coordinator_address)
        log.info("process %d of %d: run token %s", process_id, num_processes, token)
        if process_id == 0:
            _gather_processes(coordinator_address, num_processes, timeout_s, token)
        else:
            _join_coordinator(coordinator_address, process_id, timeout_s, token)
    elif coordinator_address and process_id not in (None, 0):
        _wait_for_coordinator(coordinator_address, timeout_s)
    log.info(
        "jax.distributed.initialize(coordinator_address=%s, num_processes=%s, process_id=%s)",
        coordinator_address,
        num_processes,
        process_id,
    )
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        initialization_timeout=int(timeout_s),
    )
    log.info(
        "process %d of %d: %d local devices, %d in all",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True


def under_mesh(fn: Callable, mesh: Mesh) -> Callable:
    """``fn`` traced under ``mesh``'s abstract mesh (`jax.sharding.use_abstract_mesh`), so the
    ops that need it see the mesh: the blocked attention kernel runs under ``jax.shard_map``
    on each device's examples instead of gathering the whole batch onto every device."""

    @functools.wraps(fn)
    def traced(*args, **kwargs):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return fn(*args, **kwargs)

    return traced


def in_process_cpu_collectives(mesh: Mesh) -> bool:
    """Whether ``mesh``'s collectives are XLA:CPU's in-process ones: several CPU devices, all
    of this one process (forced host devices, `jaxnn.launch.cpu_devices`)."""
    devices = list(mesh.devices.flat)
    return (
        len(devices) > 1
        and all(d.platform == "cpu" for d in devices)
        and len({d.process_index for d in devices}) == 1
    )


class _WaitingStep:
    """A jitted step that returns only once its result is computed on every device; the jitted
    function's own attributes (``lower``, ``trace``, ...) pass through."""

    def __init__(self, fn: Callable):
        self._fn = fn
        functools.update_wrapper(self, fn)

    def __call__(self, *args, **kwargs):
        return jax.block_until_ready(self._fn(*args, **kwargs))

    def __getattr__(self, name: str):
        return getattr(self._fn, name)


def waits_for_each_call(fn: Callable, mesh: Mesh) -> Callable:
    """``fn`` itself, or, on a mesh of in-process CPU devices (`in_process_cpu_collectives`),
    ``fn`` waiting for its result before it returns.

    XLA:CPU runs every device's part of a program on one shared worker pool, and its
    in-process all-reduce can deadlock when one device runs ahead into the next program of a
    chain (a train step after a train step) while another still needs a worker: 3 of 6 chains
    of 50 dependent steps hung on 2 cores with 2 devices, none when each result was waited for
    (`benchmarks/cpu_collectives.py`). The wait costs a host round trip per step and the
    overlap of the next batch's host work with this step's compute."""
    return _WaitingStep(fn) if in_process_cpu_collectives(mesh) else fn
