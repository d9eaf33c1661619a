"""The results store: one row per run of an experiment grid, in SQLite or PostgreSQL, safe for concurrent workers.

**Address.** A URL: ``sqlite:///runs.db`` (a path relative to the working directory), ``sqlite:////abs/runs.db``
(an absolute path: four slashes, as SQLAlchemy writes it), a plain file path (SQLite too), or
``postgresql://user[:password]@host[:port]/db`` (``postgres://`` and libpq's ``?host=/socket/dir`` work too). The
default of ``connprune run`` is ``<out>/runs.db``. SQLite runs in WAL mode with a 30 s busy timeout, for several
processes on one machine (not over a network file system); use PostgreSQL for several machines. PostgreSQL needs
the ``psycopg`` driver (``pip install 'psycopg[binary]'``), imported only when a ``postgresql://`` URL is used.

**One code path.** Both databases go through plain DB-API calls with the same SQL; the SQL is written once with
``?`` parameter markers and converted to ``%s`` for psycopg. Every call is one short transaction that commits at once.

**Rows.** Table ``connprune_runs`` has one row per (config hash, model, method, parameters, sparsity, seed), keyed
by the run key of :func:`connprune.experiments.config.run_key`. It holds the grid coordinates, the status
(``pending`` → ``running`` → ``done`` or ``failed``), who claimed it (``host:pid``), timestamps (ISO 8601, UTC),
a heartbeat, the main numbers of ``metrics.json`` as columns for querying, the full ``metrics.json`` as JSON text, the
error (for failed runs), and the versions that produced it (connprune, torch, Python, git commit).
``connprune_dense`` holds the dense models (accuracy, cost, training history); ``connprune_configs`` the configs.

**Claims.** A worker claims a run with one statement, ``UPDATE ... SET status='running', claimed_by=? WHERE key=?
AND status='pending'``, and owns it only if exactly one row changed. SQLite serialises writers; PostgreSQL makes a
second concurrent ``UPDATE`` of the row wait for the first to commit and then re-checks ``status='pending'``; either
way, two workers never both see a row count of one, so no run is claimed twice. Results are written with
``WHERE key=? AND claimed_by=? AND status='running'``, so a worker that lost its claim writes nothing.

**Stale claims** (a worker killed while running, e.g. by SIGKILL or a lost machine): :meth:`Store.reclaim`
(``connprune run --resume``) puts a ``running`` row back to ``pending`` when

1. it was claimed on this host and its process is gone (no such pid, or a zombie), or
2. its heartbeat is older than ``stale_after`` seconds (default 600; workers beat every 30 s), from any host.

Rule 2 covers other machines and reused pids; it trusts the clocks of the machines to agree to within
``stale_after``. The reset is a compare-and-set on (claimed_by, heartbeat), so a live worker that just beat keeps
its run. ``--resume`` also retries ``failed`` runs.

**Lost connections** (a PostgreSQL server restarted, a network drop): a statement that finds its connection lost
opens a new one and runs again (:data:`RECONNECT_DELAYS`); a write whose reply was lost with the connection is
confirmed by reading its row. The :class:`Heartbeat` drops a broken connection and opens a new one on its next beat,
so a worker keeps its claim through an outage shorter than ``stale_after``. Should the claim be lost anyway, the
worker re-checks it before it stores a result (:meth:`Store.holds`) and stores nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from connprune.errors import UserError
from connprune.utils.io import pid_alive

PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"
STATUSES = (PENDING, RUNNING, DONE, FAILED)
HEARTBEAT_SECONDS = 30.0
STALE_AFTER_SECONDS = 600.0

NUMERIC_COLUMNS = (
    "target_sparsity", "achieved_sparsity", "params_before", "params_after", "macs_before", "macs_after",
    "acc_before", "acc_pruned", "acc_after", "shift_acc_before", "shift_acc_after", "prune_seconds",
    "finetune_seconds", "wall_seconds",
)
"""Numbers copied from ``metrics.json`` into columns (``shift_acc_*``: the ``"mean"`` of the shift objects)."""

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS connprune_runs (
        key TEXT PRIMARY KEY,
        config_hash TEXT NOT NULL,
        model TEXT NOT NULL,
        method TEXT NOT NULL,
        label TEXT NOT NULL,
        params TEXT NOT NULL,
        sparsity TEXT NOT NULL,
        seed INTEGER NOT NULL,
        needs_trained INTEGER NOT NULL,
        status TEXT NOT NULL,
        claimed_by TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL,
        started_at TEXT,
        heartbeat_at DOUBLE PRECISION,
        finished_at TEXT,
        target_sparsity DOUBLE PRECISION,
        achieved_sparsity DOUBLE PRECISION,
        params_before BIGINT,
        params_after BIGINT,
        macs_before BIGINT,
        macs_after BIGINT,
        acc_before DOUBLE PRECISION,
        acc_pruned DOUBLE PRECISION,
        acc_after DOUBLE PRECISION,
        shift_acc_before DOUBLE PRECISION,
        shift_acc_after DOUBLE PRECISION,
        prune_seconds DOUBLE PRECISION,
        finetune_seconds DOUBLE PRECISION,
        wall_seconds DOUBLE PRECISION,
        metrics TEXT,
        error TEXT,
        output_dir TEXT,
        host TEXT,
        connprune_version TEXT,
        torch_version TEXT,
        python_version TEXT,
        git_commit TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS connprune_runs_by_config ON connprune_runs (config_hash, status)",
    """CREATE TABLE IF NOT EXISTS connprune_dense (
        key TEXT PRIMARY KEY,
        config_hash TEXT NOT NULL,
        model TEXT NOT NULL,
        seed INTEGER NOT NULL,
        accuracy DOUBLE PRECISION,
        params BIGINT,
        macs BIGINT,
        train_seconds DOUBLE PRECISION,
        metrics TEXT,
        output_dir TEXT,
        host TEXT,
        updated_at TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS connprune_configs (
        config_hash TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        config TEXT NOT NULL,
        created_at TEXT NOT NULL
    )""",
)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def worker_id() -> str:
    """``host:pid`` of this process: what ``claimed_by`` records."""
    return f"{socket.gethostname()}:{os.getpid()}"


@lru_cache(maxsize=1)
def versions() -> dict[str, str | None]:
    """connprune, torch and Python versions and the git commit of the source tree (``+dirty`` with local edits)."""
    import torch

    from connprune import __version__

    commit = None
    here = Path(__file__).resolve().parent
    try:
        top = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if top.returncode == 0:
            commit = top.stdout.strip()
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                   capture_output=True, text=True, timeout=10)
            if dirty.returncode == 0 and dirty.stdout.strip():
                commit += "+dirty"
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"connprune_version": __version__, "torch_version": torch.__version__,
            "python_version": platform.python_version(), "git_commit": commit}


def sanitize_url(url: str) -> str:
    """``url`` without its password (safe to print and to write into files)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}@{netloc[1]}"))


