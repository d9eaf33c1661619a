"""``connprune run CONFIG --out DIR``: run a whole experiment grid, resumably, in one or several processes.

Layout of ``DIR``::

    DIR/experiment.json            the configs run here and the store URL (what `connprune report DIR` reads)
    DIR/runs.db                    the default results store (SQLite; --store URL for another one)
    DIR/dense/<model>-s<seed>/     one dense checkpoint per (model, seed), shared by every method that prunes a
                                   trained model (methods that prune at initialisation never use it)
    DIR/runs/<key>/                the pruned checkpoint and metrics.json of each run

**Order and reuse.** The grid (:func:`connprune.experiments.config.expand`) goes into the store as ``pending`` rows;
rows already there (finished, failed or running) are kept, so re-running a config skips finished runs and adding a
sparsity or a seed only runs the new points. A worker claims runs one at a time (see
:mod:`connprune.experiments.store`), preferring runs it can start at once (their dense model is trained, or they
need none). The first run that needs the dense model of (model, seed) trains it under a file lock; other workers
that need it wait for the lock and reuse it. Each run is seeded with its seed before it starts, so a run's result
does not depend on what ran before it in the same process.

**Resume.** ``--resume`` puts stale claims (a killed worker: see the store's rule) and failed runs back to
``pending`` and continues the dense training of a killed worker from its last finished epoch. Without ``--resume``
such runs are left alone (another worker may still own them) and the summary says how many there are.

**Parallel.** ``--jobs N`` starts N worker processes (``spawn``), each claiming runs from the store, each with
``max(1, cores // N)`` torch threads. Several machines can share a PostgreSQL store; each trains the dense models it
needs into its own ``DIR`` unless ``DIR`` is shared.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import shutil
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from connprune.errors import UserError
from connprune.experiments.config import LoadedConfig, RunSpec, expand, load_config, sparsity_text
from connprune.experiments.store import (
    DONE,
    FAILED,
    PENDING,
    RUNNING,
    Heartbeat,
    Store,
    default_url,
    sanitize_url,
    worker_id,
)
from connprune.utils.io import read_json, replace_dir, staging_path, write_json

EXPERIMENT_JSON = "experiment.json"


@dataclass
class Settings:
    """What a worker needs besides the runs (picklable, for ``spawn``)."""

    out_dir: str
    store_url: str
    config_hash: str
    data: str
    data_dir: str | None
    train: dict[str, Any]
    train_epochs: int
    fine_tune_epochs: int
    shift: str
    model_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    progress: bool = True
    threads: int | None = None
    parent_pid: int | None = None


@dataclass
class Summary:
    """What ``run`` did."""

    out_dir: Path
    store_url: str
    total: int
    counts: dict[str, int]
    seconds: float
    reset: list[tuple[str, str]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)


# -- helpers ---------------------------------------------------------------------------------------------------------


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def dense_dir(out_dir: str | Path, model: str, seed: int) -> Path:
    return Path(out_dir) / "dense" / f"{model}-s{seed}"


def run_dir(out_dir: str | Path, key: str) -> Path:
    return Path(out_dir) / "runs" / key


def _dense_ready(out_dir: str | Path, model: str, seed: int) -> bool:
    folder = dense_dir(out_dir, model, seed)
    return (folder / "model.json").is_file() and not (folder.parent / f".{folder.name}.partial").exists()


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes on this machine (``flock``); a no-op where fcntl is missing.

    The lock file exists only while a process holds (or waits for) the lock: the holder removes it before it unlocks,
    also on Ctrl-C, so no stale ``.lock`` is left behind. A waiter that then wins the lock on the removed file sees
    that ``path`` no longer names the file it locked and tries again on a fresh one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    while True:
        with open(path, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            if not _names_open_file(path, handle.fileno()):
                continue  # the holder before us removed it: lock the file that `path` names now
            try:
                yield
            finally:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                fcntl.flock(handle, fcntl.LOCK_UN)
            return


def _names_open_file(path: Path, fd: int) -> bool:
    """Whether ``path`` still names the open file ``fd`` (it was neither removed nor replaced)."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


