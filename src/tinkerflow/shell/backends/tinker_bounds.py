"""Time bounds of :class:`~tinkerflow.shell.backends.tinker.TinkerBackend` (shell): key and reachability checks
before the first call, a deadline and progress messages on every call, the SDK's errors typed.

See the module docstring of :mod:`tinkerflow.shell.backends.tinker` for what a user sees. The SDK retries
transient errors itself (its HTTP client, then a 5-minute loop), so nothing here retries an SDK call: only the
reachability check (tinkerflow's own request) is retried with backoff.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from typing import Any, Final, TypeVar

import attrs

from tinkerflow.errors import ConfigError, TinkerflowError, ValidationError
from tinkerflow.shell.backends.protocol import APIFuture, waiting_future

__all__ = [
    "CALL_TIMEOUT_ENV",
    "CALL_TIMEOUT_S",
    "CONNECT_TIMEOUT_ENV",
    "CONNECT_TIMEOUT_S",
    "PROGRESS_EVERY_S",
    "CallWatch",
    "TinkerServiceError",
    "TinkerTimeoutError",
    "blocking",
    "checked_key",
    "checkpoint_path",
    "create",
    "from_sdk",
    "resolved_url",
    "seconds_setting",
    "send",
    "typed_sdk_error",
    "wait_for_service",
]

logger = logging.getLogger("tinkerflow.shell.backends.tinker")  # the backend's messages, under its name

T = TypeVar("T")
U = TypeVar("U")

#: Seconds a backend that creates its own ``ServiceClient`` waits for the service to answer before giving up.
CONNECT_TIMEOUT_S: Final = 30.0
#: Seconds one call may take, the SDK's retries included.
CALL_TIMEOUT_S: Final = 900.0
#: Seconds between the warnings that say what a pending call waits for.
PROGRESS_EVERY_S: Final = 30.0
#: Environment variables that set ``connect_timeout_s`` / ``call_timeout_s`` when they are not given (the CLI).
CONNECT_TIMEOUT_ENV: Final = "TINKERFLOW_CONNECT_TIMEOUT_S"
CALL_TIMEOUT_ENV: Final = "TINKERFLOW_CALL_TIMEOUT_S"
_WHERE: Final = "TinkerBackend"
_FIRST_BACKOFF_S: Final = 0.5
_MAX_BACKOFF_S: Final = 8.0
_KEY_PREFIXES: Final = ("tml-", "eyJ")  # what the SDK accepts: an API key, or a JWT
_URL_FIX: Final = "start it (`tinkerflow serve`) or set TINKER_BASE_URL (base_url=) to where it runs."


class TinkerServiceError(TinkerflowError):
    """The Tinker service could not be used for a call (it went away, after the SDK's own retries)."""


class TinkerTimeoutError(TinkerServiceError, TimeoutError):
    """A Tinker call did not finish within the backend's ``call_timeout_s`` (the SDK's retries included).

    Attributes:
        what: the call (``"forward_backward"``, ``"sample"``, ...).
        base_url: the service it waited for.
        seconds: the limit.
    """

    def __init__(self, what: str, base_url: str, seconds: float) -> None:
        self.what, self.base_url, self.seconds = what, base_url, seconds
        super().__init__(
            f"{what}: no answer from the Tinker service at {base_url} within {seconds:g} s (call_timeout_s). "
            f"Fix: check the service (its status, or that `tinkerflow serve` runs), then resume the run (it "
            f"continues from its last checkpoint); raise {CALL_TIMEOUT_ENV} if calls are this slow on purpose."
        )


def seconds_setting(value: object, field: str, default: float) -> float:
    """A positive, finite number of seconds: ``value``, else the environment variable ``field`` names when set
    (``TinkerBackend.connect_timeout_s`` <- ``TINKERFLOW_CONNECT_TIMEOUT_S``), else ``default``."""
    env = {"connect_timeout_s": CONNECT_TIMEOUT_ENV, "call_timeout_s": CALL_TIMEOUT_ENV}.get(field)
    source = field
    if value is None and env is not None and os.environ.get(env, "").strip():
        text = os.environ[env].strip()
        source = env
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(
                _WHERE, env, f"is {text!r}, not a number of seconds.", f"set it to e.g. {default:g}."
            ) from None
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ConfigError(_WHERE, source, f"must be a positive number of seconds, got {value!r}.")
    return float(value)


def _stored_key() -> bool:
    """Whether ``tinker auth login`` stored a default key (an unreadable store counts as none)."""
    try:
        from tinker.lib import credentials

        store = credentials.JsonCredentialStore(credentials.default_credentials_path())
        return store.get_default_key() is not None
    except Exception:
        return False


def checked_key(api_key: object) -> str | None:
    """The key to send (``api_key``, else ``$TINKER_API_KEY``), checked; ``None`` when the SDK has another
    credential (``TINKER_CREDENTIAL_CMD`` or a stored key). The key itself is never shown in an error."""
    field = "api_key"
    if api_key is None:
        api_key = os.environ.get("TINKER_API_KEY") or None
        field = "TINKER_API_KEY"
    fix = "set TINKER_API_KEY (or api_key=) to your Tinker key alone (for `tinkerflow serve`, the key it prints)."
    if api_key is None:
        if os.environ.get("TINKER_CREDENTIAL_CMD") or _stored_key():
            return None
        raise ConfigError(_WHERE, "api_key", "no Tinker API key: TINKER_API_KEY is not set and none is stored.", fix)
    if not isinstance(api_key, str):
        raise ConfigError(_WHERE, field, f"must be a string, got {type(api_key).__name__}.", fix)
    if not api_key:
        raise ConfigError(_WHERE, field, "is empty.", fix)
    if not api_key.isascii() or not api_key.isprintable() or any(char.isspace() for char in api_key):
        raise ConfigError(_WHERE, field, "holds whitespace, control or non-ASCII characters (a copy-paste slip?).", fix)
    if not api_key.startswith(_KEY_PREFIXES) or api_key in _KEY_PREFIXES:
        raise ConfigError(_WHERE, field, "is not a Tinker key (a Tinker key is 'tml-' followed by more).", fix)
    return api_key


def typed_sdk_error(error: BaseException, what: str, base_url: str) -> BaseException:
    """The SDK's error as tinkerflow's when it is about the key or the connection; any other error unchanged."""
    try:
        import tinker
    except ImportError:  # pragma: no cover - the backend is only used with the SDK installed
        return error
    if isinstance(error, tinker.AuthenticationError | tinker.PermissionDeniedError):
        typed: BaseException = ConfigError(
            _WHERE,
            "api_key",
            f"the Tinker service at {base_url} refused the key for {what} (HTTP {error.status_code}).",
            "set TINKER_API_KEY (or api_key=) to a key this service accepts.",
        )
    elif isinstance(error, tinker.APIConnectionError):
        typed = TinkerServiceError(
            f"{what}: lost the Tinker service at {base_url} after the SDK's retries ({type(error).__name__}: "
            f"{error}). Fix: check that it runs, then resume the run (it continues from its last checkpoint)."
        )
    else:
        return error
    typed.__cause__ = error
    return typed


def _settle(
    target: concurrent.futures.Future[Any], source: concurrent.futures.Future[Any], what: str, url: str
) -> None:
    """Copy ``source``'s outcome to ``target`` unless ``target`` is settled already (it timed out)."""
    if source.cancelled():
        target.cancel()
        return
    error = source.exception()
    try:
        if error is not None:
            target.set_exception(typed_sdk_error(error, what, url))
        else:
            target.set_result(source.result())
    except concurrent.futures.InvalidStateError:  # timed out first: the late answer is dropped
        pass


@attrs.define
class _Pending:
    what: str
    started: float
    report_at: float
    deadline: float
    target: concurrent.futures.Future[Any]


class CallWatch:
    """Bounds a backend's calls and says what a slow one waits for (see the module docstring).

    One daemon thread runs while calls are pending; each watched call's future becomes a new future that fails
    with :class:`TinkerTimeoutError` at its deadline, or settles with the call.
    """

    def __init__(self, base_url: str, call_timeout_s: float, progress_every_s: float) -> None:
        self.base_url = base_url
        self.call_timeout_s = call_timeout_s
        self.progress_every_s = progress_every_s
        self._condition = threading.Condition()
        self._pending: dict[int, _Pending] = {}
        self._count = 0
        self._thread: threading.Thread | None = None

    def watch(self, what: str, source: concurrent.futures.Future[T]) -> concurrent.futures.Future[T]:
        """A future that settles with ``source`` or fails with :class:`TinkerTimeoutError` past the limit."""
        target: concurrent.futures.Future[T] = concurrent.futures.Future()
        now = time.monotonic()
        entry = _Pending(what, now, now + self.progress_every_s, now + self.call_timeout_s, target)
        with self._condition:
            key = self._count
            self._count += 1
            self._pending[key] = entry
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="tinkerflow-tinker-watch", daemon=True)
                self._thread.start()
            self._condition.notify()

        def done(finished: concurrent.futures.Future[T]) -> None:
            with self._condition:
                self._pending.pop(key, None)
            _settle(target, finished, what, self.base_url)

        source.add_done_callback(done)
        return target

    def call(self, what: str, fn: Callable[[], U]) -> U:
        """``fn()`` (a blocking SDK call) on a daemon thread, bounded like any watched call."""
        source: concurrent.futures.Future[U] = waiting_future(fn).future()
        return self.watch(what, source).result()

    def _run(self) -> None:
        while True:
            expired: list[_Pending] = []
            waiting: list[_Pending] = []
            with self._condition:
                if not self._pending:
                    self._thread = None
                    return
                now = time.monotonic()
                for key, entry in list(self._pending.items()):
                    if now >= entry.deadline:
                        del self._pending[key]
                        expired.append(entry)
                    elif now >= entry.report_at:
                        entry.report_at = now + self.progress_every_s
                        waiting.append(entry)
                wake = min((min(e.deadline, e.report_at) for e in self._pending.values()), default=now)
                if not expired and not waiting:
                    self._condition.wait(max(wake - now, 0.001))
                    continue
            for entry in waiting:  # outside the lock: logging and callbacks may take a while
                logger.warning(
                    "still waiting for %s from the Tinker service at %s: %.0f s so far (gives up after %g s)",
                    entry.what,
                    self.base_url,
                    now - entry.started,
                    self.call_timeout_s,
                )
            for entry in expired:
                error = TinkerTimeoutError(entry.what, self.base_url, self.call_timeout_s)
                with contextlib.suppress(concurrent.futures.InvalidStateError):  # it finished at the same moment
                    entry.target.set_exception(error)