def default_url(out_dir: str | Path) -> str:
    return f"sqlite:///{Path(out_dir).resolve() / 'runs.db'}"


def _sqlite_path(url: str) -> Path | None:
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///"):])
    if url.startswith("sqlite://"):
        raise UserError(f"bad store URL {url!r}: write sqlite:///relative/runs.db or sqlite:////absolute/runs.db")
    if "://" not in url:
        return Path(url)
    return None


def _open_sqlite(path: Path) -> sqlite3.Connection:
    """A connection to the SQLite file at ``path`` in WAL mode with a 30 s busy timeout."""
    conn: sqlite3.Connection | None = None
    deadline = time.monotonic() + 60
    while True:  # switching to WAL needs a moment alone with the file: retry while another process has it
        try:
            conn = conn or sqlite3.connect(str(path), timeout=30.0, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 30000")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            return conn
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() > deadline:
                raise UserError(f"cannot open the SQLite results store {path}: {exc}; check the path and "
                                "that its folder is writable") from None
            time.sleep(0.1)
        except sqlite3.Error as exc:
            raise UserError(f"cannot open the SQLite results store {path}: {exc}; check the path and that "
                            "its folder is writable") from None


def _open_postgresql(url: str, display_url: str) -> Any:
    """A psycopg connection to ``url`` (a UserError naming what to check when the server cannot be reached)."""
    import psycopg

    try:
        return psycopg.connect(url, connect_timeout=30)
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot connect to the results store {display_url}: {first}; check the "
                        "host, port, user, database (and PGPASSWORD or ~/.pgpass), or start the server") from None


