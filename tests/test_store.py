"""The results store: concurrent writers lose nothing and never claim a run twice, on SQLite and on a real
PostgreSQL server that the test starts itself (skipped, with the reason, where the binaries or psycopg are absent)."""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from connprune.errors import UserError
from connprune.experiments.config import RunSpec
from connprune.experiments.store import DONE, FAILED, PENDING, RUNNING, Heartbeat, Store

N_SHARED = 60      # grid points both writers insert and then race to claim
N_OWN = 20         # rows each writer inserts alone

WRITER = textwrap.dedent("""
    import json, sys
    from connprune.experiments.config import RunSpec
    from connprune.experiments.store import Store, worker_id

    url, name, n_shared, n_own, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]

    def spec(key):
        return RunSpec(key=key, config_hash="h", model="mlp", method="magnitude", label="magnitude", params={},
                       params_json="{}", sparsity=0.5, seed=0)

    store = Store(url)
    shared = [f"shared-{i:03d}" for i in range(n_shared)]
    own = [f"{name}-{i:03d}" for i in range(n_own)]
    store.add_runs([spec(k) for k in shared])
    claimed = []
    for i, key in enumerate(own):           # interleave inserts of its own rows with claims of shared ones
        store.add_runs([spec(key)])
        got = store.claim_first(shared)
        if got:
            claimed.append(got)
            assert store.finish(got, {"acc_after": 0.5, "params_after": 7, "by": worker_id()})
    while True:
        got = store.claim_first(shared + own)
        if got is None:
            break
        claimed.append(got)
        assert store.finish(got, {"acc_after": 0.5, "params_after": 7, "by": worker_id()})
    json.dump({"worker": worker_id(), "claimed": claimed}, open(out, "w"))
""")


def spec(key: str, config_hash: str = "h") -> RunSpec:
    return RunSpec(key=key, config_hash=config_hash, model="mlp", method="magnitude", label="magnitude", params={},
                   params_json="{}", sparsity=0.5, seed=0)


def race(url: str, tmp_path: Path) -> None:
    """Two writer processes insert and claim concurrently; every row ends done exactly once."""
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    procs = [subprocess.Popen([sys.executable, str(script), url, name, str(N_SHARED), str(N_OWN),
                               str(tmp_path / f"{name}.json")], env=env, stderr=subprocess.PIPE, text=True)
             for name in ("a", "b")]
    for proc in procs:
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
    results = [json.loads((tmp_path / f"{name}.json").read_text()) for name in ("a", "b")]
    claimed_a, claimed_b = (set(r["claimed"]) for r in results)
    assert len(claimed_a) == len(results[0]["claimed"]) and len(claimed_b) == len(results[1]["claimed"])
    assert not claimed_a & claimed_b, "a run was claimed twice"
    with Store(url) as store:
        rows = store.runs(["h"])
        expected = {f"shared-{i:03d}" for i in range(N_SHARED)} | {f"{n}-{i:03d}" for n in "ab" for i in range(N_OWN)}
        assert {r["key"] for r in rows} == expected, "a row was lost"
        assert claimed_a | claimed_b == expected
        for row in rows:
            assert row["status"] == DONE and row["attempts"] == 1
            assert row["metrics"]["by"] == row["claimed_by"]
            assert row["acc_after"] == 0.5 and row["params_after"] == 7 and row["torch_version"]
    # both really raced for the shared rows (each got some) — with 60 rows this holds in practice
    assert claimed_a & {f"shared-{i:03d}" for i in range(N_SHARED)} and \
        claimed_b & {f"shared-{i:03d}" for i in range(N_SHARED)}


def test_sqlite_concurrent_writers(tmp_path):
    race(f"sqlite:///{tmp_path / 'runs.db'}", tmp_path)