def from_sdk(
    sdk_future: object, convert: Callable[[Any], U], watch: CallWatch | None = None, what: str = "a call"
) -> APIFuture[U]:
    """An :class:`APIFuture` of ``convert(result)`` for an SDK future (anything with ``.future()`` or ``.result()``),
    bounded by ``watch`` when given. (``convert`` takes ``Any``: the SDK's results are untyped at this boundary, and
    each converter names the SDK type it reads.)"""
    raw: APIFuture[Any] | None = None
    future_method = getattr(sdk_future, "future", None)
    if callable(future_method):
        inner = future_method()
        if isinstance(inner, concurrent.futures.Future):
            raw = APIFuture(inner)
    if raw is None:
        result_method = getattr(sdk_future, "result", None)
        raw = waiting_future(result_method) if callable(result_method) else APIFuture.completed(sdk_future)
    if watch is not None:
        raw = APIFuture(watch.watch(what, raw.future()))
    return raw.map(convert)


def send(
    watch: CallWatch | None, what: str, request: Callable[[], object], convert: Callable[[Any], U]
) -> APIFuture[U]:
    """Send ``request()`` (an SDK call returning a future) and wrap its future; an SDK error raised at once is
    raised typed (:func:`_typed`)."""
    try:
        sdk_future = request()
    except Exception as error:
        typed = typed_sdk_error(error, what, watch.base_url if watch is not None else "the Tinker service")
        if typed is error:
            raise
        raise typed from error
    return from_sdk(sdk_future, convert, watch, what)


