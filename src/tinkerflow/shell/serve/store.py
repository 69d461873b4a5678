"""The server's durable records: sessions, training runs, sampling sessions, futures and checkpoints. (Shell.)

One SQLite file (``<store>/server.sqlite3``, Python's built-in :mod:`sqlite3`, WAL journal) holds everything a
client may ask about after a restart. Checkpoint *files* live beside it, under ``<store>/checkpoints`` (the local
backend's layout). Finished futures keep their encoded payload (JSON or protobuf bytes), so a client that polls
after a restart still gets its answer; futures that were pending when the server stopped are marked failed when
it starts again (their work is lost with the process), so nobody waits on them forever.

Every method takes the one connection lock: the server calls the store from its event loop and from worker
threads, and SQLite connections are not shared across threads without it. Writes commit immediately.
"""

from __future__ import annotations

import json
import pathlib
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Final, Literal, TypeAlias

import attrs

__all__ = [
    "CheckpointRecord",
    "FutureRecord",
    "FutureState",
    "ModelRecord",
    "SamplerRecord",
    "SessionRecord",
    "Store",
]

FutureState: TypeAlias = Literal["pending", "done", "failed"]
RESTART_ERROR: Final = (
    "the tinkerflow server restarted while this request was in flight, so its work was lost; "
    "resubmit it (a training run resumes from its last checkpoint: create_training_client_from_state)."
)

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY, created REAL NOT NULL, last_heartbeat REAL NOT NULL,
    tags TEXT NOT NULL, user_metadata TEXT, sdk_version TEXT NOT NULL, finished INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS models (
    model_id TEXT PRIMARY KEY, session_id TEXT NOT NULL, model_seq_id INTEGER, base_model TEXT NOT NULL,
    lora_rank INTEGER, is_lora INTEGER NOT NULL, created REAL NOT NULL, user_metadata TEXT,
    last_checkpoint TEXT, last_sampler_checkpoint TEXT, live INTEGER NOT NULL DEFAULT 1);