RECONNECT_DELAYS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)
"""Seconds to wait before each new connection when a statement finds its connection lost (15.5 s in all)."""


class Store:
    """A results store at ``url`` (see the module docstring). Use as a context manager or call :meth:`close`.

    A connection that is lost (a PostgreSQL server restarted, a network drop, a connection closed under the store)
    is replaced by a new one on the next statement, retried after ``reconnect_delays``; a statement that cannot get a
    connection within them raises. Callers whose statements must not wait (the heartbeat) pass ``()``.
    """

    def __init__(self, url: str, *, reconnect_delays: Sequence[float] = RECONNECT_DELAYS) -> None:
        self.url = url
        self.display_url = sanitize_url(url)
        self.reconnect_delays = tuple(reconnect_delays)
        self.reconnects = 0
        path = _sqlite_path(url)
        if path is not None:
            self.kind = "sqlite"
            if str(path) in ("", ":memory:"):
                raise UserError("the results store must be a file (several processes share it); "
                                "e.g. --store sqlite:///runs.db")
            path.parent.mkdir(parents=True, exist_ok=True)
            self._path = path
            self._errors: tuple[type[BaseException], ...] = (sqlite3.OperationalError,)
            self._schema_races: tuple[type[BaseException], ...] = self._errors
            self._lost: tuple[type[BaseException], ...] = (sqlite3.ProgrammingError,)
        elif url.split("://", 1)[0] in ("postgresql", "postgres"):
            self.kind = "postgresql"
            try:
                import psycopg
            except ImportError:
                raise UserError("a postgresql:// results store needs the psycopg driver: "
                                "pip install 'psycopg[binary]'") from None
            self._errors = (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected,
                            psycopg.errors.UniqueViolation)
            self._lost = (psycopg.OperationalError, psycopg.InterfaceError)
            self._schema_races = (*self._errors, psycopg.errors.DuplicateObject, psycopg.errors.DuplicateTable)
        else:
            raise UserError(f"unknown results store {self.display_url!r}: use sqlite:///path/runs.db, a file path, "
                            "or postgresql://user@host:port/database")
        self.conn: Any = self._connect()
        self._lock = threading.Lock()
        self._create_schema()

    # -- plumbing ----------------------------------------------------------------------------------------------------
    def _connect(self) -> Any:
        return _open_sqlite(self._path) if self.kind == "sqlite" else _open_postgresql(self.url, self.display_url)

    def connection_lost(self) -> bool:
        """Whether the current connection is unusable (closed, or broken by a lost server)."""
        if self.kind == "postgresql":
            return bool(self.conn.closed or self.conn.broken)
        try:
            self.conn.total_changes  # noqa: B018 - raises on a closed connection
        except sqlite3.ProgrammingError:
            return True
        return False

    def _reconnect(self) -> None:
        """Drop the lost connection and open a new one, trying after each of ``reconnect_delays`` in turn; raises
        what the last try raised when none succeeds (and at once when there are no delays)."""
        with contextlib.suppress(Exception):
            self.conn.close()
        if not self.reconnect_delays:
            raise ConnectionError(f"lost the connection to the results store {self.display_url}")
        for attempt, delay in enumerate(self.reconnect_delays):
            time.sleep(delay)
            try:
                self.conn = self._connect()
            except UserError:
                if attempt == len(self.reconnect_delays) - 1:
                    raise
                continue
            self.reconnects += 1
            return

    def _sql(self, sql: str) -> str:
        """The SQL in this driver's parameter style (written once with ``?``)."""
        return sql.replace("?", "%s") if self.kind == "postgresql" else sql

    def _execute(self, sql: str, params: Sequence[Any], many: Iterable[Sequence[Any]] | None,
                 fetch: bool) -> tuple[list[dict[str, Any]], int]:
        """One statement and its commit on the current connection (the caller holds the lock)."""
        cursor = self.conn.cursor()
        try:
            if many is not None:
                cursor.executemany(self._sql(sql), list(many))
            else:
                cursor.execute(self._sql(sql), tuple(params))
            rows: list[dict[str, Any]] = []
            if fetch:
                names = [d[0] for d in cursor.description]
                rows = [dict(zip(names, row)) for row in cursor.fetchall()]
            count = cursor.rowcount
            self.conn.commit()
            return rows, count
        except BaseException:
            with contextlib.suppress(Exception):  # end the failed transaction (nothing to end on a lost connection)
                self.conn.rollback()
            raise
        finally:
            with contextlib.suppress(Exception):  # closing a cursor of a lost connection may fail too
                cursor.close()

    def _run(self, sql: str, params: Sequence[Any] = (), *, many: Iterable[Sequence[Any]] | None = None,
             fetch: bool = False) -> tuple[list[dict[str, Any]], int]:
        """Execute one statement as its own transaction; returns (rows as dicts, rowcount). Retries on lock
        contention (SQLite 'database is locked' after the busy timeout; PostgreSQL serialisation failures) and, on a
        new connection, when the connection was lost (see the class docstring).

        A statement retried after a lost connection may have committed before the loss; the callers whose
        row counts matter (:meth:`claim`, :meth:`finish`, :meth:`heartbeat`) confirm a zero count by reading the row.
        """
        many = list(many) if many is not None else None
        delay, reconnected = 0.05, False
        for attempt in range(20):
            with self._lock:
                try:
                    if self.connection_lost():
                        raise ConnectionError(f"lost the connection to the results store {self.display_url}")
                    return self._execute(sql, params, many, fetch)
                except (ConnectionError, *self._lost, *self._errors) as exc:
                    if self.connection_lost():
                        if reconnected:
                            raise
                        self._reconnect()
                        reconnected = True
                        continue
                    if not isinstance(exc, self._errors) or attempt == 19 or not self._retryable(exc):
                        raise
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
        raise AssertionError("unreachable")

    def _retryable(self, exc: BaseException) -> bool:
        if self.kind == "sqlite":
            return "locked" in str(exc) or "busy" in str(exc)
        return True  # the PostgreSQL errors in self._errors are all transient

    def _create_schema(self) -> None:
        for statement in _SCHEMA:
            try:
                self._run(statement)
            except self._schema_races:  # two processes creating the same table at once on PostgreSQL
                self._run(statement)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- writing -----------------------------------------------------------------------------------------------------
    def register_config(self, config_hash: str, name: str, config: dict[str, Any]) -> None:
        self._run("INSERT INTO connprune_configs (config_hash, name, config, created_at) VALUES (?, ?, ?, ?) "
                  "ON CONFLICT (config_hash) DO UPDATE SET name = excluded.name, config = excluded.config",
                  (config_hash, name, json.dumps(config, sort_keys=True), now_iso()))

    def add_runs(self, runs: Iterable[Any]) -> int:
        """Insert grid points (``RunSpec``\\ s) as ``pending``; existing keys are left as they are."""
        stamp = now_iso()
        rows = [(r.key, r.config_hash, r.model, r.method, r.label, r.params_json, _sparsity_text(r.sparsity),
                 int(r.seed), int(bool(r.needs_trained)), PENDING, stamp) for r in runs]
        if not rows:
            return 0
        _, count = self._run(
            "INSERT INTO connprune_runs (key, config_hash, model, method, label, params, sparsity, seed, "
            "needs_trained, status, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (key) DO NOTHING", many=rows)
        return max(count, 0)

    def claim(self, key: str, worker: str | None = None) -> bool:
        """Claim ``key`` for ``worker`` if it is pending; True if the worker holds it now (claimed by this call, or
        by this very statement before a lost connection hid its row count)."""
        _, count = self._run(
            "UPDATE connprune_runs SET status = ?, claimed_by = ?, started_at = ?, heartbeat_at = ?, "
            "attempts = attempts + 1, error = NULL WHERE key = ? AND status = ?",
            (RUNNING, worker or worker_id(), now_iso(), time.time(), key, PENDING))
        return count == 1 or self.holds(key, worker, RUNNING)

    def claim_first(self, keys: Iterable[str], worker: str | None = None) -> str | None:
        """Claim the first of ``keys`` that is still pending (in that order); None when none is."""
        keys = list(keys)
        pending = set(self.keys_with_status(keys, PENDING))
        for key in keys:
            if key in pending and self.claim(key, worker):
                return key
        return None

    def heartbeat(self, key: str, worker: str | None = None) -> bool:
        """Record that ``worker`` is still running ``key``; False if it no longer holds the claim."""
        _, count = self._run("UPDATE connprune_runs SET heartbeat_at = ? WHERE key = ? AND claimed_by = ? AND "
                             "status = ?", (time.time(), key, worker or worker_id(), RUNNING))
        return count == 1 or self.holds(key, worker, RUNNING)

    def holder(self, key: str) -> tuple[str | None, str | None]:
        """``(status, claimed_by)`` of ``key`` now (``(None, None)`` for an unknown key)."""
        rows, _ = self._run("SELECT status, claimed_by FROM connprune_runs WHERE key = ?", (key,), fetch=True)
        return (rows[0]["status"], rows[0]["claimed_by"]) if rows else (None, None)

    def holds(self, key: str, worker: str | None = None, status: str = RUNNING) -> bool:
        """Whether ``key`` is in ``status`` and claimed by ``worker``: what a worker checks before it stores a result,
        and what confirms a write whose row count was lost with its connection."""
        return self.holder(key) == (status, worker or worker_id())

    def finish(self, key: str, metrics: dict[str, Any], worker: str | None = None, *,
               output_dir: str | None = None) -> bool:
        """Record ``metrics`` (a ``metrics.json`` dict) for a run this worker holds; False if it lost the claim."""
        numbers = numeric_columns(metrics)
        info = versions()
        columns = list(NUMERIC_COLUMNS) + ["connprune_version", "torch_version", "python_version", "git_commit"]
        values = [numbers[c] for c in NUMERIC_COLUMNS] + [info[c] for c in columns[len(NUMERIC_COLUMNS):]]
        assignments = ", ".join(f"{c} = ?" for c in columns)
        _, count = self._run(
            f"UPDATE connprune_runs SET status = ?, finished_at = ?, metrics = ?, output_dir = ?, host = ?, "
            f"{assignments} WHERE key = ? AND claimed_by = ? AND status = ?",
            [DONE, now_iso(), json.dumps(metrics, sort_keys=True), output_dir, socket.gethostname(), *values, key,
             worker or worker_id(), RUNNING])
        return count == 1 or self.holds(key, worker, DONE)

    def fail(self, key: str, error: str, worker: str | None = None) -> bool:
        info = versions()
        _, count = self._run(
            "UPDATE connprune_runs SET status = ?, finished_at = ?, error = ?, host = ?, connprune_version = ?, "
            "torch_version = ?, python_version = ?, git_commit = ? WHERE key = ? AND claimed_by = ? AND status = ?",
            (FAILED, now_iso(), error, socket.gethostname(), info["connprune_version"], info["torch_version"],
             info["python_version"], info["git_commit"], key, worker or worker_id(), RUNNING))
        return count == 1

    def release(self, key: str, worker: str | None = None) -> bool:
        """Give a claimed run back (``pending``), e.g. on Ctrl-C."""
        _, count = self._run(
            "UPDATE connprune_runs SET status = ?, claimed_by = NULL, heartbeat_at = NULL "
            "WHERE key = ? AND claimed_by = ? AND status = ?", (PENDING, key, worker or worker_id(), RUNNING))
        return count == 1

    def reclaim(self, keys: Iterable[str], *, stale_after: float = STALE_AFTER_SECONDS,
                retry_failed: bool = True) -> list[tuple[str, str]]:
        """Put stale ``running`` runs (and, with ``retry_failed``, ``failed`` ones) among ``keys`` back to
        ``pending``; returns ``(key, why)`` for each. See the module docstring for the rule."""
        host = socket.gethostname()
        keys = set(keys)
        reset: list[tuple[str, str]] = []
        for row in self._select_where("status IN (?, ?)", (RUNNING, FAILED)):
            if row["key"] not in keys:
                continue
            if row["status"] == FAILED:
                if retry_failed:
                    _, count = self._run("UPDATE connprune_runs SET status = ?, claimed_by = NULL WHERE key = ? AND "
                                         "status = ?", (PENDING, row["key"], FAILED))
                    if count == 1:
                        reset.append((row["key"], "failed before: retried"))
                continue
            why = _stale_reason(row, host, stale_after)
            if why is None:
                continue
            beat = row["heartbeat_at"]
            _, count = self._run(
                "UPDATE connprune_runs SET status = ?, claimed_by = NULL, heartbeat_at = NULL WHERE key = ? AND "
                "status = ? AND claimed_by = ? AND " + ("heartbeat_at = ?" if beat is not None else
                                                         "heartbeat_at IS NULL"),
                (PENDING, row["key"], RUNNING, row["claimed_by"]) + ((beat,) if beat is not None else ()))
            if count == 1:
                reset.append((row["key"], why))
        return reset

    def put_dense(self, key: str, config_hash: str, model: str, seed: int, metrics: dict[str, Any], *,
                  params: int | None, macs: int | None, output_dir: str | None) -> None:
        """Record a dense model (insert or replace)."""
        self._run(
            "INSERT INTO connprune_dense (key, config_hash, model, seed, accuracy, params, macs, train_seconds, "
            "metrics, output_dir, host, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET accuracy = excluded.accuracy, params = excluded.params, "
            "macs = excluded.macs, train_seconds = excluded.train_seconds, metrics = excluded.metrics, "
            "output_dir = excluded.output_dir, host = excluded.host, updated_at = excluded.updated_at",
            (key, config_hash, model, int(seed), _float(metrics.get("accuracy")), params, macs,
             _float(metrics.get("train_seconds")), json.dumps(metrics, sort_keys=True), output_dir,
             socket.gethostname(), now_iso()))

    # -- reading -----------------------------------------------------------------------------------------------------
    def _select_where(self, where: str, params: Sequence[Any] = (), table: str = "connprune_runs",
                      order: str = "key") -> list[dict[str, Any]]:
        rows, _ = self._run(f"SELECT * FROM {table} WHERE {where} ORDER BY {order}", params, fetch=True)
        return rows

    def keys_with_status(self, keys: Iterable[str], status: str) -> list[str]:
        keys = set(keys)
        rows, _ = self._run("SELECT key FROM connprune_runs WHERE status = ?", (status,), fetch=True)
        return [r["key"] for r in rows if r["key"] in keys]

    def statuses(self, keys: Iterable[str] | None = None) -> dict[str, str]:
        rows, _ = self._run("SELECT key, status FROM connprune_runs", fetch=True)
        wanted = None if keys is None else set(keys)
        return {r["key"]: r["status"] for r in rows if wanted is None or r["key"] in wanted}

    def _by_hash(self, table: str, config_hashes: Iterable[str] | None) -> list[dict[str, Any]]:
        if config_hashes is None:
            return self._select_where("1 = 1", table=table)
        hashes = sorted(set(config_hashes))
        if not hashes:
            return []
        return self._select_where(f"config_hash IN ({', '.join('?' * len(hashes))})", hashes, table=table)

    def runs(self, config_hashes: Iterable[str] | None = None, keys: Iterable[str] | None = None) \
            -> list[dict[str, Any]]:
        """Rows of ``connprune_runs`` (all, or of these config hashes / keys), ordered by key, with ``metrics``
        and ``params`` parsed from JSON."""
        rows = self._by_hash("connprune_runs", config_hashes)
        if keys is not None:
            wanted = set(keys)
            rows = [r for r in rows if r["key"] in wanted]
        for row in rows:
            row["metrics"] = json.loads(row["metrics"]) if row.get("metrics") else None
            row["params"] = json.loads(row["params"]) if row.get("params") else {}
        return rows

    def dense(self, config_hashes: Iterable[str] | None = None) -> list[dict[str, Any]]:
        rows = self._by_hash("connprune_dense", config_hashes)
        for row in rows:
            row["metrics"] = json.loads(row["metrics"]) if row.get("metrics") else None
        return rows

    def configs(self) -> dict[str, dict[str, Any]]:
        rows = self._select_where("1 = 1", table="connprune_configs", order="created_at")
        return {r["config_hash"]: {"name": r["name"], "config": json.loads(r["config"])} for r in rows}

    def counts(self, keys: Iterable[str]) -> dict[str, int]:
        counts = dict.fromkeys(STATUSES, 0)
        for status in self.statuses(keys).values():
            counts[status] = counts.get(status, 0) + 1
        return counts


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _sparsity_text(sparsity: Any) -> str:
    return "auto" if sparsity == "auto" else repr(float(sparsity))


