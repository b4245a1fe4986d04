"""jaxnn.launch.cpu_vector_width: the setting must reach XLA:CPU's code generator, and only
through a call made before JAX starts.

The proof is XLA's own dump of the LLVM IR it compiled (``--xla_dump_to``): at width 512 an
elementwise kernel works on <16 x float> vectors, at XLA's default on <8 x float>. The setting is
process-wide (XLA_FLAGS, read once), so each case runs in a fresh child process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from jaxnn.launch import configure_process
from jaxnn.launch import cpu_vector_width as cvw

ROOT = Path(__file__).resolve().parents[2]


def cpuinfo(vendor: str, flags: str) -> str:
    """/proc/cpuinfo's text for two processors (the first one is read)."""
    one = f"processor\t: 0\nvendor_id\t: {vendor}\nmodel name\t: X\nflags\t\t: {flags}\n\n"
    return one + one.replace("processor\t: 0", "processor\t: 1")


AMD_ZEN5 = cpuinfo("AuthenticAMD", "fpu sse2 avx avx2 fma avx512f avx512bw avx512vl avx512_bf16")
AMD_AVX2 = cpuinfo("AuthenticAMD", "fpu sse2 avx avx2 fma")
INTEL_AVX512 = cpuinfo("GenuineIntel", "fpu sse2 avx avx2 fma avx512f avx512bw avx512vl")


def _this_cpu_has_avx512() -> bool:
    try:
        return "avx512f" in cvw._cpuinfo_fields(Path("/proc/cpuinfo").read_text())[1]
    except OSError:
        return False


avx512 = pytest.mark.skipif(not _this_cpu_has_avx512(), reason="needs an x86 CPU with AVX-512")


@pytest.mark.parametrize(
    ("text", "expected"),
    [(AMD_ZEN5, True), (AMD_AVX2, False), (INTEL_AVX512, False), ("", False)],
)
def test_full_rate_avx512_reads_vendor_and_flags(text, expected):
    assert cvw.full_rate_avx512(text) is expected


def test_the_flag_must_be_avx512f_itself():
    assert not cvw.full_rate_avx512(cpuinfo("AuthenticAMD", "avx2 avx512_bf16 avx512fx"))


@pytest.mark.parametrize(
    ("setting", "text", "width"),
    [
        ("auto", AMD_ZEN5, 512),
        ("auto", AMD_AVX2, None),
        ("auto", INTEL_AVX512, None),
        ("xla", AMD_ZEN5, None),
        ("128", AMD_AVX2, 128),
        ("256", AMD_ZEN5, 256),
        ("512", INTEL_AVX512, 512),
    ],
)
def test_resolve(setting, text, width):
    assert cvw.resolve(setting, text) == width


def test_bad_setting_names_value_source_and_allowed(monkeypatch):
    monkeypatch.delenv(cvw.ENV_VAR, raising=False)
    with pytest.raises(ValueError, match=r"from argument is '1024'; allowed: 'auto', 'xla'"):
        cvw.configure_cpu_vector_width("1024")
    with pytest.raises(ValueError, match=r"from --cpu_vector_width is 'avx'; allowed: 'auto'"):
        configure_process(cpu_vector_width="avx")
    monkeypatch.setenv(cvw.ENV_VAR, "wide")
    with pytest.raises(ValueError, match=r"from \$JAXNN_CPU_VECTOR_WIDTH is 'wide'"):
        configure_process()


def test_after_jax_started_it_warns_and_changes_nothing(monkeypatch):
    import jax.numpy as jnp

    jnp.ones(3).block_until_ready()  # this process's backends exist
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
    with pytest.warns(UserWarning, match="after JAX's first computation"):
        assert cvw.configure_cpu_vector_width("512") is None
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_enable_fast_math=false"
    assert cvw.cpu_vector_width()["width"] is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # XLA's default needs no flag: nothing to warn about
        assert cvw.configure_cpu_vector_width("xla") is None


# An elementwise jitted function; the child prints its settings and the vector types in the IR.
_CHILD = textwrap.dedent(
    """
    import glob, json, os, re, sys
    from jaxnn.launch import configure_process
    from jaxnn.launch.cpu_vector_width import cpu_vector_width
    width = configure_process(cpu_vector_width=sys.argv[1] or None).get("cpu_vector_width").value
    os.environ["XLA_FLAGS"] += f" --xla_dump_to={sys.argv[2]}"
    import jax, jax.numpy as jnp
    y = jax.jit(lambda x: jnp.tanh(x) * 2.0 + 1.0)(jnp.linspace(-1.0, 1.0, 4099))
    ir = "".join(open(f).read() for f in glob.glob(sys.argv[2] + "/*lambda*opt*.ll"))
    print(json.dumps({"width": width, "state": cpu_vector_width(), "sum": float(y.sum()),
        "vectors": sorted(set(re.findall(r"<(\\d+) x float>", ir)), key=int)}))
    """
)


def _child(tmp_path, setting="", env=None, xla_flags=""):
    """The child's report on a CPU run; ``setting``: its --cpu_vector_width ("": not given)."""
    environ = {k: v for k, v in os.environ.items() if k not in (cvw.ENV_VAR, "XLA_FLAGS")}
    environ.update(env or {}, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    environ["XLA_FLAGS"] = xla_flags
    dump = tmp_path / f"dump{len(list(tmp_path.iterdir()))}"
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, setting, str(dump)],
        env=environ,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@avx512
def test_512_reaches_the_code_generator_and_xla_keeps_its_default(tmp_path):
    wide = _child(tmp_path, "512")
    assert wide["width"] == 512 and "16" in wide["vectors"], wide
    assert wide["state"]["detail"] == "--xla_cpu_prefer_vector_width=512 (--cpu_vector_width)"
    default = _child(tmp_path, "xla")
    assert default["width"] is None and "8" in default["vectors"], default
    assert "16" not in default["vectors"], default
    assert wide["sum"] == pytest.approx(default["sum"], rel=1e-6)


@avx512
def test_flag_environment_and_xla_flags_precedence(tmp_path):
    from_env = _child(tmp_path, env={cvw.ENV_VAR: "512"})
    assert from_env["width"] == 512 and "16" in from_env["vectors"], from_env
    assert "($JAXNN_CPU_VECTOR_WIDTH)" in from_env["state"]["detail"]
    flag_wins = _child(tmp_path, "xla", env={cvw.ENV_VAR: "512"})
    assert flag_wins["width"] is None and "16" not in flag_wins["vectors"], flag_wins
    flags_win = _child(tmp_path, "xla", xla_flags="--xla_cpu_prefer_vector_width=512")
    assert flags_win["width"] == 512 and "16" in flags_win["vectors"], flags_win
    assert flags_win["state"]["detail"].endswith("from XLA_FLAGS")
    auto = _child(tmp_path, "auto")
    assert auto["width"] == cvw.resolve("auto"), auto