@contextlib.contextmanager
def _trainer_console(console: Console | None) -> Iterator[None]:
    """Let the trainer's progress bar nest under ours: rich nests live displays only on one Console, and the
    trainer makes its own ``Console(stderr=True)``; while the grid runs in this process it gets ours."""
    if console is None:
        yield
        return
    from connprune.train import trainer as trainer_module

    original = trainer_module.Console
    trainer_module.Console = lambda *args, **kwargs: console  # type: ignore[assignment]
    try:
        yield
    finally:
        trainer_module.Console = original  # type: ignore[assignment]


def describe(run: RunSpec) -> str:
    return f"{run.model} · {run.label} · sparsity {sparsity_text(run.sparsity)} · seed {run.seed}"


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, UserError):
        return f"UserError: {exc}"
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-8000:]


# -- one run ---------------------------------------------------------------------------------------------------------


def ensure_dense(settings: Settings, model: str, seed: int, store: Store) -> tuple[Path, dict[str, Any]]:
    """The dense checkpoint of (model, seed): trained once (under a file lock), resumed if a worker was killed."""
    from connprune import checkpoint, data
    from connprune.experiments.jobs import TrainJob, train_dense
    from connprune.measure import cost

    folder = dense_dir(settings.out_dir, model, seed)
    with file_lock(folder.parent / f".{folder.name}.lock"):
        metrics = train_dense(TrainJob.build(model=model, data=settings.data, out=folder, data_dir=settings.data_dir,
                                             seed=seed, resume=True, progress=settings.progress,
                                             model_options=settings.model_options.get(model) or {},
                                             recipe=settings.train))
        key = f"{settings.config_hash}/{folder.name}"
        if not any(row["key"] == key for row in store.dense([settings.config_hash])):
            loaded = checkpoint.load_checkpoint(folder)
            measured = cost(loaded.model, data.info(settings.data).input_shape)
            store.put_dense(key, settings.config_hash, model, seed, metrics, params=measured.params,
                            macs=measured.macs, output_dir=str(folder))
    return folder, metrics


def execute(run: RunSpec, settings: Settings, store: Store, out: Path | None = None) -> dict[str, Any]:
    """Run one grid point, writing its checkpoint to ``out`` (default: its run folder); returns its
    ``metrics.json`` dict plus the run's key, label and wall time."""
    from connprune.experiments.jobs import PruneJob, prune_job
    from connprune.utils.seed import seed_everything

    extra: dict[str, Any] = {}
    common = dict(method=run.method, sparsity=run.sparsity, params=run.params, data=settings.data,
                  data_dir=settings.data_dir, shift=settings.shift, seed=run.seed, progress=settings.progress,
                  recipe=settings.train, **run.schedule)
    if run.needs_trained:
        started = time.perf_counter()
        folder, dense_metrics = ensure_dense(settings, run.model, run.seed, store)
        extra["dense_accuracy"] = dense_metrics.get("accuracy")
        extra["dense_wait_seconds"] = time.perf_counter() - started  # training it, or waiting for who does
    started = time.perf_counter()  # wall_seconds: the run itself, without the dense model
    out = out or run_dir(settings.out_dir, run.key)
    seed_everything(run.seed)
    if run.needs_trained:
        job = PruneJob.build(out=out, checkpoint=folder, finetune_epochs=settings.fine_tune_epochs, **common)
    else:
        job = PruneJob.build(out=out, model=run.model, epochs=settings.train_epochs,
                             model_options=settings.model_options.get(run.model) or {}, **common)
    metrics = prune_job(job)
    return {**metrics, **extra, "run_key": run.key, "label": run.label, "config_hash": run.config_hash,
            "wall_seconds": time.perf_counter() - started}


# -- workers ---------------------------------------------------------------------------------------------------------


class _Reporter:
    """What a worker tells the user: nothing (spawned workers), or lines and bars (the in-process worker)."""

    def started(self, run: RunSpec) -> None: ...

    def finished(self, run: RunSpec, metrics: dict[str, Any] | None, error: str | None) -> None: ...