def create(watch: CallWatch, what: str, request: Callable[[], object], convert: Callable[[Any], U]) -> APIFuture[U]:
    """A ``ServiceClient`` call that makes a client: sent *and* awaited on a daemon thread, bounded by ``watch``.

    The SDK may block in the call itself (the first one of a session waits for the service, retrying for
    minutes, before it returns a future), so the caller's thread never makes it.
    """

    def run() -> object:
        sdk_future = request()
        result = getattr(sdk_future, "result", None)
        return result() if callable(result) else sdk_future

    return APIFuture(watch.watch(what, waiting_future(run).future())).map(convert)


def blocking(watch: CallWatch | None, what: str, fn: Callable[[], U]) -> U:
    """A blocking SDK call, bounded by ``watch`` when given."""
    if watch is None:
        return fn()
    try:
        return watch.call(what, fn)
    except Exception as error:
        typed = typed_sdk_error(error, what, watch.base_url)
        if typed is error:
            raise
        raise typed from error


def _ask(url: str, key: str | None, timeout: float) -> str | None:
    """One health check of ``url``: ``None`` when the service answers (and takes the key), else why not (worth a
    retry).

    Raises:
        ConfigError: on ``base_url`` for a URL no retry can reach, on ``api_key`` when the service refuses the key.
    """
    import httpx

    headers = {"X-API-Key": key} if key else {}
    try:
        response = httpx.get(f"{url}/api/v1/healthz", headers=headers, timeout=timeout)
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as error:
        raise ConfigError(
            _WHERE, "base_url", f"{url!r} is not an http(s) URL ({error}).", "write it as http://host:port."
        ) from error
    except httpx.HTTPError as error:
        return f"{type(error).__name__}: {error}"
    if key and response.status_code in (401, 403):
        raise ConfigError(
            _WHERE,
            "api_key",
            f"the Tinker service at {url} refuses the key (HTTP {response.status_code}).",
            "set TINKER_API_KEY (or api_key=) to a key this service accepts (`tinkerflow serve` prints its key).",
        )
    if response.status_code >= 500:
        return f"HTTP {response.status_code}"
    return None