# -- a real PostgreSQL server -----------------------------------------------------------------------------------------


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@pytest.fixture(scope="module")
def postgres_server():
    """A throwaway PostgreSQL server on a Unix socket in a temporary directory; yields a function that creates a
    fresh database and returns its URL."""
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin/initdb); "
                    "install them with `apt-get install postgresql` to run this test")
    psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed: pip install 'psycopg[binary]'")
    root = Path(tempfile.mkdtemp(prefix="connprune-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: run the server as the `postgres` user
        import pwd

        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run the server as")
        os.chown(root, user.pw_uid, user.pw_gid)
        runuser = shutil.which("runuser")
        prefix = [runuser, "-u", "postgres", "--"] if runuser else ["su", "postgres", "-s", "/bin/sh", "-c"]
    with socket.socket() as s:  # a free port number (the server listens on its Unix socket only)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def as_server_user(*args: str) -> subprocess.CompletedProcess:
        command = list(args) if not prefix or prefix[0] != "su" else [" ".join(args)]
        return subprocess.run(prefix + command, capture_output=True, text=True, timeout=120)

    data = root / "data"
    result = as_server_user(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                            "--no-sync")
    if result.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"initdb failed: {result.stderr.strip()[-300:]}")
    options = f"-k {root} -p {port} -c listen_addresses='' -c fsync=off -c max_connections=50"
    result = as_server_user(str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"), "-w",
                            "-t", "60", "start")
    if result.returncode != 0:
        log = (root / "log").read_text()[-500:] if (root / "log").exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"pg_ctl start failed: {result.stderr.strip()} {log}")
    admin = f"postgresql://postgres@/postgres?host={root}&port={port}"
    counter = iter(range(1000))

    def new_database() -> str:
        name = f"connprune_test_{next(counter)}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return f"postgresql://postgres@/{name}?host={root}&port={port}"

    try:
        yield new_database
    finally:
        as_server_user(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


def test_postgres_concurrent_writers(postgres_server, tmp_path):
    race(postgres_server(), tmp_path)


# -- claims, stale claims, failures (both back ends) ------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'runs.db'}"
    return request.getfixturevalue("postgres_server")()


def test_claim_finish_fail_and_reclaim(store_url):
    me = f"{socket.gethostname()}:{os.getpid()}"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with Store(store_url) as store:
        assert store.add_runs([spec(k) for k in "abcdef"]) == 6
        assert store.add_runs([spec("a")]) == 0                         # an existing key is left alone
        assert store.claim("a", me) and not store.claim("a", "other:1")  # claimed once only
        assert not store.finish("a", {"acc_after": 1.0}, "other:1")     # only the claimer writes results
        assert store.finish("a", {"acc_after": 0.75, "shift_acc_after": {"fog:3": 0.5, "mean": 0.5}}, me)
        assert store.claim("b", me) and store.fail("b", "UserError: broken", me)
        assert store.claim("c", f"{socket.gethostname()}:{dead.pid}")  # its process is gone: stale
        assert store.claim("d", me)                                     # alive, beating: not stale
        assert store.claim("e", "elsewhere:123")                        # another host, fresh heartbeat
        assert store.claim("f", "elsewhere:456")
        store._run("UPDATE connprune_runs SET heartbeat_at = ? WHERE key = ?", (time.time() - 3600, "f"))
        reset = dict(store.reclaim("abcdef", stale_after=600))
        assert set(reset) == {"b", "c", "f"} and "gone" in reset["c"] and "heartbeat" in reset["f"]
        assert store.statuses() == {"a": DONE, "b": PENDING, "c": PENDING, "d": RUNNING, "e": RUNNING,
                                    "f": PENDING}
        assert not store.finish("f", {"acc_after": 0.1}, "elsewhere:456")  # the reclaimed worker lost it
        assert store.release("d", me) and store.statuses(["d"]) == {"d": PENDING}
        row = {r["key"]: r for r in store.runs(["h"])}["a"]
        assert row["acc_after"] == 0.75 and row["shift_acc_after"] == 0.5 and row["metrics"]["acc_after"] == 0.75
        assert row["started_at"] and row["finished_at"] and row["connprune_version"]
        assert store.counts("abcdef") == {PENDING: 4, RUNNING: 1, DONE: 1, FAILED: 0}
        assert store.runs(["other-hash"]) == []


def test_bad_urls_and_missing_driver(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="sqlite:///"):
        Store("mysql://x@y/z")
    with pytest.raises(UserError, match="four slashes|sqlite:////"):
        Store("sqlite://relative.db")
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(UserError, match=r"pip install 'psycopg\[binary\]'"):
        Store("postgresql://user@localhost:5432/db")
    with Store(str(tmp_path / "plain.db")) as store:  # a plain path is an SQLite file
        assert store.kind == "sqlite" and (tmp_path / "plain.db").is_file()


# -- dropped connections: the heartbeat and the store reconnect -------------------------------------------------------


def drop_connection(store: Store, admin: Store) -> None:
    """Break ``store``'s connection as a lost server or network would: on PostgreSQL the server ends the session
    (``pg_terminate_backend``, what a restart or an idle-session killer does); SQLite has no server, so the
    connection is closed under the store."""
    if store.kind == "postgresql":
        pid = store.conn.info.backend_pid
        admin._run("SELECT pg_terminate_backend(?)", (pid,), fetch=True)
        deadline = time.time() + 10
        while admin._run("SELECT pid FROM pg_stat_activity WHERE pid = ?", (pid,), fetch=True)[0]:
            assert time.time() < deadline, "the server did not end the session"
            time.sleep(0.01)
    else:
        store.conn.close()


def beat_of(store: Store, key: str) -> float:
    return store.runs(keys=[key])[0]["heartbeat_at"]


def test_heartbeat_reconnects_after_a_dropped_connection(store_url):
    me = f"{socket.gethostname()}:{os.getpid()}"
    with Store(store_url) as store:
        store.add_runs([spec("a")])
        assert store.claim("a", me)
        heart = Heartbeat(store_url, "a", me, interval=30.0, retry_after=0.25)
        assert heart.beat() == 30.0 and heart.beats == 1 and heart.connections == 1
        old = time.time() - 3600
        store._run("UPDATE connprune_runs SET heartbeat_at = ? WHERE key = ?", (old, "a"))
        drop_connection(heart._store, store)
        assert heart.beat() == 0.25               # the beat failed: retry soon, on a new connection
        assert heart.failures == 1 and heart._store is None and beat_of(store, "a") == old
        assert heart.beat() == 30.0               # reconnected: the beat lands
        assert heart.beats == 2 and heart.connections == 2 and not heart.lost.is_set()
        assert time.time() - beat_of(store, "a") < 60
        assert store.reclaim(["a"], stale_after=600) == []  # fresh, so nobody takes the run over
        heart.drop_connection()


def test_heartbeat_backs_off_while_the_store_is_unreachable(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")  # a file where the store's folder should be: every connection attempt fails
    heart = Heartbeat(f"sqlite:///{blocker / 'runs.db'}", "a", "w:1", interval=3.0, retry_after=0.25)
    delays = [heart.beat() for _ in range(7)]
    assert delays == [min(3.0, 0.25 * 2 ** k) for k in range(7)]  # 0.25, 0.5, 1, 2, then capped at the interval
    assert heart.failures == 7 and heart.beats == 0 and heart.last_error


def test_heartbeat_thread_keeps_the_claim_fresh_across_a_drop(store_url):
    """The background thread itself: before the fix it kept the broken connection and never beat again."""
    me = f"{socket.gethostname()}:{os.getpid()}"
    with Store(store_url) as store:
        store.add_runs([spec("a")])
        assert store.claim("a", me)
        with Heartbeat(store_url, "a", me, interval=0.2, retry_after=0.05) as heart:
            deadline = time.time() + 20
            while heart.beats < 1 and time.time() < deadline:
                time.sleep(0.02)
            drop_connection(heart._store, store)
            dropped_at = time.time()
            while (heart.connections < 2 or beat_of(store, "a") <= dropped_at) and time.time() < deadline:
                time.sleep(0.02)
        assert heart.connections == 2 and beat_of(store, "a") > dropped_at


def test_heartbeat_notices_a_lost_claim(store_url):
    me = f"{socket.gethostname()}:{os.getpid()}"
    with Store(store_url) as store:
        store.add_runs([spec("a")])
        assert store.claim("a", me)
        store._run("UPDATE connprune_runs SET heartbeat_at = ? WHERE key = ?", (time.time() - 3600, "a"))
        assert [key for key, _ in store.reclaim(["a"], stale_after=600)] == ["a"]
        assert store.claim("a", "elsewhere:7")
        theirs = beat_of(store, "a")
        heart = Heartbeat(store_url, "a", me, retry_after=0.25)
        heart.beat()
        assert heart.lost.is_set() and heart.beats == 0
        assert store.holder("a") == (RUNNING, "elsewhere:7") and beat_of(store, "a") == theirs
        assert not store.holds("a", me) and store.holds("a", "elsewhere:7")
        heart.drop_connection()


def test_store_reconnects_and_confirms_writes_whose_reply_was_lost(store_url, monkeypatch):
    me = f"{socket.gethostname()}:{os.getpid()}"
    with Store(store_url) as store, Store(store_url) as admin:
        store.add_runs([spec(k) for k in "ab"])
        drop_connection(store, admin)
        assert store.claim("a", me) and store.reconnects == 1   # a new connection for the next statement
        # the reply of a committed write is lost with its connection: the retry finds nothing to change
        real = store._execute
        lose_next = [True]

        def commit_then_lose(*args, **kwargs):
            result = real(*args, **kwargs)
            if lose_next and lose_next.pop():
                drop_connection(store, admin)
                store.conn.execute("SELECT 1")  # raises what the driver raises on a lost connection
            return result

        monkeypatch.setattr(store, "_execute", commit_then_lose)
        assert store.finish("a", {"acc_after": 0.5}, me)         # confirmed from the row, not from the count
        lose_next.append(True)
        assert store.claim("b", me)
        assert store.reconnects == 3
        rows = {r["key"]: r for r in store.runs(["h"])}
        assert rows["a"]["status"] == DONE and rows["a"]["acc_after"] == 0.5 and rows["a"]["attempts"] == 1
        assert rows["b"]["status"] == RUNNING and rows["b"]["claimed_by"] == me and rows["b"]["attempts"] == 1
        assert not store.finish("b", {"acc_after": 0.1}, "elsewhere:1")  # a plain lost claim is still refused
