"""The fast-BLAS remedy: importing mlx_stream_tts before mlx binds MLX's CPU matmuls to OpenBLAS."""

import ctypes
import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux-only remedy")

_PROBE = r"""
import json, sys, time
if sys.argv[1] == "mlx-first":
    import mlx.core
import mlx_stream_tts
from mlx_stream_tts import _blas
import mlx.core as mx
a = mx.random.normal((256, 2048)); b = mx.random.normal((2048, 512)); mx.eval(a, b)
mx.eval(a @ b)
best = 1e9
for _ in range(15):
    t = time.perf_counter(); mx.eval(a @ b); best = min(best, time.perf_counter() - t)
print(json.dumps({"active": _blas.active_blas, "maps": _blas.blas_in_process(), "ms": best * 1e3}))
"""


def _probe(mode: str = "normal", **env: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, mode],
        capture_output=True, text=True, timeout=120,
        # One BLAS thread: on a loaded 2-core machine a second thread stalls and the timing lies.
        env={**os.environ, "OPENBLAS_NUM_THREADS": "1", **env},
    )
    assert proc.returncode == 0, proc.stderr
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "stderr": proc.stderr}


def test_openblas_is_loaded_and_much_faster_than_reference():
    fast = _probe()
    assert fast["active"] and "openblas" in fast["active"].lower()
    assert any("openblas" in path.lower() for path in fast["maps"])
    slow = _probe(MLX_STREAM_TTS_BLAS="none")
    assert slow["active"] is None
    assert not any("openblas" in path.lower() for path in slow["maps"])
    # Measured ~8 ms vs ~80 ms here (one thread, best of 15); demand a margin only.
    assert fast["ms"] * 3 < slow["ms"], (fast["ms"], slow["ms"])


def test_late_import_warns():
    late = _probe("mlx-first")
    assert late["active"] is None
    assert "imported before mlx_stream_tts" in late["stderr"]


_THREADS = r"""
import mlx_stream_tts
from mlx_stream_tts import _blas
get = _blas._handles[-1].openblas_get_num_threads
print(get(), _blas.default_blas_threads(), _blas.blas_threads(), end=" ")
_blas.set_blas_threads(1)
print(get(), _blas.blas_threads())
"""


def _threads(**extra: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "MLX_STREAM_TTS_BLAS_THREADS")}
    out = subprocess.run([sys.executable, "-c", _THREADS], capture_output=True, text=True, timeout=60,
                         env={**env, **extra})
    assert out.returncode == 0, out.stderr
    return out.stdout.split() + [out.stderr]


def test_blas_threads_default_to_two_and_can_be_set():
    expected = str(min(2, os.cpu_count() or 1))
    assert _threads()[:5] == [expected, expected, expected, "1", "1"]
    assert _threads(MLX_STREAM_TTS_BLAS_THREADS="1")[0] == "1"
    bad = _threads(MLX_STREAM_TTS_BLAS_THREADS="lots")
    assert bad[0] == expected and "not a number" in bad[-1]


# --- the gemv shim (mlx_stream_tts/data/gemv_shim.c) ---------------------------------------------------

_ROW_MAJOR, _COL_MAJOR, _NO_TRANS, _TRANS = 101, 102, 111, 112


def _shim():
    from mlx_stream_tts import _blas

    if _blas.gemv_shim is None:
        pytest.skip("gemv shim not built (no C compiler or no OpenBLAS)")
    fn = _blas.gemv_shim.cblas_sgemm
    fn.restype = None
    i, f, p = ctypes.c_int, ctypes.c_float, ctypes.c_void_p
    fn.argtypes = [i, i, i, i, i, i, f, p, i, p, i, f, p, i]
    return fn, _blas


def _ptr(a):
    return a.ctypes.data_as(ctypes.c_void_p)


