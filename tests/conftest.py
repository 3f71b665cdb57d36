# Importing the package first binds MLX's CPU matmuls to OpenBLAS (it must precede `import mlx.core`).
import os

import mlx_stream_tts  # noqa: F401
import mlx.core  # noqa: F401,E402  (OpenBLAS and the gemv shim load now, as in any process that runs a model)

# The phrase cache is on by default for users; tests never read or write the real one (a test that
# wants a cache makes its own in a temp folder, and the cache tests set this variable themselves).
os.environ.setdefault("MLX_STREAM_TTS_NO_CACHE", "1")

# Hypothesis profiles for the property tests (tests/test_properties.py). "ci" is the default: small
# enough for every run. "nightly" runs 10,000 examples per property; it is chosen by
# HYPOTHESIS_PROFILE=nightly or by selecting the tests with `-m nightly` (hypothesis's own
# --hypothesis-profile wins over both). No deadline: the machines are shared and their speed varies.
# No example database: tests write nothing into the checkout; a failure prints its reproduction blob.
try:
    from hypothesis import HealthCheck, settings
except ImportError:  # the property tests skip themselves without hypothesis
    settings = None
else:
    _COMMON = dict(deadline=None, database=None, print_blob=True,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    settings.register_profile("ci", max_examples=60, **_COMMON)
    settings.register_profile("nightly", max_examples=10_000, **_COMMON)
    settings.load_profile("ci")


def pytest_configure(config):
    if settings is None or config.getoption("hypothesis_profile", None):
        return
    markexpr = config.getoption("markexpr", "") or ""
    wants_nightly = "nightly" in markexpr and "not nightly" not in markexpr
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("nightly" if wants_nightly else "ci"))
