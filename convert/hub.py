"""Downloads from the Hugging Face hub for the converters: one quick reachability check first, so that
a machine without a network gets one clear line at once instead of the hub client's retry loop
(5 retries over ~24 s, each logged) and its traceback.

Without a network, a model already in the hub's local cache is still used.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

logger = logging.getLogger("mlx_stream_tts.convert.hub")

#: Seconds the reachability check waits for a TCP connection to the hub (or the proxy).
CONNECT_TIMEOUT = 3.0
_T = TypeVar("_T")


class DownloadError(RuntimeError):
    """A model could not be downloaded; the message is one line that says what to do."""


def no_network_message(repo: str, why: str) -> str:
    return f"cannot download {repo}: no network ({why}); download it elsewhere and pass the folder"


def network_problem(timeout: float = CONNECT_TIMEOUT) -> str | None:
    """Why the hub cannot be reached from here, or None when a TCP connection to it (or to the HTTPS
    proxy in the environment) opens within ``timeout`` seconds. ``HF_HUB_OFFLINE=1`` counts as no network."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    proxy = next((os.environ[k] for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy") if os.environ.get(k)), "")
    target = urlsplit(proxy if proxy else endpoint)
    host = target.hostname or ""
    if not host:
        return f"no host in {proxy or endpoint!r}"
    port = target.port or (443 if target.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except socket.gaierror as err:
        return f"cannot resolve {host}: {err.strerror or err}"
    except OSError as err:  # refused, unreachable, timed out
        return f"cannot connect to {host}:{port}: {err.strerror or err or 'timed out'}"


def quiet_hub_logging() -> None:
    """Let the hub client's log records through the application's handlers only.

    huggingface_hub puts its own stderr handler on its logger and lets records propagate too, so under
    a configured root logger (``mlx-stream-tts -v``) each of its messages was printed twice.
    """
    hub_logger = logging.getLogger("huggingface_hub")
    for handler in list(hub_logger.handlers):
        if type(handler) is logging.StreamHandler:
            hub_logger.removeHandler(handler)


def hub_call(repo: str, fetch: Callable[..., _T], cached: Callable[[], _T] | None = None) -> _T:
    """``fetch()`` (a download) when the hub is reachable, else ``cached()`` (the same, from the local hub
    cache only); any failure becomes one :class:`DownloadError` line.

    Args:
        repo: the hub id, for the messages.
        fetch: the download.
        cached: the download with ``local_files_only=True``; None: nothing to try offline.
    """
    quiet_hub_logging()
    why = network_problem()
    if why is not None:
        if cached is not None:
            try:
                found = cached()
            except Exception:  # not (completely) in the local cache
                pass
            else:
                logger.warning("no network (%s): using the copy of %s in the Hugging Face cache", why, repo)
                return found
        raise DownloadError(no_network_message(repo, why))
    try:
        return fetch()
    except Exception as err:  # the hub client raises many kinds (HTTP errors, network errors, missing repos)
        raise DownloadError(f"cannot download {repo}: {_reason(err)}") from None


def _reason(err: Exception) -> str:
    name = type(err).__name__
    if name == "RepositoryNotFoundError":
        return "no such model on the hub (or it is private: log in with `hf auth login`)"
    if name in ("RevisionNotFoundError", "EntryNotFoundError", "RemoteEntryNotFoundError"):
        return f"{name.removesuffix('Error').lower().replace('notfound', ' not found')}"
    text = " ".join(str(err).split())
    return f"{name}: {text[:200]}" if text else name