@pytest.mark.parametrize("order", [_ROW_MAJOR, _COL_MAJOR])
@pytest.mark.parametrize("ta", [_NO_TRANS, _TRANS])
@pytest.mark.parametrize("tb", [_NO_TRANS, _TRANS])
@pytest.mark.parametrize("m,n,k", [(1, 37, 19), (23, 1, 11), (1, 1, 9), (5, 7, 3)])
@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_shim_sgemm_equals_numpy(order, ta, tb, m, n, k, beta):
    """Every layout the CBLAS interface allows, padded leading dimensions, beta 0 over NaN garbage."""
    fn, blas = _shim()
    rng = np.random.default_rng(m * 1000 + n * 10 + k)
    op_a = rng.standard_normal((m, k)).astype(np.float32)
    op_b = rng.standard_normal((k, n)).astype(np.float32)
    alpha = 1.5

    def store(op, trans, pad=3):
        # The matrix as the caller keeps it (transposed or not), in `order`, with a padded leading dim.
        mat = op.T if trans == _TRANS else op
        rows, cols = mat.shape
        if order == _ROW_MAJOR:
            buf = np.full((rows, cols + pad), np.nan, np.float32)
            buf[:, :cols] = mat
            return buf, cols + pad
        buf = np.full((cols, rows + pad), np.nan, np.float32)
        buf[:, :rows] = mat.T
        return buf, rows + pad

    a, lda = store(op_a, ta)
    b, ldb = store(op_b, tb)
    c0 = rng.standard_normal((m, n)).astype(np.float32)
    c, ldc = store(c0, _NO_TRANS)
    if beta == 0.0:
        c[...] = np.nan  # uninitialized output must not leak into the result
    calls = blas.gemv_calls()
    fn(order, ta, tb, m, n, k, alpha, _ptr(a), lda, _ptr(b), ldb, beta, _ptr(c), ldc)
    got = c[:, :n] if order == _ROW_MAJOR else c[:, :m].T
    want = alpha * (op_a.astype(np.float64) @ op_b) + (beta * c0 if beta else 0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    routed = (m == 1) != (n == 1)
    assert blas.gemv_calls() - calls == (1 if routed else 0)


_SHIM_PROBE = r"""
import json
import mlx_stream_tts
from mlx_stream_tts import _blas
import mlx.core as mx
import numpy as np
w = mx.random.normal((3000, 512)); x = mx.random.normal((1, 512)); c = mx.random.normal((3000,)); mx.eval(w, x, c)
before = _blas.gemv_calls()
outs = [x @ w.T, w @ x.T, mx.addmm(c, x, w.T), mx.random.normal((4, 512)) @ w.T]
mx.eval(outs)
ref = np.array(x) @ np.array(w).T
err = max(float(np.abs(np.array(outs[0]) - ref).max()), float(np.abs(np.array(outs[1]).T - ref).max()),
          float(np.abs(np.array(outs[2]) - ref - np.array(c)).max()))
print(json.dumps({"calls": _blas.gemv_calls() - before, "shim": _blas.gemv_shim is not None, "err": err}))
"""


def test_mlx_one_row_products_go_through_the_shim_and_can_be_turned_off():
    _shim()  # skips where the shim cannot be built
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    on = subprocess.run([sys.executable, "-c", _SHIM_PROBE], capture_output=True, text=True, timeout=120, env=env)
    assert on.returncode == 0, on.stderr
    on = json.loads(on.stdout.strip().splitlines()[-1])
    assert on["shim"] and on["calls"] == 3 and on["err"] < 1e-3, on  # the 4-row product is not routed
    off = subprocess.run([sys.executable, "-c", _SHIM_PROBE], capture_output=True, text=True, timeout=120,
                         env={**env, "MLX_STREAM_TTS_GEMV": "0"})
    assert off.returncode == 0, off.stderr
    off = json.loads(off.stdout.strip().splitlines()[-1])
    assert not off["shim"] and off["calls"] == 0 and off["err"] < 1e-3, off


def test_unwritable_cache_only_loses_the_shim(tmp_path, monkeypatch):
    from mlx_stream_tts import _blas

    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")  # mkdir under it fails
    monkeypatch.setattr(_blas, "_cache_dir", lambda: blocker / "lib")
    monkeypatch.setattr(_blas, "gemv_shim", None)
    monkeypatch.delenv("MLX_STREAM_TTS_GEMV", raising=False)

    class FakeOpenBlas:
        cblas_sgemv = object()

    _blas._load_gemv_shim(FakeOpenBlas())  # must not raise
    assert _blas.gemv_shim is None
