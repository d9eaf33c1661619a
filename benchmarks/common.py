"""Shared helpers of the benchmark scripts: the machine description, atomic result files, tables.

- :func:`machine`: CPU model (from ``/proc/cpuinfo``), cores, torch version and threads, the CPU capability oneDNN
  and ATen dispatch to (``torch.backends.cpu.get_cpu_capability()``), load average, allocator settings: enough to
  tell whether two result files are comparable.
- :func:`save_results` / :func:`save_text`: JSON / text written atomically (``connprune.utils.io``), so an
  interrupted run never leaves a half-written result file.
- :func:`print_table`: a rich table of a list of dicts; :func:`markdown_table`: the same rows as Markdown.
- :func:`cpu_busy` / :class:`QuietGate`: how busy other processes keep the CPUs, and waiting (within a budget) for
  them to stop before a timing, for machines shared with other jobs.
- :func:`mean_std` / :func:`outcome`: seed statistics and the paired wins / ties / loses rule of the verdicts.
- :func:`load_study_config`: a study script's ``--config FILE.yaml`` (keys: the script's own options), validated,
  as parser defaults (``configs/studies/``).
"""

from __future__ import annotations

import argparse
import difflib
import os
import platform
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch

from connprune.utils.io import atomic_path, write_json

__all__ = ["QuietGate", "cpu_busy", "cpu_model", "load_average", "load_study_config", "machine", "markdown_table",
           "mean_std", "outcome", "parse_study_args", "print_table", "save_results", "save_text"]


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return sorted(f for f in flags if f.startswith(("avx", "amx", "fma")) or f in {"sse4_2", "f16c"})
    except OSError:
        pass
    return []


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (None where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs together since boot, from ``/proc/stat`` (None where there is none)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already part of user time
    return total - idle, total


def cpu_busy(window: float = 1.0) -> float | None:
    """Fraction of the machine's CPU time that was busy during the next ``window`` seconds (0–1), while this
    process sleeps: i.e. how much *other* processes use the CPUs. None where ``/proc/stat`` is unavailable."""
    before = _cpu_times()
    time.sleep(window)
    after = _cpu_times()
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


class QuietGate:
    """Waits, before a measurement, until other processes leave the CPUs (nearly) idle, within a total budget.

    ``threshold``: the busy fraction of all CPUs (:func:`cpu_busy` over ``window`` seconds) below which the machine
    counts as quiet; ``budget``: seconds of waiting allowed over the whole run, after which the gate lets every
    measurement through (``exhausted``). ``waited``/``checks``/``passed_busy`` record what happened.
    """

    def __init__(self, threshold: float = 0.15, window: float = 1.0, budget: float = 600.0, poll: float = 5.0):
        self.threshold, self.window, self.budget, self.poll = threshold, window, budget, poll
        self.waited = 0.0
        self.checks = 0
        self.passed_busy = 0

    @property
    def exhausted(self) -> bool:
        return self.waited >= self.budget

    def __call__(self) -> None:
        while True:
            self.checks += 1
            busy = cpu_busy(self.window)
            if busy is None or busy < self.threshold:
                return
            if self.exhausted:
                self.passed_busy += 1
                return
            time.sleep(self.poll)
            self.waited += self.poll + self.window

    def summary(self) -> dict[str, Any]:
        return {"threshold_busy_fraction": self.threshold, "window_s": self.window, "budget_s": self.budget,
                "waited_s": round(self.waited, 1), "checks": self.checks,
                "measurements_started_on_a_busy_machine": self.passed_busy}


def machine() -> dict[str, Any]:
    """Where a benchmark ran: CPU, cores, torch and its threading/backends, load now, allocator environment."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores_logical": os.cpu_count(),
        "cores_usable": usable,
        "cpu_flags": _cpu_flags(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkldnn (oneDNN) available": torch.backends.mkldnn.is_available(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "load_average": load_average(),
        "env": {key: os.environ[key] for key in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS",
                                                 "MKL_NUM_THREADS", "OMP_WAIT_POLICY") if key in os.environ},
    }
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def save_results(path: str | os.PathLike[str], results: Any) -> None:
    """Write ``results`` as indented JSON at ``path``, atomically (parent folders are created)."""
    write_json(path, results)


def save_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` at ``path``, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _columns(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None) -> list[str]:
    if columns is not None:
        return list(columns)
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen)


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def print_table(title: str, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> None:
    """Print ``rows`` (dicts; missing keys show as –) as a rich table; ``columns`` picks and orders the keys."""
    from rich.console import Console
    from rich.table import Table

    keys = _columns(rows, columns)
    table = Table(title=title, show_lines=False)
    for key in keys:
        numeric = any(isinstance(row.get(key), (int, float)) and not isinstance(row.get(key), bool) for row in rows)
        table.add_column(key, justify="right" if numeric else "left")
    for row in rows:
        table.add_row(*(_cell(row.get(key)) for key in keys))
    Console(width=max(100, min(250, 14 * len(keys)))).print(table)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """``rows`` as a GitHub Markdown table (same cell formatting as :func:`print_table`)."""
    keys = _columns(rows, columns)
    lines = ["| " + " | ".join(keys) + " |", "|" + "|".join("---" for _ in keys) + "|"]
    lines += ["| " + " | ".join(_cell(row.get(key)).replace("|", "\\|") for key in keys) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _config_value(value: Any, action: argparse.Action) -> Any:
    """One value of a config key converted as ``action`` would convert it; ValueError when it has the wrong type."""
    kind = action.type or str
    if isinstance(value, bool):
        raise ValueError
    if kind is int and not isinstance(value, int) or kind is float and not isinstance(value, (int, float)):
        raise ValueError
    if kind is str and not isinstance(value, str):
        raise ValueError
    try:
        value = kind(value)
    except (TypeError, ValueError, argparse.ArgumentTypeError) as error:
        raise ValueError from error
    if action.choices is not None and value not in action.choices:
        raise ValueError
    return value


def load_study_config(path: str | os.PathLike[str], parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The options of a study config (YAML, ``yaml.safe_load``) as defaults for ``parser``.

    Keys are the parser's option names as Python names (``dest``: ``finetune_epochs`` for ``--finetune-epochs``);
    values are what the option takes: a number, text, true/false for a flag, a list for an option of several values,
    null where the option's default is None. Use ``parser.set_defaults(**load_study_config(path, parser))``, so that
    flags on the command line still override the file. A missing file, an unknown key or a wrong type exits with
    status 2 and one line naming the key and the fix."""
    import yaml

    def fail(message: str) -> NoReturn:
        parser.exit(2, f"{parser.prog}: error: --config {path}: {message}\n")

    try:
        loaded = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as error:
        fail(f"cannot read it ({' '.join(str(error).split())}); pass an existing YAML file")
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        fail("the file must hold a mapping of option names to values (e.g. `epochs: 6`)")
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config") and a.option_strings}
    defaults: dict[str, Any] = {}
    for key, value in loaded.items():
        action = actions.get(key)
        if action is None:
            close = difflib.get_close_matches(str(key).replace("-", "_"), actions, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            fail(f"unknown key '{key}'; {hint}the keys are the script's options: {', '.join(actions)}")
        flag = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
        several = action.nargs in ("+", "*")
        kind = action.metavar or getattr(action.type, "__name__", "str")
        want = "true or false" if flag else f"a list of {kind}" if several else kind
        try:
            if flag:
                if not isinstance(value, bool):
                    raise ValueError
            elif value is None:
                if action.default is not None:
                    raise ValueError
            elif several:
                if not isinstance(value, list) or (action.nargs == "+" and not value):
                    raise ValueError
                value = [_config_value(v, action) for v in value]
            else:
                value = _config_value(value, action)
        except ValueError:
            choices = f" among {sorted(action.choices)}" if action.choices is not None else ""
            fail(f"key '{key}': {value!r} is not {want}{choices}; give it {want} (what "
                 f"`{action.option_strings[0]}` takes)")
        defaults[key] = value
    return defaults


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation over seeds (0 for one value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def outcome(diffs: Sequence[float]) -> str:
    """``wins`` / ``ties`` / ``loses`` for paired differences (ours − theirs) over seeds: a tie when the mean is within
    one standard deviation of the differences (with one seed: only when equal)."""
    mean, spread = mean_std(diffs)
    if abs(mean) <= spread:
        return "ties"
    return "wins" if mean > 0 else "loses"


def parse_study_args(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """``argv`` (default ``sys.argv[1:]``) parsed by ``parser`` over its ``--config`` file (:func:`load_study_config`)
    over its defaults."""
    config = parser.parse_known_args(argv)[0].config
    if config is not None:
        parser.set_defaults(**load_study_config(config, parser))
    return parser.parse_args(argv)
