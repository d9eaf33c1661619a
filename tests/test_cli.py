"""The command line: every core command runs, --json parses, user errors exit 2 with one line, an existing --out is
never replaced silently, -h/--version work, every option has help, and the listings say what a first-time user needs
(method parameters explained, model options, partial data sets)."""

from __future__ import annotations

import gzip
import hashlib
import importlib.metadata
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import typer

from connprune import cli, methods, models
from connprune.experiments.jobs import TrainJob, chance_warning, train_dense
from connprune.train import recipes


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["connprune", *args])
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = exc.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_models_json_with_cost(monkeypatch, capsys):
    code, out, _ = run_cli(monkeypatch, capsys, "models", "--cost", "--json")
    rows = {row["name"]: row for row in json.loads(out)}
    assert code == 0 and {"mlp", "lenet5", "vgg16", "resnet20", "resnet50", "mobilenetv2"} <= set(rows)
    assert rows["resnet20"]["params"] == pytest.approx(0.27e6, rel=0.02)  # He et al. 2016, Table 6
    assert rows["resnet20"]["macs"] == pytest.approx(41e6, rel=0.05)


def test_datasets_json_finds_digits_and_explains_missing(monkeypatch, capsys, tmp_path):
    code, out, _ = run_cli(monkeypatch, capsys, "datasets", "--data-dir", str(tmp_path), "--json")
    rows = {row["name"]: row for row in json.loads(out)}
    assert code == 0 and rows["digits"]["available"] and not rows["cifar10"]["available"]
    assert "cifar-10" in rows["cifar10"]["source"]


def test_train_then_eval_with_shift(monkeypatch, capsys, tmp_path):
    ck = tmp_path / "mlp"
    code, out, _ = run_cli(monkeypatch, capsys, "train", "--model", "mlp", "--data", "digits", "--epochs", "3",
                           "--out", str(ck), "--json")
    trained = json.loads(out)
    assert code == 0 and trained["accuracy"] > 0.5
    assert json.loads((ck / "metrics.json").read_text())["accuracy"] == trained["accuracy"]
    code, out, _ = run_cli(monkeypatch, capsys, "eval", "--checkpoint", str(ck), "--shift",
                           "gaussian_noise:3,rotation:5", "--json")
    result = json.loads(out)
    assert code == 0 and result["accuracy"] == pytest.approx(trained["accuracy"])
    assert set(result["shift"]) == {"gaussian_noise:3", "rotation:5", "mean"} and result["samples"] == 450
    assert result["mca"] == pytest.approx(result["shift"]["mean"])
    assert result["relative_robustness"] == pytest.approx(result["mca"] / result["accuracy"])


@pytest.mark.parametrize("args,needle", [
    (["train", "--model", "nope", "--out", "x"], "unknown model 'nope'; choose one of"),
    (["eval", "--checkpoint", "/nonexistent"], "does not exist"),
    (["datasets", "--data-dir", "/nonexistent"], None),
])
def test_user_errors_exit_2_with_one_line(monkeypatch, capsys, args, needle):
    code, out, err = run_cli(monkeypatch, capsys, *args)
    if needle is None:
        assert code == 0
        return
    assert code == 2 and needle in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_model_param_builds_the_model_it_names(monkeypatch, capsys, tmp_path):
    out = tmp_path / "wide"
    code, _, _ = run_cli(monkeypatch, capsys, "train", "--model", "mlp", "--data", "digits", "--epochs", "1",
                         "--model-param", "widths=[24,12]", "--out", str(out), "--json")
    assert code == 0
    from connprune import checkpoint

    model = checkpoint.load(out)
    assert model.connprune_config["widths"] == [24, 12]
    code, out_text, _ = run_cli(monkeypatch, capsys, "prune", "--method", "snip", "--model", "mlp", "--data",
                                "digits", "--epochs", "0", "--model-param", "widths=[24,12]", "--sparsity", "0.5",
                                "--out", str(tmp_path / "snip"), "--json")
    assert code == 0 and json.loads(out_text)["params_before"] == 64 * 24 + 24 + 24 * 12 + 12 + 12 * 10 + 10
    code, _, err = run_cli(monkeypatch, capsys, "prune", "--method", "magnitude", "--checkpoint", str(out),
                           "--model-param", "widths=[8]", "--out", str(tmp_path / "x"))
    assert code == 2 and "drop --model-param" in err
    code, _, err = run_cli(monkeypatch, capsys, "train", "--model", "mlp", "--model-param", "num_classes=3",
                           "--out", str(tmp_path / "y"))
    assert code == 2 and "come from the data set" in err