def _lock_busy(path: Path) -> bool:
    """Whether another process holds the ``flock`` on ``path`` right now (it is training that dense model)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return False
    try:
        with open(path) as handle:  # "r": never creates it, a lock file exists only while a process uses it
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
    except FileNotFoundError:
        return False
    return False


def _order(runs: list[RunSpec], out_dir: str) -> list[str]:
    """Claim order, each in grid order: runs that can start now (their dense model is trained, or they need none);
    then runs whose dense model nobody is training yet (this worker will); last, runs that would wait for another
    worker's dense training."""
    rank: dict[tuple[str, int], int] = {}
    for run in runs:
        if run.needs_trained and (run.model, run.seed) not in rank:
            folder = dense_dir(out_dir, run.model, run.seed)
            rank[(run.model, run.seed)] = 0 if _dense_ready(out_dir, run.model, run.seed) else \
                2 if _lock_busy(folder.parent / f".{folder.name}.lock") else 1
    return [r.key for r in sorted(runs, key=lambda r: rank[(r.model, r.seed)] if r.needs_trained else 0)]


def work(settings: Settings, runs: list[RunSpec], reporter: _Reporter | None = None) -> int:
    """Claim and execute runs from the store until none of ``runs`` is pending; returns how many this worker ran.

    A run's checkpoint is written to a staging folder and moves to its run folder only after the worker has checked
    that it still holds the claim (:func:`_store_result`), so a worker whose run was reclaimed (missed heartbeats)
    neither overwrites the row nor the folder of the worker that owns the run now."""
    reporter = reporter or _Reporter()
    me = worker_id()
    by_key = {r.key: r for r in runs}
    done = 0
    with Store(settings.store_url) as store:
        while True:
            if settings.parent_pid is not None and os.getppid() != settings.parent_pid:
                break  # the `connprune run` that started this worker is gone: stop after the current run
            key = store.claim_first(_order(runs, settings.out_dir), me)
            if key is None:
                break
            run = by_key[key]
            reporter.started(run)
            staging = staging_path(run_dir(settings.out_dir, key))
            try:
                with Heartbeat(settings.store_url, key, me):
                    metrics = execute(run, settings, store, staging)
            except KeyboardInterrupt:
                shutil.rmtree(staging, ignore_errors=True)
                store.release(key, me)
                raise
            except Exception as exc:  # noqa: BLE001 - a failed run is recorded, the grid goes on
                shutil.rmtree(staging, ignore_errors=True)
                error = _error_text(exc)
                store.fail(key, error, me)
                reporter.finished(run, None, error)
                continue
            lost = _store_result(store, settings, key, me, metrics, staging)
            if lost:
                reporter.finished(run, None, lost)
                continue
            done += 1
            reporter.finished(run, metrics, None)
    return done


def _store_result(store: Store, settings: Settings, key: str, me: str, metrics: dict[str, Any],
                  staging: Path) -> str | None:
    """Publish a finished run: re-check the claim, move the staged checkpoint into its run folder, record the
    metrics. Returns None when stored, else why not (the claim was lost: the staged output is discarded)."""
    folder = run_dir(settings.out_dir, key)
    if store.holds(key, me):
        if staging.exists():
            replace_dir(staging, folder)
        if store.finish(key, metrics, me, output_dir=str(folder)):
            return None
    shutil.rmtree(staging, ignore_errors=True)
    status, holder = store.holder(key)
    now = f"claimed by {holder}" if status == RUNNING and holder else f"{status or 'gone from the store'}"
    return (f"lost its claim (reclaimed as stale after missed heartbeats; the run is now {now}); this result was "
            "not stored and nothing of the new owner's was overwritten")


def _worker_main(settings: Settings, runs: list[dict[str, Any]]) -> None:
    """Entry point of a spawned worker process."""
    import torch

    if settings.threads:
        torch.set_num_threads(settings.threads)
    try:
        work(settings, [RunSpec(**r) for r in runs])
    except KeyboardInterrupt:
        sys.exit(130)


# -- the experiment --------------------------------------------------------------------------------------------------


def _write_experiment(out_dir: Path, loaded: LoadedConfig, store_url: str) -> None:
    path = out_dir / EXPERIMENT_JSON
    record: dict[str, Any] = {"format": 1, "configs": {}}
    if path.is_file():
        try:
            record = read_json(path)
        except (OSError, json.JSONDecodeError):
            pass
    record.setdefault("configs", {})[loaded.hash] = {
        "name": loaded.name, "path": str(loaded.path) if loaded.path else None,
        "config": loaded.config.model_dump(mode="json", by_alias=True), "text": loaded.text,
    }
    record.update(format=1, store=sanitize_url(store_url), latest=loaded.hash)
    write_json(path, record)


