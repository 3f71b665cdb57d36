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
from mlx_stream_tts.cpu import blas as _blas
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


def test_openblas_loads_only_when_mlx_is_imported():
    # The service's clients and the hook import the package but never MLX: they must not pay for BLAS.
    code = ("import sys, mlx_stream_tts\nfrom mlx_stream_tts.cpu import blas\nprint(blas.active_blas)\n"
            "import mlx.core\nprint(blas.active_blas)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    before, after = out.stdout.split("\n")[:2]
    assert before == "None" and "openblas" in after.lower()


def test_late_import_warns():
    late = _probe("mlx-first")
    assert late["active"] is None
    assert "imported before mlx_stream_tts" in late["stderr"]


_THREADS = r"""
import mlx_stream_tts
import mlx.core  # OpenBLAS loads just before this (the package's import hook)
from mlx_stream_tts.cpu import blas as _blas
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


# --- the gemv shim (mlx_stream_tts/cpu/kernels/gemv_shim.c) ---------------------------------------------------

_ROW_MAJOR, _COL_MAJOR, _NO_TRANS, _TRANS = 101, 102, 111, 112


def _shim():
    from mlx_stream_tts.cpu import blas as _blas

    if _blas.gemv_shim is None:
        pytest.skip("gemv shim not built (no C compiler or no OpenBLAS)")
    fn = _blas.gemv_shim.cblas_sgemm
    fn.restype = None
    i, f, p = ctypes.c_int, ctypes.c_float, ctypes.c_void_p
    fn.argtypes = [i, i, i, i, i, i, f, p, i, p, i, f, p, i]
    return fn, _blas


def _ptr(a):
    return a.ctypes.data_as(ctypes.c_void_p)


_KERNELS = ["openblas", "plain", "avx512"]


@pytest.fixture(params=_KERNELS)
def kernel(request):
    """Each of the shim's kernels for rows of dot products (avx512 only where the CPU has it)."""
    _, blas = _shim()
    if blas.set_gemv_kernel(request.param) != request.param:
        blas.set_gemv_kernel("avx512")
        pytest.skip(f"{request.param} kernel not available on this CPU")
    yield request.param
    blas.set_gemv_kernel("avx512")


@pytest.fixture
def pool():
    """Configure the shim's worker pool for a test, then restore the defaults."""
    _, blas = _shim()
    shim = blas.gemv_shim
    yield shim.mst_gemv_shim_configure
    shim.mst_gemv_shim_configure(blas.blas_threads(), *blas.GEMV_POOL_DEFAULTS)


@pytest.mark.parametrize("order", [_ROW_MAJOR, _COL_MAJOR])
@pytest.mark.parametrize("ta", [_NO_TRANS, _TRANS])
@pytest.mark.parametrize("tb", [_NO_TRANS, _TRANS])
@pytest.mark.parametrize("m,n,k", [(1, 37, 19), (23, 1, 11), (1, 1, 9), (5, 7, 3), (1, 9, 47), (33, 1, 64)])
@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_shim_sgemm_equals_numpy(kernel, order, ta, tb, m, n, k, beta):
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


def _dots(fn, w, x, alpha=1.0, beta=0.0, y=None, column=False):
    """``alpha * w @ x + beta * y`` through the shim as MLX calls it: a one-row ``x @ w.T`` (row-major,
    B transposed) or, with ``column``, a one-column ``w @ x``. ``w`` may be a strided view of rows."""
    n, k = w.shape
    assert w.strides[1] == 4
    ld = w.strides[0] // 4
    x = np.ascontiguousarray(x, np.float32)
    if column:
        out = np.full((n, 3), np.nan, np.float32) if y is None else y  # ldc 3: a strided output
        fn(_ROW_MAJOR, _NO_TRANS, _NO_TRANS, n, 1, k, alpha, _ptr(w), ld, _ptr(x), 1, beta, _ptr(out), out.shape[1])
        return out[:, 0]
    out = np.full(n, np.nan, np.float32) if y is None else y
    fn(_ROW_MAJOR, _NO_TRANS, _TRANS, 1, n, k, alpha, _ptr(x), k, _ptr(w), ld, beta, _ptr(out), n)
    return out


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("n", [1, 3, 4, 5, 37, 1000])
@pytest.mark.parametrize("k", [1, 15, 16, 17, 31, 32, 33, 63, 1000, 1025])
@pytest.mark.parametrize("offset", [0, 5])
@pytest.mark.parametrize("aligned_ld", [True, False])
def test_shim_row_kernels_equal_numpy(kernel, pool, threads, n, k, offset, aligned_ld):
    """Odd sizes, rows that share one alignment (leading dimension a multiple of 64 bytes) or not,
    starting anywhere in a buffer (offset floats), 1-3 threads with products split into many small
    chunks, a one-row and a one-column product."""
    fn, blas = _shim()
    pool(threads, -1, -1, 0, 256)  # split everything, chunks of 4 rows
    rng = np.random.default_rng(n * 7919 + k)
    ld = (k + 15) // 16 * 16 + 16 if aligned_ld else k + 3
    buf = np.full(n * ld + offset + 16, np.nan, np.float32)
    w = np.lib.stride_tricks.as_strided(buf[offset:], (n, k), (ld * 4, 4))
    w[...] = rng.standard_normal((n, k))
    x = rng.standard_normal(k).astype(np.float32)
    want = w.astype(np.float64) @ x
    tol = dict(rtol=1e-4, atol=1e-4 * np.sqrt(k))
    own = blas.gemv_kernel_calls()
    np.testing.assert_allclose(_dots(fn, w, x), want, **tol)
    np.testing.assert_allclose(_dots(fn, w, x, column=True), want, **tol)
    assert blas.gemv_kernel_calls() - own == (0 if kernel == "openblas" or n == 1 else 2)  # 1 x 1: sgemm
    y0 = rng.standard_normal(n).astype(np.float32)
    np.testing.assert_allclose(_dots(fn, w, x, alpha=-0.5, beta=2.0, y=y0.copy()), -0.5 * want + 2 * y0, **tol)


@pytest.mark.parametrize("k", [16, 50, 1000, 1024])
def test_shim_row_kernel_results_do_not_depend_on_alignment(kernel, pool, k):
    """The same rows at every offset within a cache line, in rows of four (leading dimension a multiple
    of 16 floats) or one at a time (odd leading dimension), give bit-identical dot products: MLX puts
    attention caches and conv inputs at varying addresses, and outputs must not change from run to run."""
    fn, _ = _shim()
    pool(2, -1, -1, 0, 256)
    rng = np.random.default_rng(k)
    n = 9
    data = rng.standard_normal((n, k)).astype(np.float32)
    x = rng.standard_normal(k).astype(np.float32)
    results = []
    for ld in ((k + 15) // 16 * 16, k + 1):
        for offset in range(16):
            buf = np.full(n * ld + offset + 32, np.nan, np.float32)
            w = np.lib.stride_tricks.as_strided(buf[offset:], (n, k), (ld * 4, 4))
            w[...] = data
            results.append(_dots(fn, w, x))
            results.append(_dots(fn, w, x, column=True))
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


def test_shim_large_products_on_the_pool(pool):
    """Decoding-sized products with the default pool settings, every thread count, many calls in a row."""
    fn, blas = _shim()
    rng = np.random.default_rng(1)
    mats = [rng.standard_normal(s).astype(np.float32) for s in [(4096, 1024), (1024, 4096), (3001, 1000)]]
    for threads in (2, 1, 3, 2):
        pool(threads, -1, -1, -1, -1)
        for w in mats:
            x = rng.standard_normal(w.shape[1]).astype(np.float32)
            for _ in range(3):
                np.testing.assert_allclose(_dots(fn, w, x), w.astype(np.float64) @ x, rtol=1e-4, atol=1e-3)


def test_shim_from_several_threads_at_once(pool):
    """Threads that call the shim together (the pool serves one; the others run on their own thread)."""
    import threading

    fn, blas = _shim()
    pool(2, -1, -1, 0, 4096)
    rng = np.random.default_rng(2)
    w = rng.standard_normal((2000, 300)).astype(np.float32)
    xs = rng.standard_normal((4, 300)).astype(np.float32)
    errors = []

    def run(x):
        want = w.astype(np.float64) @ x
        for _ in range(50):
            got = _dots(fn, w, x)
            if not np.allclose(got, want, rtol=1e-4, atol=1e-3):
                errors.append(float(np.abs(got - want).max()))

    workers = [threading.Thread(target=run, args=(x,)) for x in xs]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert not errors, errors[:5]


def test_shim_pool_works_in_a_forked_child(pool):
    fn, blas = _shim()
    pool(2, -1, -1, 0, 4096)
    rng = np.random.default_rng(4)
    w = rng.standard_normal((1000, 300)).astype(np.float32)
    x = rng.standard_normal(300).astype(np.float32)
    want = w.astype(np.float64) @ x
    np.testing.assert_allclose(_dots(fn, w, x), want, rtol=1e-4, atol=1e-3)  # the workers exist now
    pid = os.fork()
    if pid == 0:  # the child has no workers: it must start its own (or run alone), not wait forever
        ok = all(np.allclose(_dots(fn, w, x), want, rtol=1e-4, atol=1e-3) for _ in range(20))
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_shim_threads_follow_blas_threads():
    _, blas = _shim()
    before = blas.blas_threads()
    try:
        blas.set_blas_threads(1)
        assert blas.gemv_shim.mst_gemv_shim_threads() == 1
        blas.set_blas_threads(2)
        assert blas.gemv_shim.mst_gemv_shim_threads() == 2
    finally:
        blas.set_blas_threads(before)


_SHIM_PROBE = r"""
import json
import mlx_stream_tts
from mlx_stream_tts.cpu import blas as _blas
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
    from mlx_stream_tts.cpu import blas as _blas

    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")  # mkdir under it fails
    monkeypatch.setattr(_blas, "_cache_dir", lambda: blocker / "lib")
    monkeypatch.setattr(_blas, "gemv_shim", None)
    monkeypatch.delenv("MLX_STREAM_TTS_GEMV", raising=False)

    class FakeOpenBlas:
        cblas_sgemv = object()

    _blas._load_gemv_shim(FakeOpenBlas())  # must not raise
    assert _blas.gemv_shim is None


_IDLE_PROBE = r"""
import json, os, time
import mlx_stream_tts
from mlx_stream_tts.cpu import blas as _blas
import mlx.core as mx
_blas.set_blas_threads(2)
a = mx.random.normal((512, 1024)); mx.eval(a)
for _ in range(3):
    mx.eval(a @ a.T)  # threaded sgemm: afterwards the OpenBLAS worker idles
cpu = time.process_time(); time.sleep(0.3); idle = time.process_time() - cpu
print(json.dumps({"timeout": os.environ.get("OPENBLAS_THREAD_TIMEOUT"), "idle_cpu_ms": idle * 1e3}))
"""


def test_openblas_workers_stop_spinning_soon_after_a_call():
    """The package sets OpenBLAS's spin time (2^20 cycles) unless the user did: idle workers that spin
    for ~0.1 s after each call took the second core from the voice's kernel (RTF 0.20 -> 0.11)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_THREAD_TIMEOUT", "OPENBLAS_NUM_THREADS")}

    def run(**extra):
        proc = subprocess.run([sys.executable, "-c", _IDLE_PROBE], capture_output=True, text=True, timeout=120,
                              env={**env, **extra})
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout.strip().splitlines()[-1])

    ours = run()
    assert ours["timeout"] == "20"
    assert ours["idle_cpu_ms"] < 40, ours  # a spinning worker would burn most of the 300 ms
    assert run(OPENBLAS_THREAD_TIMEOUT="25")["timeout"] == "25"  # the user's choice is kept
