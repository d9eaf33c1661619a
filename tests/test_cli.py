"""The command line: every core command runs, --json parses, user errors exit 2 with one line."""

from __future__ import annotations

import json
import sys

import pytest

from connprune import cli


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["connprune", *args])
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = exc.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_models_json(monkeypatch, capsys):
    code, out, _ = run_cli(monkeypatch, capsys, "models", "--json")
    rows = {row["name"]: row for row in json.loads(out)}
    assert code == 0 and {"mlp", "lenet5", "vgg16", "resnet20", "resnet50", "mobilenetv2"} <= set(rows)
    assert rows["resnet20"]["params"] == pytest.approx(0.27e6, rel=0.02)


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