CREATE TABLE IF NOT EXISTS samplers (
    sampler_id TEXT PRIMARY KEY, session_id TEXT NOT NULL, base_model TEXT NOT NULL, model_path TEXT,
    created REAL NOT NULL, from_run INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS futures (
    request_id TEXT PRIMARY KEY, owner TEXT NOT NULL, seq_id INTEGER, kind TEXT NOT NULL, state TEXT NOT NULL,
    content_type TEXT, payload BLOB, error TEXT, category TEXT, created REAL NOT NULL, finished REAL);
CREATE UNIQUE INDEX IF NOT EXISTS futures_by_seq ON futures(owner, seq_id) WHERE seq_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS checkpoints (
    tinker_path TEXT PRIMARY KEY, model_id TEXT NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL,
    created REAL NOT NULL, size_bytes INTEGER, expires_at REAL, public INTEGER NOT NULL DEFAULT 0);
"""


@attrs.frozen
class SessionRecord:
    session_id: str
    created: float
    last_heartbeat: float
    tags: tuple[str, ...]
    user_metadata: Mapping[str, object] | None
    sdk_version: str
    finished: bool


@attrs.frozen
class ModelRecord:
    """A training run. ``live`` is false once the process that held its weights is gone (a restart)."""

    model_id: str
    session_id: str
    model_seq_id: int | None
    base_model: str
    lora_rank: int | None
    is_lora: bool
    created: float
    user_metadata: Mapping[str, object] | None
    last_checkpoint: str | None
    last_sampler_checkpoint: str | None
    live: bool


@attrs.frozen
class SamplerRecord:
    """A sampling session. ``from_run``: it held a training run's in-memory weights (gone after a restart)."""

    sampler_id: str
    session_id: str
    base_model: str
    model_path: str | None
    created: float
    from_run: bool = False


@attrs.frozen
class FutureRecord:
    request_id: str
    owner: str
    seq_id: int | None
    kind: str
    state: FutureState
    content_type: str | None
    payload: bytes | None
    error: str | None
    category: str | None


@attrs.frozen
class CheckpointRecord:
    tinker_path: str
    model_id: str
    kind: str
    name: str
    created: float
    size_bytes: int | None
    expires_at: float | None
    public: bool


def _json(value: Mapping[str, object] | None) -> str | None:
    return None if value is None else json.dumps(dict(value), sort_keys=True)


def _unjson(text: str | None) -> Mapping[str, object] | None:
    if text is None:
        return None
    value = json.loads(text)
    return value if isinstance(value, dict) else None


class Store:
    """The SQLite file of one server (see the module docstring)."""

    def __init__(self, path: str | pathlib.Path) -> None:
        self.path = pathlib.Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _one(self, sql: str, args: tuple[object, ...]) -> tuple[object, ...] | None:
        with self._lock:
            row: tuple[object, ...] | None = self._db.execute(sql, args).fetchone()
            return row

    def _all(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        with self._lock:
            return list(self._db.execute(sql, args).fetchall())

    # -- startup --------------------------------------------------------------------------------------------------

    def recover(self) -> int:
        """After a restart: fail the futures left pending and mark every training run as not live (its weights
        were in the old process). Returns how many futures were failed."""
        now = time.time()
        with self._tx() as db:
            cursor = db.execute(
                "UPDATE futures SET state='failed', error=?, category='server', finished=? WHERE state='pending'",
                (RESTART_ERROR, now),
            )
            db.execute("UPDATE models SET live=0")
            return cursor.rowcount

    # -- sessions -------------------------------------------------------------------------------------------------

    def add_session(
        self, session_id: str, tags: tuple[str, ...], user_metadata: Mapping[str, object] | None, sdk_version: str
    ) -> None:
        now = time.time()
        with self._tx() as db:
            db.execute(
                "INSERT INTO sessions VALUES (?, ?, ?, ?, ?, ?, 0)",
                (session_id, now, now, json.dumps(list(tags)), _json(user_metadata), sdk_version),
            )

    def heartbeat(self, session_id: str) -> bool:
        """Record a heartbeat; ``False`` if the session does not exist."""
        with self._tx() as db:
            cursor = db.execute("UPDATE sessions SET last_heartbeat=? WHERE session_id=?", (time.time(), session_id))
            return cursor.rowcount == 1

    def finish_session(self, session_id: str) -> bool:
        with self._tx() as db:
            cursor = db.execute("UPDATE sessions SET finished=1 WHERE session_id=?", (session_id,))
            return cursor.rowcount == 1

    def stale_sessions(self, last_heartbeat_before: float) -> list[str]:
        """Open sessions whose last heartbeat is older than the given time."""
        rows = self._all(
            "SELECT session_id FROM sessions WHERE finished=0 AND last_heartbeat<?", (last_heartbeat_before,)
        )
        return [str(row[0]) for row in rows]

    def mark_not_live(self, model_ids: list[str]) -> None:
        with self._tx() as db:
            db.executemany("UPDATE models SET live=0 WHERE model_id=?", [(model_id,) for model_id in model_ids])

    def session(self, session_id: str) -> SessionRecord | None:
        row = self._one("SELECT * FROM sessions WHERE session_id=?", (session_id,))
        return None if row is None else _session(row)

    def sessions(self, limit: int, offset: int) -> list[SessionRecord]:
        rows = self._all("SELECT * FROM sessions ORDER BY created DESC LIMIT ? OFFSET ?", (limit, offset))
        return [_session(row) for row in rows]

    # -- training runs and samplers -------------------------------------------------------------------------------

    def add_model(self, record: ModelRecord) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO models VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.model_id,
                    record.session_id,
                    record.model_seq_id,
                    record.base_model,
                    record.lora_rank,
                    int(record.is_lora),
                    record.created,
                    _json(record.user_metadata),
                    record.last_checkpoint,
                    record.last_sampler_checkpoint,
                    int(record.live),
                ),
            )

    def model(self, model_id: str) -> ModelRecord | None:
        row = self._one("SELECT * FROM models WHERE model_id=?", (model_id,))
        return None if row is None else _model(row)

    def models(self, limit: int, offset: int) -> tuple[list[ModelRecord], int]:
        rows = self._all("SELECT * FROM models ORDER BY created DESC LIMIT ? OFFSET ?", (limit, offset))
        total = self._one("SELECT COUNT(*) FROM models", ())
        return [_model(row) for row in rows], int(str(total[0])) if total else 0

    def models_of_session(self, session_id: str) -> list[str]:
        return [str(row[0]) for row in self._all("SELECT model_id FROM models WHERE session_id=?", (session_id,))]

    def add_sampler(self, record: SamplerRecord) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO samplers VALUES (?, ?, ?, ?, ?, ?)",
                (
                    record.sampler_id,
                    record.session_id,
                    record.base_model,
                    record.model_path,
                    record.created,
                    int(record.from_run),
                ),
            )

    def sampler(self, sampler_id: str) -> SamplerRecord | None:
        row = self._one("SELECT * FROM samplers WHERE sampler_id=?", (sampler_id,))
        if row is None:
            return None
        return SamplerRecord(str(row[0]), str(row[1]), str(row[2]), _opt_str(row[3]), float(str(row[4])), bool(row[5]))

    def samplers_of_session(self, session_id: str) -> list[str]:
        return [str(row[0]) for row in self._all("SELECT sampler_id FROM samplers WHERE session_id=?", (session_id,))]

    # -- futures --------------------------------------------------------------------------------------------------

    def add_future(self, request_id: str, owner: str, seq_id: int | None, kind: str) -> str | None:
        """Record a new pending future. If ``(owner, seq_id)`` was already submitted (a client retrying a request
        whose answer it lost), nothing is added and the earlier request's id is returned instead."""
        with self._tx() as db:
            if seq_id is not None:
                row = db.execute(
                    "SELECT request_id FROM futures WHERE owner=? AND seq_id=?", (owner, seq_id)
                ).fetchone()
                if row is not None:
                    return str(row[0])
            db.execute(
                "INSERT INTO futures (request_id, owner, seq_id, kind, state, created) "
                "VALUES (?, ?, ?, ?, 'pending', ?)",
                (request_id, owner, seq_id, kind, time.time()),
            )
            return None

    def finish_future(self, request_id: str, content_type: str, payload: bytes) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE futures SET state='done', content_type=?, payload=?, finished=? WHERE request_id=?",
                (content_type, payload, time.time(), request_id),
            )

    def fail_future(self, request_id: str, error: str, category: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE futures SET state='failed', error=?, category=?, finished=? WHERE request_id=?",
                (error, category, time.time(), request_id),
            )

    def prune_futures(self, finished_before: float) -> int:
        """Delete the answers of futures that finished before the given time; returns how many."""
        with self._tx() as db:
            cursor = db.execute("DELETE FROM futures WHERE state!='pending' AND finished<?", (finished_before,))
            return cursor.rowcount

    def discard_future(self, request_id: str) -> None:
        """Remove a future whose work never started (its submission was refused)."""
        with self._tx() as db:
            db.execute("DELETE FROM futures WHERE request_id=?", (request_id,))

    def future(self, request_id: str) -> FutureRecord | None:
        row = self._one(
            "SELECT request_id, owner, seq_id, kind, state, content_type, payload, error, category FROM futures "
            "WHERE request_id=?",
            (request_id,),
        )
        if row is None:
            return None
        state: FutureState
        if row[4] == "pending":
            state = "pending"
        elif row[4] == "done":
            state = "done"
        else:
            state = "failed"
        payload = row[6]
        return FutureRecord(
            request_id=str(row[0]),
            owner=str(row[1]),
            seq_id=None if row[2] is None else int(str(row[2])),
            kind=str(row[3]),
            state=state,
            content_type=_opt_str(row[5]),
            payload=bytes(payload) if isinstance(payload, bytes | bytearray | memoryview) else None,
            error=_opt_str(row[7]),
            category=_opt_str(row[8]),
        )

    # -- checkpoints ----------------------------------------------------------------------------------------------

    def add_checkpoint(self, record: CheckpointRecord) -> None:
        column = {"weights": "last_checkpoint", "sampler_weights": "last_sampler_checkpoint"}.get(record.kind)
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.tinker_path,
                    record.model_id,
                    record.kind,
                    record.name,
                    record.created,
                    record.size_bytes,
                    record.expires_at,
                    int(record.public),
                ),
            )
            if column is not None:  # an external export is not the run's last checkpoint
                db.execute(f"UPDATE models SET {column}=? WHERE model_id=?", (record.tinker_path, record.model_id))

    def checkpoint(self, tinker_path: str) -> CheckpointRecord | None:
        row = self._one("SELECT * FROM checkpoints WHERE tinker_path=?", (tinker_path,))
        return None if row is None else _checkpoint(row)

    def checkpoints(
        self, model_id: str | None, limit: int = 1000, offset: int = 0
    ) -> tuple[list[CheckpointRecord], int]:
        where, args = ("WHERE model_id=?", (model_id,)) if model_id is not None else ("", ())
        rows = self._all(
            f"SELECT * FROM checkpoints {where} ORDER BY created DESC LIMIT ? OFFSET ?", (*args, limit, offset)
        )
        total = self._one(f"SELECT COUNT(*) FROM checkpoints {where}", args)
        return [_checkpoint(row) for row in rows], int(str(total[0])) if total else 0

    def update_checkpoint(self, tinker_path: str, *, public: bool) -> bool:
        with self._tx() as db:
            cursor = db.execute("UPDATE checkpoints SET public=? WHERE tinker_path=?", (int(public), tinker_path))
            return cursor.rowcount == 1

    def set_checkpoint_ttl(self, tinker_path: str, ttl_seconds: int | None) -> None:
        """Expire the checkpoint ``ttl_seconds`` from now (the SDK's meaning), or never for ``None``."""
        expires = None if ttl_seconds is None else time.time() + ttl_seconds
        with self._tx() as db:
            db.execute("UPDATE checkpoints SET expires_at=? WHERE tinker_path=?", (expires, tinker_path))

    def delete_checkpoint(self, tinker_path: str) -> bool:
        with self._tx() as db:
            cursor = db.execute("DELETE FROM checkpoints WHERE tinker_path=?", (tinker_path,))
            for column in ("last_checkpoint", "last_sampler_checkpoint"):
                db.execute(f"UPDATE models SET {column}=NULL WHERE {column}=?", (tinker_path,))
            return cursor.rowcount == 1


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


