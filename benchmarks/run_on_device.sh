#!/usr/bin/env bash
# The prepared device run of issue #25: benchmarks/accelerator_check.py on a machine with an
# accelerator, no network, and jax (CUDA), flax, optax, orbax, chex and torch preinstalled.
#
# Before (on the workstation, once): build the ignored `.offline/` payload of the pure-Python
# wheels and the corpus wheels:
#     bash /work/shared/tools/offline-payload.sh          (see its header)
# The test step needs pytest (and pytest-xdist, hypothesis) on the device; where its Python lacks
# them, add their wheels to the payload too (small; the carry limit is 64 MiB with IMDB's 54 MB):
#     python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
#       --platform manylinux_2_17_x86_64 --platform any -d .offline/whl \
#       pytest pluggy iniconfig pytest-xdist execnet hypothesis sortedcontainers
# (the check's report names every pure-Python dependency still missing, in one line).
# Then run this script there with `.offline` carried along, e.g. with the session's device tool:
#     run(command="bash benchmarks/run_on_device.sh", carry=[".offline"], timeout_s=590)
# and copy what comes back ($OUT/accelerator_check.<device>.md/.json, $OUT/logs/) into
# benchmarks/results/ and commit it.
#
# On the device it: installs the offline wheels into /tmp/site (no index, no dependencies: the
# two lines of offline-payload.sh's header), points jaxnn at the offline corpora, and runs the
# check (<= 8 min) writing its report into $OUT and every step's full output into $OUT/logs.
set -u
OUT=${OUT:-$PWD/runs/device_out}
mkdir -p "$OUT/logs"
cd "$(dirname "$0")/.."
{
  echo "== $(date -u) on $(hostname)"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 --version
} 2>&1 | tee "$OUT/logs/device.log"
if ls .offline/whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .offline/whl/*.whl \
    2>&1 | tee -a "$OUT/logs/device.log"
  export PYTHONPATH=/tmp/site:.
  export JAXNN_DATA_DIR=$PWD/.offline/data
else
  echo "no .offline/whl: run /work/shared/tools/offline-payload.sh and carry .offline" \
    | tee -a "$OUT/logs/device.log"
  export PYTHONPATH=.
fi
export PYTHONUNBUFFERED=1
timeout 540 python3 benchmarks/accelerator_check.py --out "$OUT" --log-dir "$OUT/logs" \
  --budget-s 470 "$@" 2>&1 | tee "$OUT/logs/accelerator_check.log"
echo "exit ${PIPESTATUS[0]}" | tee -a "$OUT/logs/accelerator_check.log"
ls -la "$OUT"
