"""mlx_stream_tts.cpu: choosing between the pure MLX model and the CPU accelerator."""

from __future__ import annotations

import logging
import subprocess
import sys

import mlx.core as mx
import pytest

from mlx_stream_tts import cpu


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    monkeypatch.delenv(cpu.ENV_BACKEND, raising=False)
    monkeypatch.setattr(cpu, "_warned", set())


@pytest.mark.parametrize("asked, env, expected", [
    ("auto", None, "auto"), (None, None, "auto"), ("mlx", None, "mlx"), ("cpu", None, "cpu"), (" CPU ", None, "cpu"),
    ("auto", "mlx", "mlx"), ("cpu", "mlx", "mlx"), ("auto", "cpu", "cpu"), ("mlx", "cpu", "mlx"),
    ("auto", "auto", "auto"), ("cpu", "", "cpu"),
])
def test_resolve_backend(monkeypatch, asked, env, expected):
    if env is not None:
        monkeypatch.setenv(cpu.ENV_BACKEND, env)
    assert cpu.resolve_backend(asked) == expected


def test_unknown_backends_are_refused(monkeypatch):
    with pytest.raises(ValueError, match="unknown backend 'gpu'"):
        cpu.resolve_backend("gpu")
    monkeypatch.setenv(cpu.ENV_BACKEND, "metal")
    with pytest.raises(ValueError, match="MLX_STREAM_TTS_BACKEND='metal'"):
        cpu.resolve_backend("auto")


def test_device_decides_for_auto():
    assert cpu.device_allows("mlx") is False
    on_cpu = mx.default_device() == mx.cpu
    assert cpu.device_allows("auto") is on_cpu
    assert cpu.device_allows("cpu") is on_cpu


def test_cpu_backend_on_a_gpu_device_is_a_clear_error(monkeypatch):
    # This machine has no GPU: make MLX report one as its default device.
    monkeypatch.setattr(mx, "default_device", lambda: mx.Device(mx.gpu))
    assert cpu.device_allows("auto") is False
    with pytest.raises(cpu.AcceleratorError, match="backend='mlx'"):
        cpu.device_allows("cpu")


def test_unavailable_warns_once_under_auto_and_raises_under_cpu(caplog, monkeypatch):
    monkeypatch.setattr(cpu, "would_benefit", lambda: True)
    with caplog.at_level(logging.INFO, logger="mlx_stream_tts.cpu"):
        for _ in range(3):
            cpu.unavailable("auto", "the 8-bit vocoder", "the voice runs slower", "no C compiler", "install gcc")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    text = warnings[0].getMessage()
    assert "the 8-bit vocoder" in text and "no C compiler" in text and "install gcc" in text and "slower" in text
    with pytest.raises(cpu.AcceleratorError, match="no C compiler"):
        cpu.unavailable("cpu", "the 8-bit vocoder", "the voice runs slower", "no C compiler", "install gcc")


def test_unavailable_is_only_info_where_the_accelerator_is_not_made_for(caplog, monkeypatch):
    monkeypatch.setattr(cpu, "would_benefit", lambda: False)
    with caplog.at_level(logging.INFO, logger="mlx_stream_tts.cpu"):
        cpu.unavailable("auto", "the gemv shim", "slower", "macOS", "nothing to do")
    assert [r.levelno for r in caplog.records] == [logging.INFO]


def test_build_failures_are_recorded(tmp_path, monkeypatch):
    from mlx_stream_tts.cpu import build

    monkeypatch.setattr(build, "failures", {})
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    assert build.build("int8_conv.c", ("-DMST_TEST_FAILURE",), directory=tmp_path) is None
    assert "int8_conv.c" in build.failures
    assert build.build("no_such_kernel.c", directory=tmp_path) is None
    assert "unreadable" in build.failures["no_such_kernel.c"]


def test_backend_mlx_in_the_environment_keeps_the_gemv_shim_out():
    code = ("import mlx_stream_tts.cpu.blas as b; from mlx_stream_tts.cpu.build import failures; "
            "print(b.gemv_shim is None, b.active_blas is not None, repr(failures.get('gemv_shim.c')))")
    forced = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**_env(), cpu.ENV_BACKEND: "mlx"})
    assert forced.returncode == 0, forced.stderr
    no_shim, blas, why = forced.stdout.split(" ", 2)
    assert no_shim == "True"
    if blas == "True":
        assert "MLX_STREAM_TTS_BACKEND=mlx" in why
    default = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=_env())
    assert default.returncode == 0, default.stderr
    no_shim, blas, why = default.stdout.split(" ", 2)
    # Without the variable the shim is there, or a reason why not is recorded (no compiler, no OpenBLAS).
    assert no_shim == "False" or why.strip() != "None" or blas == "False"
    assert "MLX_STREAM_TTS_BACKEND" not in why


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != cpu.ENV_BACKEND}