def _session(row: tuple[object, ...]) -> SessionRecord:
    tags = json.loads(str(row[3]))
    return SessionRecord(
        session_id=str(row[0]),
        created=float(str(row[1])),
        last_heartbeat=float(str(row[2])),
        tags=tuple(str(tag) for tag in tags) if isinstance(tags, list) else (),
        user_metadata=_unjson(_opt_str(row[4])),
        sdk_version=str(row[5]),
        finished=bool(row[6]),
    )


def _model(row: tuple[object, ...]) -> ModelRecord:
    return ModelRecord(
        model_id=str(row[0]),
        session_id=str(row[1]),
        model_seq_id=None if row[2] is None else int(str(row[2])),
        base_model=str(row[3]),
        lora_rank=None if row[4] is None else int(str(row[4])),
        is_lora=bool(row[5]),
        created=float(str(row[6])),
        user_metadata=_unjson(_opt_str(row[7])),
        last_checkpoint=_opt_str(row[8]),
        last_sampler_checkpoint=_opt_str(row[9]),
        live=bool(row[10]),
    )


def _checkpoint(row: tuple[object, ...]) -> CheckpointRecord:
    return CheckpointRecord(
        tinker_path=str(row[0]),
        model_id=str(row[1]),
        kind=str(row[2]),
        name=str(row[3]),
        created=float(str(row[4])),
        size_bytes=None if row[5] is None else int(str(row[5])),
        expires_at=None if row[6] is None else float(str(row[6])),
        public=bool(row[7]),
    )
