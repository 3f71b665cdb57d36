"""A persistent cache of translations and spoken audio for the phrases that come back again and again.

Coding agents repeat themselves ("Let me run the tests.", "Done."): a phrase seen before is looked up
instead of being translated and voiced again, and its audio reaches the sink within milliseconds.

::

    translator = CachedTranslator(Translator.load(dir), cache, model_id=fingerprint(dir))
    voice = CachedVoice(Voice.load(), cache, voice_id=fingerprint(voice_dir))
    Pipeline(translator, voice, sink)        # the pipeline itself does not know about the cache

:class:`PhraseCache` is one SQLite file (``cache_root() / "phrases.sqlite3"`` by default) in WAL mode,
so readers never wait for a writer and several processes (the service, a ``speak`` run) share it.
Keys are a hash of the whole key tuple; every row carries a last-used stamp, and a write that takes
the total over ``max_bytes`` evicts the least recently used rows in one batch. The cache never raises
into the pipeline: a corrupt file is deleted and rebuilt (with a warning), and a file that cannot be
opened or written (read-only folder, full disk, a lock held too long) makes that call a no-op, with one
warning per kind of trouble.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .audio import to_int16
from .paths import cache_root

logger = logging.getLogger(__name__)

__all__ = ["CachedTranslator", "CachedVoice", "PhraseCache", "fingerprint", "open_default_cache", "NO_CACHE_ENV"]

#: Set to anything but ``""``/``0``/``false``/``no``/``off`` to turn the cache off.
NO_CACHE_ENV = "MLX_STREAM_TTS_NO_CACHE"
#: The file's name inside :func:`mlx_stream_tts.paths.cache_root`.
DEFAULT_FILE = "phrases.sqlite3"
DEFAULT_MAX_BYTES = 64 << 20
#: Audio longer than this is not stored: the cache is for short, repeated phrases.
MAX_AUDIO_SECONDS = 30.0

# Bumped when the stored format changes; older files are emptied on open.
_SCHEMA = 1
# The package version is part of every key: a new G2P or voice gives other audio for the same text.
_KEY_PREFIX = f"mlx_stream_tts {__version__} cache {_SCHEMA}"
# What a row costs beyond its payload (key, stamps, b-tree cells), so that many tiny rows count too.
_ROW_OVERHEAD = 64
# Eviction frees down to this fraction of max_bytes, so that it runs once per many writes.
_LOW_WATER = 0.9
# Stamps of read rows are written in batches: at most this many or this old.
_TOUCH_BATCH = 32
_TOUCH_SECONDS = 2.0
# After the file could not be opened, wait this long before trying again (calls are no-ops meanwhile).
_RETRY_OPEN_SECONDS = 30.0
_CORRUPT_CODES = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB

_SCHEMA_SQL = (
    "CREATE TABLE IF NOT EXISTS translations ("
    " key BLOB PRIMARY KEY, text TEXT NOT NULL, size INTEGER NOT NULL, used REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS translations_used ON translations(used)",
    "CREATE TABLE IF NOT EXISTS audio ("
    " key BLOB PRIMARY KEY, rate INTEGER NOT NULL, pcm BLOB NOT NULL, size INTEGER NOT NULL, used REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS audio_used ON audio(used)",
    # One row of running totals, kept by triggers so that a write never has to sum the tables.
    "CREATE TABLE IF NOT EXISTS totals (id INTEGER PRIMARY KEY CHECK (id = 0),"
    " bytes INTEGER NOT NULL, entries INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO totals VALUES (0, 0, 0)",
    *(
        stmt
        for table in ("translations", "audio")
        for stmt in (
            f"CREATE TRIGGER IF NOT EXISTS {table}_ins AFTER INSERT ON {table} BEGIN"
            " UPDATE totals SET bytes = bytes + NEW.size, entries = entries + 1; END",
            f"CREATE TRIGGER IF NOT EXISTS {table}_del AFTER DELETE ON {table} BEGIN"
            " UPDATE totals SET bytes = bytes - OLD.size, entries = entries - 1; END",
            f"CREATE TRIGGER IF NOT EXISTS {table}_upd AFTER UPDATE OF size ON {table} BEGIN"
            " UPDATE totals SET bytes = bytes - OLD.size + NEW.size; END",
        )
    ),
)


class PhraseCache:
    """Translations and audio of phrases seen before, in one SQLite file shared by threads and processes.

    Every method is safe to call from any thread and never raises for trouble with the file: a read
    then misses and a write is skipped (see the module docstring).

    Args:
        path: the database file (default: ``cache_root() / "phrases.sqlite3"``); its folder is created.
        max_bytes: the most bytes of entries kept (payload plus a small per-row cost); entries over
            ``max_bytes // 8`` are not stored.
        timeout: seconds a write waits for another process's write to finish before it is skipped.

    Raises:
        ValueError: ``max_bytes`` or ``timeout`` out of range.
    """

    def __init__(self, path: str | Path | None = None, max_bytes: int = DEFAULT_MAX_BYTES,
                 timeout: float = 0.5) -> None:
        if max_bytes < 1024:
            raise ValueError(f"max_bytes must be at least 1024, got {max_bytes}")
        if not timeout >= 0:
            raise ValueError(f"timeout must be >= 0 seconds, got {timeout}")
        self.path = Path(path).expanduser() if path is not None else cache_root() / DEFAULT_FILE
        self.max_bytes = int(max_bytes)
        self.max_entry_bytes = self.max_bytes // 8
        self.timeout = float(timeout)
        self.hits = 0
        self.misses = 0
        # One connection behind a lock: the translator's and the voice's threads take turns for the
        # few hundred microseconds a call holds it, and a rebuild can swap the connection safely.
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        self._retry_at = 0.0
        self._closed = False
        self._warned: set[str] = set()
        self._touched: dict[tuple[str, bytes], float] = {}
        self._touch_flushed = time.monotonic()
        self._last_stamp = 0.0
        with self._lock:
            self._connection()  # a corrupt file is rebuilt now rather than on the first sentence

    # -- public API ------------------------------------------------------------------------------

    def get_translation(self, src_lang: str, tgt_lang: str, model_id: str, text: str) -> str | None:
        """The stored translation of ``text``, or None."""
        key = _key("translation", src_lang, tgt_lang, model_id, text)
        row = self._call("read", lambda conn: conn.execute(
            "SELECT text FROM translations WHERE key = ?", (key,)).fetchone())
        return self._found("translations", key, row[0] if row else None)

    def put_translation(self, src_lang: str, tgt_lang: str, model_id: str, text: str, translation: str) -> bool:
        """Stores a translation; False when it was not stored (empty, too big, or the file is unusable)."""
        if not translation.strip():
            return False
        size = len(translation.encode("utf-8", "surrogatepass")) + _ROW_OVERHEAD
        if size > self.max_entry_bytes:
            return False
        key = _key("translation", src_lang, tgt_lang, model_id, text)
        return self._put(
            "INSERT INTO translations (key, text, size, used) VALUES (?, ?, ?, ?) ON CONFLICT(key) DO UPDATE"
            " SET text = excluded.text, size = excluded.size, used = excluded.used",
            lambda stamp: (key, translation, size, stamp),
        )

    def get_audio(self, voice_id: str, speed: float, text: str) -> tuple[np.ndarray, int] | None:
        """The stored audio of ``text`` as (float32 mono samples, sample rate), or None."""
        key = _key("audio", voice_id, _speed_key(speed), text)
        row = self._call("read", lambda conn: conn.execute(
            "SELECT rate, pcm FROM audio WHERE key = ?", (key,)).fetchone())
        audio = None
        if row is not None:
            rate, pcm = row
            if isinstance(pcm, bytes) and len(pcm) % 2 == 0 and len(pcm) and isinstance(rate, int) and rate > 0:
                # Each int16 step maps back to k / 32767, which to_int16 turns into k again: a sink
                # writes the very samples it wrote the first time.
                audio = (np.frombuffer(pcm, dtype="<i2").astype(np.float32) / np.float32(32767.0), rate)
            else:
                logger.debug("phrase cache: dropping an unreadable audio row")
                self._call("write", lambda conn: conn.execute("DELETE FROM audio WHERE key = ?", (key,)))
        return self._found("audio", key, audio)

    def put_audio(self, voice_id: str, speed: float, text: str, audio: np.ndarray, sample_rate: int) -> bool:
        """Stores audio as 16-bit PCM; False when it was not stored (empty, too long or big, unusable file).

        Raises:
            ValueError: ``audio`` is not mono or ``sample_rate`` is not positive.
        """
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        pcm = to_int16(audio)
        if pcm.size == 0 or pcm.size > MAX_AUDIO_SECONDS * sample_rate:
            return False
        blob = pcm.astype("<i2", copy=False).tobytes()
        size = len(blob) + _ROW_OVERHEAD
        if size > self.max_entry_bytes:
            return False
        key = _key("audio", voice_id, _speed_key(speed), text)
        return self._put(
            "INSERT INTO audio (key, rate, pcm, size, used) VALUES (?, ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE"
            " SET rate = excluded.rate, pcm = excluded.pcm, size = excluded.size, used = excluded.used",
            lambda stamp: (key, int(sample_rate), blob, size, stamp),
        )

    def stats(self) -> dict[str, Any]:
        """``entries`` and ``bytes`` in the file (0 when it is unusable), this object's ``hits`` and
        ``misses``, ``max_bytes``, ``path``, and ``available`` (whether the file could be read)."""

        def read(conn: sqlite3.Connection) -> tuple[int, int]:
            self._flush_touches(conn, wait=False)
            row = conn.execute("SELECT entries, bytes FROM totals WHERE id = 0").fetchone()
            return (int(row[0]), int(row[1])) if row else (0, 0)

        totals = self._call("read", read)
        entries, size = totals if totals is not None else (0, 0)
        return {"entries": entries, "bytes": size, "hits": self.hits, "misses": self.misses,
                "max_bytes": self.max_bytes, "path": str(self.path), "available": totals is not None}

    def clear(self) -> None:
        """Deletes every entry (in every process's view: the file is shared)."""

        def clear(conn: sqlite3.Connection) -> None:
            with _transaction(conn):
                conn.execute("DELETE FROM translations")
                conn.execute("DELETE FROM audio")
            self._touched.clear()
            conn.execute("PRAGMA incremental_vacuum")

        self._call("write", clear)

    def close(self) -> None:
        """Writes the pending use stamps and closes the file; later calls are no-ops. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            conn, self._conn = self._conn, None
            if conn is None or self._pid != os.getpid():
                return
            try:
                self._flush_touches(conn, wait=False)
            except sqlite3.Error as err:
                logger.debug("phrase cache: use stamps not written at close: %r", err)
            try:
                conn.close()
            except sqlite3.Error:
                pass

    def __enter__(self) -> PhraseCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PhraseCache({str(self.path)!r}, max_bytes={self.max_bytes})"

    # -- reads and writes ------------------------------------------------------------------------

    def _found(self, table: str, key: bytes, value: Any) -> Any:
        with self._lock:
            if value is None:
                self.misses += 1
                return None
            self.hits += 1
            self._touched[(table, key)] = self._stamp()
            due = len(self._touched) >= _TOUCH_BATCH or time.monotonic() - self._touch_flushed > _TOUCH_SECONDS
        if due:
            # Never waits: a hit must stay fast even while another process writes.
            self._call("write", lambda conn: self._flush_touches(conn, wait=False))
        return value

    def _put(self, sql: str, params: Callable[[float], tuple]) -> bool:
        def write(conn: sqlite3.Connection) -> bool:
            evicted = False
            with _transaction(conn):
                self._flush_touches(conn, wait=True)
                conn.execute(sql, params(self._stamp()))
                total = conn.execute("SELECT bytes FROM totals WHERE id = 0").fetchone()[0]
                if total > self.max_bytes:
                    evicted = self._evict(conn, total - int(self.max_bytes * _LOW_WATER)) > 0
            if evicted:
                conn.execute("PRAGMA incremental_vacuum")  # give the freed pages back to the disk
            return True

        return bool(self._call("write", write))

    def _evict(self, conn: sqlite3.Connection, need: int) -> int:
        """Deletes the least recently used rows until ``need`` bytes are freed; returns rows deleted."""
        victims: dict[str, list[bytes]] = {"translations": [], "audio": []}
        freed = 0
        rows = conn.execute(
            "SELECT 'translations', key, size, used FROM translations UNION ALL"
            " SELECT 'audio', key, size, used FROM audio ORDER BY used"
        )
        for table, key, size, _ in rows:
            if freed >= need:
                break
            victims[table].append(key)
            freed += size
        rows.close()
        for table, keys in victims.items():
            conn.executemany(f"DELETE FROM {table} WHERE key = ?", [(k,) for k in keys])
        n = sum(len(k) for k in victims.values())
        logger.debug("phrase cache: evicted %d entries (%d bytes)", n, freed)
        return n

    def _flush_touches(self, conn: sqlite3.Connection, wait: bool) -> None:
        """Writes the last-used stamps of rows read since the last flush (called with the lock held)."""
        if not self._touched:
            self._touch_flushed = time.monotonic()
            return
        touched = list(self._touched.items())
        if wait:  # inside the caller's write transaction
            self._write_touches(conn, touched)
        else:
            conn.execute("PRAGMA busy_timeout = 0")
            try:
                with _transaction(conn):
                    self._write_touches(conn, touched)
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) and "busy" not in str(err):
                    raise
                return  # another process is writing: keep the stamps for the next try
            finally:
                conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
        for item, stamp in touched:
            if self._touched.get(item) == stamp:
                del self._touched[item]
        self._touch_flushed = time.monotonic()

    @staticmethod
    def _write_touches(conn: sqlite3.Connection, touched: list[tuple[tuple[str, bytes], float]]) -> None:
        for table in ("translations", "audio"):
            rows = [(stamp, key) for (t, key), stamp in touched if t == table]
            if rows:
                conn.executemany(f"UPDATE {table} SET used = max(used, ?) WHERE key = ?", rows)

    def _stamp(self) -> float:
        # Wall-clock time, shared by all processes; strictly increasing here so that order is kept.
        self._last_stamp = max(time.time(), self._last_stamp + 1e-6)
        return self._last_stamp

    # -- the connection and its troubles ---------------------------------------------------------

    def _call(self, what: str, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Runs ``fn`` on the connection under the lock; None when the file is unusable or fails."""
        with self._lock:
            conn = self._connection()
            if conn is None:
                return None
            try:
                return fn(conn)
            except sqlite3.Error as err:
                _rollback(conn)
                if _is_corrupt(err):
                    self._rebuild(err)
                else:
                    self._warn(what, err)
                return None

    def _connection(self) -> sqlite3.Connection | None:
        """The open connection, opening (or rebuilding) the file if needed; None when unusable."""
        if self._closed:
            return None
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        # A connection inherited through fork() must not be used (nor closed: its locks are the parent's).
        self._conn = None
        if time.monotonic() < self._retry_at:
            return None
        try:
            self._conn = self._open()
        except sqlite3.Error as err:
            if not _is_corrupt(err):
                self._open_failed(err)
                return None
            self._rebuild(err)
        except OSError as err:
            self._open_failed(err)
        return self._conn

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode: every write is an explicit, short BEGIN IMMEDIATE ... COMMIT.
        conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # only takes effect on a new, empty file
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")  # a cache may lose its last writes in a power cut
            conn.execute(f"PRAGMA journal_size_limit = {8 << 20}")
            self._create_schema(conn)
        except BaseException:
            conn.close()
            raise
        self._pid = os.getpid()
        self._retry_at = 0.0
        return conn

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == _SCHEMA:
            return
        with _transaction(conn):
            version = conn.execute("PRAGMA user_version").fetchone()[0]  # another process may have done it
            if version == _SCHEMA:
                return
            if version != 0:
                logger.info("phrase cache %s has format %d, not %d: emptied", self.path, version, _SCHEMA)
                for name in ("translations", "audio", "totals"):
                    conn.execute(f"DROP TABLE IF EXISTS {name}")
            for stmt in _SCHEMA_SQL:
                conn.execute(stmt)
            conn.execute(f"PRAGMA user_version = {_SCHEMA}")

    def _rebuild(self, err: sqlite3.Error) -> None:
        """Deletes a corrupt file and starts an empty one; on failure the cache stays off for a while."""
        logger.warning("phrase cache %s is corrupt (%s); rebuilding it empty", self.path, err)
        if self._conn is not None:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass
        self._conn = None
        self._touched.clear()
        try:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            self._conn = self._open()
        except (OSError, sqlite3.Error) as again:
            self._open_failed(again)

    def _open_failed(self, err: BaseException) -> None:
        self._retry_at = time.monotonic() + _RETRY_OPEN_SECONDS
        self._warn("open", err)

    def _warn(self, what: str, err: BaseException) -> None:
        # Once per kind of trouble: a full disk must not log a warning for every sentence.
        if what in self._warned:
            logger.debug("phrase cache %s: %s failed: %r", self.path, what, err)
            return
        self._warned.add(what)
        logger.warning("phrase cache %s: %s failed (%s); going on without it where it fails "
                       "(set %s=1 to turn it off)", self.path, what, err, NO_CACHE_ENV)


def open_default_cache(enabled: bool | None = None, path: str | Path | None = None,
                       max_bytes: int = DEFAULT_MAX_BYTES) -> PhraseCache | None:
    """The phrase cache at its default place, or None when it is turned off.

    Args:
        enabled: False turns it off (``--no-cache``), True on; None follows ``$MLX_STREAM_TTS_NO_CACHE``.
        path: the database file (default: ``cache_root() / "phrases.sqlite3"``).
        max_bytes: see :class:`PhraseCache`.
    """
    if enabled is None:
        enabled = os.environ.get(NO_CACHE_ENV, "").strip().lower() in ("", "0", "false", "no", "off")
    if not enabled:
        logger.debug("phrase cache off")
        return None
    return PhraseCache(path, max_bytes=max_bytes)


def fingerprint(path: str | Path) -> str:
    """A short id of a converted model folder (or file) that changes when it is rebuilt.

    Hashes ``config.json``'s text and the name, size and modification time of every other file in
    the folder (the weights are never read). Use it in the ``model_id``/``voice_id`` of the wrappers.

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"cannot fingerprint {path}: no such file or folder")
    h = hashlib.blake2b(digest_size=8)
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    for file in files:
        st = file.stat()
        h.update(f"{file.name}\0{st.st_size}\0{st.st_mtime_ns}\0".encode("utf-8", "surrogatepass"))
        if file.name == "config.json":
            h.update(file.read_bytes())
    return h.hexdigest()


class CachedTranslator:
    """A translator that looks each text up in a :class:`PhraseCache` and translates only the misses.

    Other attributes are the inner translator's.

    Args:
        inner: the translator (``translate(texts, src_lang, tgt_lang)``).
        cache: the cache; None passes every call through.
        model_id: what identifies the inner model's output (e.g. ``fingerprint(dir)`` plus its dtype):
            translations are shared only between equal ids.
    """

    def __init__(self, inner: Any, cache: PhraseCache | None, model_id: str) -> None:
        self.inner = inner
        self.cache = cache
        self.model_id = model_id

    def translate(self, texts: list[str], src_lang: str = "eng_Latn", tgt_lang: str = "jpn_Jpan",
                  **options: Any) -> list[str]:
        """Translations of ``texts`` in order; the misses go to the inner translator as one batch.

        Options (e.g. ``beam_size``) are passed on and are part of the key. The inner translator's
        exceptions propagate and nothing of that batch is stored.
        """
        cache = self.cache
        if cache is None or not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            return self.inner.translate(texts, src_lang, tgt_lang, **options)  # its own errors for bad input
        model = self.model_id if not options else f"{self.model_id} {json.dumps(options, sort_keys=True, default=repr)}"
        out: list[str | None] = [cache.get_translation(src_lang, tgt_lang, model, t) for t in texts]
        missing = list(dict.fromkeys(t for t, r in zip(texts, out) if r is None))  # each text once
        if not missing:
            return out  # type: ignore[return-value]
        got = self.inner.translate(missing, src_lang, tgt_lang, **options)
        if not isinstance(got, list) or len(got) != len(missing) or not all(isinstance(s, str) for s in got):
            raise TypeError(f"the inner translate() must return a list of {len(missing)} str, got {type(got).__name__}")
        found = dict(zip(missing, got))
        for text, result in found.items():
            cache.put_translation(src_lang, tgt_lang, model, text, result)
        return [r if r is not None else found[t] for t, r in zip(texts, out)]

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet (copy, unpickling): no endless recursion
            raise AttributeError(name)
        return getattr(self.inner, name)


class CachedVoice:
    """A voice that says phrases heard before from a :class:`PhraseCache`.

    A hit yields the stored audio at once (in half-second chunks); a miss streams the inner voice's
    chunks as they come and stores the whole once the inner generator has run to its end (a closed
    or failed generator stores nothing). Other attributes (``voice``, ``set_voice``, ``voices``...)
    are the inner voice's, read and written through.

    The key is ``voice_id`` (a string, or a callable called on each sentence) plus the inner voice's
    current ``voice``, ``mode``, ``engine.backend`` and ``engine.precision`` where it has them, so
    ``set_voice`` and the like switch to other entries by themselves.

    Args:
        inner: the voice (``sample_rate``, ``lang``, ``synthesize(text, speed)``).
        cache: the cache; None passes every call through.
        voice_id: what identifies the model (e.g. ``fingerprint(voice_dir)``).
    """

    _OWN = frozenset({"inner", "cache", "voice_id"})

    def __init__(self, inner: Any, cache: PhraseCache | None, voice_id: str | Callable[[], str]) -> None:
        object.__setattr__(self, "inner", inner)
        object.__setattr__(self, "cache", cache)
        object.__setattr__(self, "voice_id", voice_id)

    @property
    def sample_rate(self) -> int:
        return int(self.inner.sample_rate)

    @property
    def lang(self) -> str:
        return self.inner.lang

    def key_id(self) -> str:
        """The voice part of the cache key, from the inner voice's state now."""
        base = self.voice_id() if callable(self.voice_id) else self.voice_id
        engine = getattr(self.inner, "engine", None)
        state = (getattr(self.inner, "voice", None), getattr(self.inner, "mode", None),
                 getattr(engine, "backend", None), getattr(engine, "precision", None), self.sample_rate)
        return json.dumps([str(base), *(None if s is None else str(s) for s in state)])

    def synthesize(self, text: str, speed: float = 1.0, **options: Any) -> Iterator[np.ndarray]:
        """Float32 mono chunks of ``text`` spoken (see the class docstring); options go to the inner voice."""
        cache = self.cache
        if cache is None or not isinstance(text, str):
            return iter(self.inner.synthesize(text, speed, **options))
        key = self.key_id()
        if options:
            key += " " + json.dumps(options, sort_keys=True, default=repr)
        return self._synthesize(cache, key, text, speed, options)

    def _synthesize(self, cache: PhraseCache, key: str, text: str, speed: float, options: dict) -> Iterator[np.ndarray]:
        rate = self.sample_rate
        hit = cache.get_audio(key, speed, text)
        if hit is not None and hit[1] == rate:
            audio = hit[0]
            step = max(rate // 2, 1)
            for start in range(0, audio.size, step):
                yield audio[start:start + step]
            return
        chunks: list[np.ndarray] | None = []
        samples = 0
        limit = MAX_AUDIO_SECONDS * rate
        inner = iter(self.inner.synthesize(text, speed, **options))
        try:
            for chunk in inner:
                if chunks is not None:
                    a = np.array(chunk, dtype=np.float32)  # a copy: the voice may reuse its buffer
                    samples += a.size
                    if a.ndim == 2 and 1 in a.shape:
                        a = a.reshape(-1)
                    chunks = chunks if a.ndim == 1 and samples <= limit else None  # not storable
                    if chunks is not None:
                        chunks.append(a)
                yield chunk
        finally:
            close = getattr(inner, "close", None)
            if close is not None:
                close()
        # Only reached when the inner voice finished: an exception or close() above skips this.
        if chunks and samples:
            cache.put_audio(key, speed, text, np.concatenate(chunks), rate)

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet (copy, unpickling): no endless recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._OWN:
            object.__setattr__(self, name, value)
        else:
            setattr(self.inner, name, value)


# -- helpers ---------------------------------------------------------------------------------------


class _transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error) on an autocommit connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")  # take the write lock now: no upgrade deadlock later

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self.conn.execute("COMMIT")
                return
            except sqlite3.Error:
                _rollback(self.conn)  # e.g. a full disk at commit: leave no transaction open
                raise
        _rollback(self.conn)


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass


def _key(kind: str, *parts: str) -> bytes:
    """A 128-bit hash of the whole key: long texts cost the index no more than short ones."""
    h = hashlib.blake2b(digest_size=16)
    for part in (_KEY_PREFIX, kind, *parts):
        data = str(part).encode("utf-8", "surrogatepass")
        h.update(len(data).to_bytes(8, "little"))  # lengths first: ("ab", "c") != ("a", "bc")
        h.update(data)
    return h.digest()


def _speed_key(speed: float) -> str:
    return f"{float(speed):.4g}"


def _is_corrupt(err: BaseException) -> bool:
    code = getattr(err, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _CORRUPT_CODES
    text = str(err).lower()
    return "not a database" in text or "malformed" in text