def _check_dense_recipes(loaded: LoadedConfig, runs: list[RunSpec], out_dir: Path) -> None:
    """A dense checkpoint left in DIR by another recipe cannot be reused: say so before anything runs."""
    for model, seed in sorted({(r.model, r.seed) for r in runs if r.needs_trained}):
        folder = dense_dir(out_dir, model, seed)
        metrics_file = folder / "metrics.json"
        if not metrics_file.is_file():
            continue
        recipe = read_json(metrics_file).get("recipe")
        if recipe is not None and recipe != loaded.config.recipe(seed):
            raise UserError(f"{folder} was trained with a different recipe than {loaded.path or 'this config'} "
                            f"asks for; use a new --out directory, or delete {folder} to retrain it")


def _check_data(loaded: LoadedConfig, data_dir: str | None) -> None:
    from connprune import data

    if not data.find(loaded.config.data, data_dir).available:
        data.load(loaded.config.data, "test", data_dir)  # raises the UserError that says where to get it


def run_experiment(
    config_path: str | Path,
    out_dir: str | Path,
    *,
    store_url: str | None = None,
    resume: bool = False,
    jobs: int = 1,
    data_dir: str | Path | None = None,
    progress: bool = True,
    stale_after: float | None = None,
    console: Console | None = None,
) -> Summary:
    """Run the grid of the config at ``config_path`` into ``out_dir`` (see the module docstring)."""
    from connprune.experiments.store import STALE_AFTER_SECONDS

    started = time.perf_counter()
    if jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {jobs}")
    loaded = load_config(config_path)
    config = loaded.config
    data_dir_text = str(data_dir) if data_dir is not None else config.data_dir
    out_dir = Path(out_dir)
    runs = expand(loaded)
    _check_data(loaded, data_dir_text)
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_dense_recipes(loaded, runs, out_dir)
    store_url = store_url or default_url(out_dir)
    console = console or Console(stderr=True)
    say = console.print if progress else (lambda *a, **k: None)
    keys = [r.key for r in runs]
    with Store(store_url) as store:
        store.register_config(loaded.hash, loaded.name, config.model_dump(mode="json", by_alias=True))
        _write_experiment(out_dir, loaded, store_url)
        store.add_runs(runs)
        reset = store.reclaim(keys, stale_after=stale_after or STALE_AFTER_SECONDS) if resume else []
        for key, why in reset:
            say(f"[yellow]resuming[/] {key}: {why}", highlight=False, soft_wrap=True)
        counts = store.counts(keys)
    for key, _ in reset:  # half-written output of a killed worker (atomic_dir's temporary folders)
        for leftover in (out_dir / "runs").glob(f".{key}.*.tmp"):
            shutil.rmtree(leftover, ignore_errors=True)
    settings = Settings(out_dir=str(out_dir), store_url=store_url, config_hash=loaded.hash, data=config.data,
                        data_dir=data_dir_text, train=dict(config.train), train_epochs=config.recipe()["epochs"],
                        fine_tune_epochs=config.fine_tune.epochs, shift=config.shift,
                        model_options=config.model_options, progress=progress)
    say(f"[bold]{loaded.name}[/]: {len(runs)} runs ({counts[DONE]} done, {counts[PENDING]} to run, "
        f"{counts[RUNNING]} running elsewhere, {counts[FAILED]} failed) → {out_dir}; store {sanitize_url(store_url)}",
        highlight=False, soft_wrap=True)
    if counts[PENDING]:
        workers = min(jobs, counts[PENDING])
        if workers == 1:
            _run_here(settings, runs, counts, console if progress else None)
        else:
            _run_parallel(settings, runs, workers, console if progress else None)
    with Store(store_url) as store:
        counts = store.counts(keys)
        failed = [r for r in store.runs([loaded.hash], keys) if r["status"] == FAILED]
    summary = Summary(out_dir=out_dir, store_url=sanitize_url(store_url), total=len(runs), counts=counts,
                      seconds=time.perf_counter() - started, reset=reset, failed=failed)
    return summary


# -- display ---------------------------------------------------------------------------------------------------------


def _columns() -> list[Any]:
    return [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.fields[status]}")]