def test_table_cells_keep_small_values_visible():
    assert cli._cell(0.5) == "0.5000" and cli._cell(0.0) == "0.0000" and cli._cell(3) == "3"
    assert cli._cell(2.5e-7) == "2.500e-07" and cli._cell(-4e-5) == "-4.000e-05"


# ----------------------------------------------------------------------------------------------- fixtures, helpers


@pytest.fixture(scope="module")
def digits_checkpoint(tmp_path_factory) -> Path:
    """A 1-epoch MLP trained on digits (1×8×8 inputs, 10 classes)."""
    out = tmp_path_factory.mktemp("trained") / "mlp"
    train_dense(TrainJob(model="mlp", data="digits", out=out, recipe={"epochs": 1}, progress=False))
    return out


def tree_digest(folder: Path) -> str:
    """A hash of every file's relative path and bytes under ``folder``."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def one_error_line(code: int, err: str) -> str:
    """The single line a user mistake prints (status 2, no traceback)."""
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, (code, err)
    return lines[0]


def command_names() -> list[str]:
    return sorted(typer.main.get_command(cli.app).commands)


# ---------------------------------------------------------------------------------------------- version, help


def test_version_prints_the_installed_version(monkeypatch, capsys):
    code, out, err = run_cli(monkeypatch, capsys, "--version")
    assert code == 0 and out.strip() == f"connprune {importlib.metadata.version('connprune')}" and not err


@pytest.mark.parametrize("command", [None, *command_names()])
def test_short_help_is_the_long_help(monkeypatch, capsys, command):
    args = [command] if command else []
    short = run_cli(monkeypatch, capsys, *args, "-h")
    long = run_cli(monkeypatch, capsys, *args, "--help")
    assert short[0] == long[0] == 0 and short[1] == long[1] and "Usage: connprune" in short[1]


def test_bare_command_shows_the_help(monkeypatch, capsys):
    code, out, err = run_cli(monkeypatch, capsys)
    assert code == 0 and "Usage: connprune" in out and "Commands" in out and not err.strip()


def test_every_option_and_argument_has_help():
    missing = []
    for name, command in typer.main.get_command(cli.app).commands.items():
        for param in command.params:
            if not (getattr(param, "help", None) or "").strip():
                missing.append(f"{name} {param.name}")
    assert not missing


def test_recipe_defaults_are_spelled_out_in_the_help():
    """`--epochs` of train and prune, and train's recipe flags, list each data set's actual default."""
    options = {(name, param.name): param.help for name, command in typer.main.get_command(cli.app).commands.items()
               for param in command.params}
    for data_set, recipe in recipes._DEFAULTS.items():
        for key in ("epochs", "batch_size", "lr", "optimizer"):
            assert f"{data_set} {recipe[key]}" in options[("train", key)], (data_set, key)
        assert f"{data_set} {recipe['epochs']}" in options[("prune", "epochs")]
    assert not any("the recipe)" in (text or "") for text in options.values())


# ------------------------------------------------------------------------------------------------- user errors


@pytest.mark.parametrize("args,needle", [
    (["train", "--model", "mlp", "--epochs", "-1", "--out", "{tmp}/x"], "'--epochs'"),
    (["train", "--model", "mlp", "--lr", "-0.1", "--out", "{tmp}/x"], "--lr"),
    (["train", "--model", "mlp", "--optimizer", "adagrad", "--out", "{tmp}/x"], "--optimizer"),
    (["train", "--model", "mlp", "--batch-size", "0", "--out", "{tmp}/x"], "'--batch-size'"),
    (["train", "--model", "mlp"], "Missing option '--out'"),
    (["train", "--model", "mlp", "--epoch", "3", "--out", "{tmp}/x"], "No such option: --epoch"),
    (["train", "--model", "nope", "--out", "{tmp}/x"], "unknown model 'nope'; choose one of"),
    (["train", "--model", "mlp", "--data", "nope", "--out", "{tmp}/x"], "unknown data set 'nope'"),
    (["train", "--model", "mlp", "--data", "cifar10", "--data-dir", "{tmp}", "--out", "{tmp}/x"],
     "data set 'cifar10' not found"),
    (["prune", "--method", "nope", "--model", "mlp", "--data", "digits", "--out", "{tmp}/x"], "unknown method 'nope'"),
    (["prune", "--method", "snip", "--model", "mlp", "--data", "digits", "--sparsity", "1.5", "--out", "{tmp}/x"],
     "sparsity"),
    (["prune", "--method", "snip", "--model", "mlp", "--data", "digits", "--param", "nope=1", "--out", "{tmp}/x"],
     "nope"),
    (["prune", "--method", "magnitude", "--out", "{tmp}/x"], "pass --checkpoint DIR"),
    (["prune", "--method", "snip", "--out", "{tmp}/x"], "pass --model NAME --data NAME"),
    (["eval", "--checkpoint", "/nonexistent"], "does not exist"),
    (["eval", "--checkpoint", "/nonexistent", "--scree", "{tmp}/x"], "only apply with --connectivity"),
    (["eval", "--checkpoint", "/nonexistent", "--heat-taps", "first"], "only apply with --connectivity"),
    (["export", "--checkpoint", "/nonexistent", "--format", "pt2", "--out", "{tmp}/x.pt2"], "/nonexistent"),
    (["run", "{tmp}/missing.yaml", "--out", "{tmp}/x"], "missing.yaml"),
    (["run", "{tmp}/missing.yaml", "--out", "{tmp}/x", "--jobs", "0"], "'--jobs'"),
    (["methods", "nope"], "unknown method 'nope'"),
    (["report", "{tmp}/x"], "{tmp}/x"),
])
def test_user_errors_exit_2_with_one_line_and_write_nothing(monkeypatch, capsys, tmp_path, args, needle):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert needle.replace("{tmp}", str(tmp_path)) in one_error_line(code, err)
    assert not (tmp_path / "x").exists()


def test_datasets_with_a_missing_data_dir_is_no_error(monkeypatch, capsys):
    code, out, _ = run_cli(monkeypatch, capsys, "datasets", "--data-dir", "/nonexistent", "--json")
    assert code == 0 and {r["name"]: r["available"] for r in json.loads(out)}["mnist"] is False


def test_eval_on_a_data_set_of_another_shape_names_the_training_set(monkeypatch, capsys, digits_checkpoint):
    """A digits model (1×8×8) evaluated on MNIST (1×28×28) is refused before any MNIST file is looked for."""
    code, _, err = run_cli(monkeypatch, capsys, "eval", "--checkpoint", str(digits_checkpoint), "--data", "mnist",
                           "--data-dir", "/nonexistent")
    line = one_error_line(code, err)
    assert "trained on digits (1×8×8 images, 10 classes)" in line and "mnist has 1×28×28" in line
    assert "--data digits" in line
    code, _, err = run_cli(monkeypatch, capsys, "prune", "--method", "magnitude", "--checkpoint",
                           str(digits_checkpoint), "--data", "cifar10", "--out", str(digits_checkpoint.parent / "p"))
    assert "trained on digits" in one_error_line(code, err)


@pytest.mark.parametrize("extra,needle", [
    (["--method", "magnitude", "--model", "mlp"], "--model would be ignored"),
    (["--method", "magnitude", "--epochs", "3"], "--epochs would be ignored"),
    (["--method", "snip", "--model", "mlp", "--data", "digits"], "--checkpoint would be ignored"),
])
def test_conflicting_prune_flags_are_errors(monkeypatch, capsys, digits_checkpoint, tmp_path, extra, needle):
    code, _, err = run_cli(monkeypatch, capsys, "prune", "--checkpoint", str(digits_checkpoint), *extra,
                           "--out", str(tmp_path / "p"))
    assert needle in one_error_line(code, err) and not (tmp_path / "p").exists()


def test_finetune_epochs_with_a_method_that_prunes_at_initialisation_is_an_error(monkeypatch, capsys, tmp_path):
    code, _, err = run_cli(monkeypatch, capsys, "prune", "--method", "snip", "--model", "mlp", "--data", "digits",
                           "--finetune-epochs", "2", "--out", str(tmp_path / "p"))
    assert "--finetune-epochs would be ignored" in one_error_line(code, err)


# ---------------------------------------------------------------------------------------------------- --out


def test_existing_out_is_refused_and_kept_unless_overwrite(monkeypatch, capsys, tmp_path, digits_checkpoint):
    ck = tmp_path / "ck"
    code, _, _ = run_cli(monkeypatch, capsys, "train", "--model", "mlp", "--epochs", "2", "--out", str(ck), "--json")
    assert code == 0
    before = tree_digest(ck)
    code, _, err = run_cli(monkeypatch, capsys, "train", "--model", "mlp", "--epochs", "1", "--out", str(ck))
    line = one_error_line(code, err)
    assert str(ck) in line and "--overwrite" in line and "--resume" in line
    code, _, err = run_cli(monkeypatch, capsys, "prune", "--method", "magnitude", "--checkpoint",
                           str(digits_checkpoint), "--out", str(ck))
    line = one_error_line(code, err)
    assert "--overwrite" in line and "--resume" not in line  # prune has no --resume
    assert tree_digest(ck) == before
    # --resume on a finished checkpoint: nothing to do, nothing rewritten
    code, out, _ = run_cli(monkeypatch, capsys, "train", "--model", "mlp", "--epochs", "2", "--out", str(ck),
                           "--resume", "--json")
    assert code == 0 and json.loads(out)["epochs"] == 2 and tree_digest(ck) == before
    code, out, _ = run_cli(monkeypatch, capsys, "train", "--model", "mlp", "--epochs", "1", "--out", str(ck),
                           "--overwrite", "--json")
    assert code == 0 and json.loads((ck / "metrics.json").read_text())["epochs"] == 1
    code, _, _ = run_cli(monkeypatch, capsys, "prune", "--method", "magnitude", "--checkpoint",
                         str(digits_checkpoint), "--out", str(ck), "--overwrite", "--json")
    assert code == 0 and json.loads((ck / "metrics.json").read_text())["method"] == "magnitude"


def test_a_folder_that_is_not_a_checkpoint_is_never_replaced(monkeypatch, capsys, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    for extra in ([], ["--overwrite"], ["--resume"]):
        code, _, err = run_cli(monkeypatch, capsys, "train", "--model", "mlp", "--epochs", "1", "--out",
                               str(folder), *extra)
        assert "not a connprune checkpoint" in one_error_line(code, err)
    assert [p.name for p in folder.iterdir()] == ["notes.txt"] and (folder / "notes.txt").read_text() == "keep me"
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, _ = run_cli(monkeypatch, capsys, "train", "--model", "mlp", "--epochs", "1", "--out", str(empty),
                         "--json")
    assert code == 0 and (empty / "model.json").is_file()


# --------------------------------------------------------------------------------------------------- methods


def field_descriptions(name: str) -> dict[str, str]:
    """Each parameter's docstring, straight from the method's pydantic model."""
    return {key: " ".join((field.description or "").split())
            for key, field in methods.get(name).Params.model_fields.items()}


def test_every_method_parameter_has_a_description():
    missing = [f"{name}.{key}" for name in methods.names() for key, text in field_descriptions(name).items()
               if not text]
    assert not missing, "add a docstring under these fields: " + ", ".join(missing)


@pytest.mark.parametrize("name", ["snip", "kfac", "snacs"])
def test_methods_name_shows_every_parameter_with_default_and_description(monkeypatch, capsys, name):
    monkeypatch.setenv("COLUMNS", "5000")  # one table row per line, so each row can be read back
    code, out, _ = run_cli(monkeypatch, capsys, "methods", name)
    assert code == 0
    method = methods.get(name)
    assert method.paper in out and method.summary in out and method.kind.value in out
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") >= 4}
    for key, field in method.Params.model_fields.items():
        default = field.get_default(call_default_factory=True)
        assert key in rows, key
        assert json.dumps(default) in rows[key] and field_descriptions(name)[key] in rows[key], key
    code, out, _ = run_cli(monkeypatch, capsys, "methods", name, "--json")
    described = json.loads(out)
    assert code == 0 and described["descriptions"] == field_descriptions(name)
    assert described["parameters"] == json.loads(json.dumps(method.Params().model_dump()))


def test_methods_table_lists_parameter_names_only(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "400")
    code, out, _ = run_cli(monkeypatch, capsys, "methods")
    assert code == 0 and "connprune methods NAME" in out
    snacs_row = next(line for line in out.splitlines() if line.startswith("│ snacs "))
    assert "samples_per_class" in snacs_row and "samples_per_class=" not in snacs_row
    code, out, _ = run_cli(monkeypatch, capsys, "methods", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert code == 0 and set(rows) == set(methods.names())
    assert all(r["descriptions"] == field_descriptions(n) for n, r in rows.items())


# ---------------------------------------------------------------------------------------------------- models


def test_models_is_fast_and_lists_the_model_param_keys(monkeypatch, capsys):
    run_cli(monkeypatch, capsys, "models", "--json")  # imports warm
    started = time.perf_counter()
    code, out, _ = run_cli(monkeypatch, capsys, "models", "--json")
    assert code == 0 and time.perf_counter() - started < 2.0
    rows = {row["name"]: row for row in json.loads(out)}
    assert "params" not in rows["resnet20"]  # nothing was built
    # the listed defaults are what the built model has
    mlp = models.create("mlp")
    hidden = [m.out_features for m in mlp.modules() if isinstance(m, torch_nn().Linear)][:-1]
    assert rows["mlp"]["options"]["widths"] == hidden
    assert all(getattr(mlp, key) == value for key, value in rows["mlp"]["options"].items() if key != "widths")
    stem = next(m for m in models.create("resnet18").modules() if isinstance(m, torch_nn().Conv2d))
    assert rows["resnet18"]["options"] == {"small_input": stem.kernel_size == (3, 3)}
    assert rows["lenet5"]["options"] == {}
    for name, row in rows.items():  # every listed key is one --model-param accepts; the data set's keys are not listed
        assert not {"num_classes", "in_channels", "input_size"} & set(row["options"])
        models.resolve_config(name, **row["options"])
    code, out, _ = run_cli(monkeypatch, capsys, "models")
    assert code == 0 and "widths=[256, 128]" in out


def torch_nn():
    from torch import nn

    return nn


# -------------------------------------------------------------------------------------------------- datasets


def write_idx(path: Path, magic: int, shape: tuple[int, ...], count: int) -> None:
    header = magic.to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in (count, *shape))
    with gzip.open(path, "wb") as f:
        f.write(header + bytes(count * int(np.prod(shape or (1,)))))


def test_datasets_says_which_copies_are_partial(monkeypatch, capsys, tmp_path):
    partial = tmp_path / "cifar-10-partial"
    partial.mkdir()
    rng = np.random.default_rng(0)
    np.savez(partial / "cifar10_partial.npz", train_data=rng.integers(0, 255, (7, 3072), dtype=np.uint8),
             train_labels=np.arange(7) % 10, test_data=rng.integers(0, 255, (3, 3072), dtype=np.uint8),
             test_labels=np.arange(3))
    mnist = tmp_path / "mnist"
    mnist.mkdir()
    for split, count in (("train", 5), ("t10k", 2)):
        write_idx(mnist / f"{split}-images-idx3-ubyte.gz", 2051, (28, 28), count)
        write_idx(mnist / f"{split}-labels-idx1-ubyte.gz", 2049, (), count)
    code, out, _ = run_cli(monkeypatch, capsys, "datasets", "--data-dir", str(tmp_path), "--json")
    rows = {row["name"]: row for row in json.loads(out)}
    from connprune import data

    loaded = {split: len(data.load("cifar10", split, tmp_path)) for split in ("train", "test")}
    assert code == 0 and rows["cifar10"]["samples"] == loaded == {"train": 7, "test": 3}
    assert rows["cifar10"]["partial"] and rows["cifar10"]["note"] == "partial (7 train / 3 test)"
    assert rows["mnist"]["partial"] and rows["mnist"]["note"] == "partial (5 train / 2 test)"
    assert not rows["digits"]["partial"] and not rows["fashion-mnist"]["available"]
    monkeypatch.setenv("COLUMNS", "400")
    code, out, _ = run_cli(monkeypatch, capsys, "datasets", "--data-dir", str(tmp_path))
    cifar_row = next(line for line in out.splitlines() if line.startswith("│ cifar10 "))
    assert "yes, partial (7 train / 3 test)" in cifar_row


def test_a_complete_copy_is_not_called_partial(monkeypatch, capsys, tmp_path):
    mnist = tmp_path / "mnist"
    mnist.mkdir()
    for split, count in (("train", 60_000), ("t10k", 10_000)):  # the official counts (blank images)
        write_idx(mnist / f"{split}-images-idx3-ubyte.gz", 2051, (28, 28), count)
        write_idx(mnist / f"{split}-labels-idx1-ubyte.gz", 2049, (), count)
    code, out, _ = run_cli(monkeypatch, capsys, "datasets", "--data-dir", str(tmp_path), "--json")
    mnist_row = {row["name"]: row for row in json.loads(out)}["mnist"]
    assert code == 0 and mnist_row["samples"] == {"train": 60_000, "test": 10_000} and not mnist_row["partial"]
    assert mnist_row["note"] == ""


# ------------------------------------------------------------------------------------------ logs and warnings


def test_json_keeps_progress_on_stderr_and_log_lines_whole(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("COLUMNS", "40")  # narrower than any epoch line
    code, out, err = run_cli(monkeypatch, capsys, "train", "--model", "mlp", "--epochs", "2", "--out",
                             str(tmp_path / "ck"), "--json")
    assert code == 0 and json.loads(out)["epochs"] == 2
    epoch_lines = [line for line in err.splitlines() if re.search(r"epoch \d/2", line)]
    assert len(epoch_lines) == 2
    for line in epoch_lines:  # every key with its value, on the one line
        for key in ("train_loss", "train_accuracy", "lr", "test_loss", "test_accuracy"):
            assert re.search(rf"\b{key} \d+\.\d{{4}}", line), (key, line)


def test_a_method_at_chance_gets_a_warning_with_the_likely_cause(monkeypatch, capsys, tmp_path):
    code, out, err = run_cli(monkeypatch, capsys, "prune", "--method", "snip", "--model", "mlp", "--data", "digits",
                             "--epochs", "0", "--sparsity", "0.99", "--out", str(tmp_path / "snip"), "--json")
    metrics = json.loads(out)
    assert code == 0 and metrics["acc_after"] <= 0.1 + 0.05
    warning = next(line for line in err.splitlines() if line.startswith("warning:"))
    assert "at chance (1/10 = 0.100)" in warning and "too few epochs (0)" in warning and "sparsity (0.99)" in warning
    assert metrics["warning"] in warning
    assert json.loads((tmp_path / "snip" / "metrics.json").read_text())["warning"] == metrics["warning"]


def test_a_pruned_model_above_chance_gets_no_warning(monkeypatch, capsys, tmp_path, digits_checkpoint):
    code, out, err = run_cli(monkeypatch, capsys, "prune", "--method", "magnitude", "--checkpoint",
                             str(digits_checkpoint), "--sparsity", "0.3", "--out", str(tmp_path / "m"), "--json")
    metrics = json.loads(out)
    assert code == 0 and metrics["acc_after"] > 0.5 and "warning" not in metrics and "warning:" not in err


def test_chance_warning_names_the_cause_that_applies():
    trained, at_init = methods.create("magnitude"), methods.create("snip")
    assert chance_warning(trained, 0.5, 0.9, 0.6, 10, 0) == {}
    assert chance_warning(trained, 0.5, 0.9, 0.14, 200, 0) == {}  # 28 × chance: not at chance
    text = chance_warning(trained, 0.5, 0.09, 0.1, 10, 0)["warning"]
    assert "before pruning" in text and "--epochs" not in text and "sparsity" not in text
    text = chance_warning(at_init, 0.95, 0.1, 0.1, 10, 3)["warning"]
    assert "too few epochs (3)" in text and "sparsity (0.95)" in text and "learning rate" in text
    assert chance_warning(at_init, 0.5, 0.1, 0.12, 10, 3)  # 1/10 + 0.05 margin
    assert not chance_warning(at_init, 0.5, 0.1, 0.16, 10, 3)