def numeric_columns(metrics: dict[str, Any]) -> dict[str, Any]:
    """The numeric columns of a ``metrics.json`` dict (None where absent)."""
    out: dict[str, Any] = {}
    for column in NUMERIC_COLUMNS:
        value = metrics.get(column)
        if column in ("shift_acc_before", "shift_acc_after"):
            value = value.get("mean") if isinstance(value, dict) else None
        out[column] = _int(value) if column.startswith(("params_", "macs_")) else _float(value)
    return out


def _stale_reason(row: dict[str, Any], host: str, stale_after: float) -> str | None:
    claimed = row.get("claimed_by") or ""
    claim_host, _, pid_text = claimed.rpartition(":")
    if claim_host == host and pid_text.isdigit() and not pid_alive(int(pid_text)):
        return f"claimed by {claimed}, a process that is gone"
    beat = row.get("heartbeat_at")
    if beat is None or time.time() - float(beat) > stale_after:
        age = "never" if beat is None else f"{time.time() - float(beat):.0f} s ago"
        return f"claimed by {claimed or 'nobody'}, last heartbeat {age}"
    return None


class Heartbeat:
    """Beat for a claimed run every ``interval`` seconds from a background thread with its own connection.

    A beat that fails (the server restarted, the network dropped, the connection was closed under it) drops that
    connection; the next beat opens a new one. Retries back off from ``retry_after`` seconds, doubling up to
    ``interval``: a short outage costs a few seconds of beats, a long one does not hammer the server, and the claim
    stays fresh (see :meth:`Store.reclaim`) as long as the store is reachable once every ``stale_after`` seconds. A
    beat that finds the run claimed by someone else (it was reclaimed as stale) sets :attr:`lost` and stops beating;
    the worker re-checks its claim before it stores a result anyway (:meth:`Store.holds`).
    """

    def __init__(self, url: str, key: str, worker: str, interval: float = HEARTBEAT_SECONDS,
                 retry_after: float = 1.0) -> None:
        self.url, self.key, self.worker = url, key, worker
        self.interval, self.retry_after = interval, min(retry_after, interval)
        self.lost = threading.Event()
        self.beats = 0          # successful beats
        self.failures = 0       # failed beats
        self.connections = 0    # connections opened (1 + reconnects)
        self.last_error: str | None = None
        self._streak = 0        # failed beats since the last success
        self._store: Store | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat {key}", daemon=True)

    def beat(self) -> float:
        """Beat once now; returns the seconds to wait before the next beat (the back-off after a failure)."""
        try:
            if self._store is None:
                self._store = Store(self.url, reconnect_delays=())
                self.connections += 1
            if self._store.heartbeat(self.key, self.worker):
                self.beats += 1
            else:
                self.lost.set()
            self._streak = 0
            return self.interval
        except Exception as exc:  # noqa: BLE001 - any failure: a new connection at the next beat
            self.failures += 1
            self._streak += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            self.drop_connection()
            return min(self.interval, self.retry_after * 2 ** (self._streak - 1))

    def drop_connection(self) -> None:
        """Close and forget the current connection (the next beat opens a new one)."""
        store, self._store = self._store, None
        if store is not None:
            with contextlib.suppress(Exception):
                store.close()

    def _loop(self) -> None:
        delay = self.interval
        try:
            while not self.lost.is_set() and not self._stop.wait(delay):
                delay = self.beat()
        finally:
            self.drop_connection()

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