def wait_for_service(url: str, key: str | None, limit: float) -> None:
    """Ask ``url``'s ``/api/v1/healthz`` (with ``key``) until it answers, retrying with backoff (0.5 s doubling to
    8 s) for at most ``limit`` seconds, each wait logged.

    Raises:
        ConfigError: on ``base_url`` when nothing answers within ``limit`` (or the URL is no http(s) URL), on
            ``api_key`` when the service refuses the key (at once: no retry helps).
    """
    deadline = time.monotonic() + limit
    delay, attempt = _FIRST_BACKOFF_S, 0
    while True:
        attempt += 1
        remaining = max(deadline - time.monotonic(), 0.05)
        check = waiting_future(functools.partial(_ask, url, key, remaining))
        try:  # httpx bounds each phase (connect, read) by ``remaining``; this bounds them all together
            detail = check.result(timeout=remaining + 0.5)
        except concurrent.futures.TimeoutError:
            detail = f"no answer within {remaining:.1f} s"
        if detail is None:
            return
        left = deadline - time.monotonic()
        if left <= 0:
            raise ConfigError(
                _WHERE,
                "base_url",
                f"no Tinker service answers at {url} within {limit:g} s ({attempt} attempts; last: {detail}).",
                f"{_URL_FIX} ({CONNECT_TIMEOUT_ENV} sets how long to wait.)",
            )
        pause = min(delay, left)
        logger.warning(
            "waiting for the Tinker service at %s (attempt %d: %s); retrying in %.1f s, giving up after %g s",
            url,
            attempt,
            detail,
            pause,
            limit,
        )
        time.sleep(pause)
        delay = min(delay * 2, _MAX_BACKOFF_S)


def resolved_url(base_url: str | None) -> str:
    """``base_url``, else ``$TINKER_BASE_URL``, else the Tinker service's (the SDK's own resolution)."""
    try:
        from tinker.lib.base_url import resolve_base_url
    except ImportError:  # pragma: no cover - the backend is only used with the SDK installed
        return (base_url or os.environ.get("TINKER_BASE_URL") or "the Tinker service").rstrip("/")
    return resolve_base_url(base_url)


# -- checkpoints through the SDK's RestClient ------------------------------------------------------------------------


def checkpoint_path(path: object, where: str) -> str:
    """``path`` when it is ``tinker://<run id>/<weights|sampler_weights|external_weights>/<name>``, else a
    :class:`ValidationError` naming ``where.path``."""
    parts = path.removeprefix("tinker://").split("/") if isinstance(path, str) and path.startswith("tinker://") else []
    if len(parts) != 3 or not all(parts) or parts[1] not in ("weights", "sampler_weights", "external_weights"):
        raise ValidationError(
            where, "path", f"{path!r} is not tinker://<run id>/<weights|sampler_weights>/<name>.",
            "pass a path that save_state or save_weights_for_sampler returned.",
        )  # fmt: skip
    return str(path)