def _result_line(run: RunSpec, metrics: dict[str, Any] | None, error: str | None) -> str:
    if error is not None:
        first = error.strip().splitlines()[-1] if error.strip() else "error"
        return f"[red]✗[/] {describe(run)}: failed: {first}"
    assert metrics is not None
    return (f"[green]✓[/] {describe(run)}: achieved {metrics['achieved_sparsity']:.4f}, acc "
            f"{metrics['acc_after']:.4f} ({metrics['wall_seconds']:.1f} s)")


class _LiveReporter(_Reporter):
    def __init__(self, console: Console, bar: Progress, overall: TaskID, current: TaskID) -> None:
        self.console, self.bar, self.overall, self.current = console, bar, overall, current
        self.started_at = time.perf_counter()

    def started(self, run: RunSpec) -> None:
        self.started_at = time.perf_counter()
        what = "prune a trained model" if run.needs_trained else "prune at initialisation and train"
        self.bar.reset(self.current, total=1, description=f"  {describe(run)}", visible=True, status=what)

    def finished(self, run: RunSpec, metrics: dict[str, Any] | None, error: str | None) -> None:
        self.console.print(_result_line(run, metrics, error), highlight=False, soft_wrap=True)
        self.bar.update(self.current, completed=1)
        self.bar.advance(self.overall)


def _run_here(settings: Settings, runs: list[RunSpec], counts: dict[str, int], console: Console | None) -> None:
    import torch

    torch.set_num_threads(cores())
    if console is None:
        work(settings, runs)
        return
    with Progress(*_columns(), console=console, transient=True) as bar, _trainer_console(console):
        overall = bar.add_task("grid", total=len(runs), completed=counts[DONE] + counts[FAILED] + counts[RUNNING],
                               status="")
        current = bar.add_task("", total=1, status="", visible=False)
        work(settings, runs, _LiveReporter(console, bar, overall, current))


def _run_parallel(settings: Settings, runs: list[RunSpec], workers: int, console: Console | None) -> None:
    context = multiprocessing.get_context("spawn")
    child = Settings(**{**asdict(settings), "progress": False, "threads": max(1, cores() // workers),
                        "parent_pid": os.getpid()})
    payload = [r.to_dict() for r in runs]
    processes = [context.Process(target=_worker_main, args=(child, payload), name=f"connprune-worker-{i}")
                 for i in range(workers)]
    for process in processes:
        process.start()
    keys = [r.key for r in runs]
    by_key = {r.key: r for r in runs}
    try:
        with Store(settings.store_url) as store:
            seen = {k: s for k, s in store.statuses(keys).items() if s in (DONE, FAILED)}
            display = Progress(*_columns(), console=console, transient=True, disable=console is None)
            with display:
                overall = display.add_task("grid", total=len(runs), completed=len(seen), status=f"{workers} workers")
                lanes = {p.pid: display.add_task(f"  worker {p.pid}", total=None, status="starting") for p in processes}
                while any(p.is_alive() for p in processes):
                    time.sleep(0.5)
                    rows = {r["key"]: r for r in store.runs([settings.config_hash], keys)}
                    for key, row in rows.items():
                        if row["status"] in (DONE, FAILED) and key not in seen:
                            seen[key] = row["status"]
                            if console is not None:
                                metrics = row["metrics"]
                                if metrics is not None:
                                    metrics = {**metrics, "wall_seconds": row["wall_seconds"] or 0.0}
                                console.print(_result_line(by_key[key], metrics, row["error"]), highlight=False,
                                              soft_wrap=True)
                            display.advance(overall)
                    busy = {row["claimed_by"]: key for key, row in rows.items() if row["status"] == RUNNING}
                    for process in processes:
                        lane = lanes[process.pid]
                        key = busy.get(f"{_host()}:{process.pid}")
                        status = describe(by_key[key]) if key else ("finished" if not process.is_alive() else "idle")
                        display.update(lane, status=status)
    finally:  # normally every worker has exited; on Ctrl-C they got SIGINT too and give their runs back
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()
                process.join()
    bad = [p for p in processes if p.exitcode not in (0, None)]
    if bad and console is not None:
        console.print(f"[yellow]{len(bad)} worker(s) exited with an error ({', '.join(str(p.exitcode) for p in bad)}); "
                      "their claimed runs stay 'running' until `connprune run --resume`[/]", soft_wrap=True)


def _host() -> str:
    import socket

    return socket.gethostname()
