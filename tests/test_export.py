"""connprune export: ONNX / pt2 files that compute what the checkpoint computes (checked against PyTorch here)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from connprune import checkpoint, cli
from connprune.errors import UserError
from connprune.experiments.export import export_checkpoint
from connprune.measure.runtime import EXPORT_EXTRA, OnnxSession, to_onnx

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

SHAPE = (1, 8, 8)  # scikit-learn's digits


def connprune(*args: str) -> None:
    """Run a ``connprune`` command in this process (the documented CLI: the most stable way to make checkpoints)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["connprune", *args, "--json"])
        try:
            cli.main()
        except SystemExit as exc:
            assert not exc.code, f"connprune {' '.join(args)} exited with {exc.code}"


@pytest.fixture(scope="module")
def dense_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ResNet-20 trained one epoch on digits (BN statistics that are not the identity)."""
    out = tmp_path_factory.mktemp("export") / "dense"
    connprune("train", "--model", "resnet20", "--data", "digits", "--epochs", "1", "--out", str(out))
    return out


@pytest.fixture(scope="module")
def pruned_dir(dense_dir: Path) -> Path:
    """The dense checkpoint with half its weights' channels physically removed (l1-filter, shrunk)."""
    out = dense_dir.parent / "pruned"
    connprune("prune", "--checkpoint", str(dense_dir), "--method", "l1-filter", "--sparsity", "0.5", "--out", str(out))
    return out


@pytest.fixture(scope="module")
def masked_dir(dense_dir: Path) -> Path:
    """The dense checkpoint with 70 % of its weights masked (magnitude pruning: masks stored beside the weights)."""
    out = dense_dir.parent / "masked"
    connprune("prune", "--checkpoint", str(dense_dir), "--method", "magnitude", "--sparsity", "0.7", "--out", str(out))
    return out


def checkpoint_outputs(directory: Path, x: torch.Tensor) -> torch.Tensor:
    """What the checkpoint computes: the model checkpoint.load rebuilds (masks applied), in PyTorch."""
    with torch.no_grad():
        return checkpoint.load(directory)(x)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max())


@pytest.mark.parametrize("which", ["dense", "pruned", "masked"])
def test_onnx_round_trip_matches_the_checkpoint(which: str, dense_dir: Path, pruned_dir: Path, masked_dir: Path,
                                                tmp_path: Path) -> None:
    directory = {"dense": dense_dir, "pruned": pruned_dir, "masked": masked_dir}[which]
    out = tmp_path / f"{which}.onnx"
    report = export_checkpoint(directory, "onnx", out)
    assert out.is_file() and report.bytes == out.stat().st_size
    assert report.max_relative_error <= 1e-4 and report.input_shape == list(SHAPE)
    batchnorms = [m for m in checkpoint.load(directory).modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert report.batchnorms_folded == len(batchnorms) > 0 and report.batchnorms_kept == []  # every BN follows a conv
    x = torch.randn(6, *SHAPE, generator=torch.Generator().manual_seed(11))  # not the batches export checked
    assert relative(checkpoint_outputs(directory, x), OnnxSession(out)(x)) < 1e-4
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary file left beside it


def test_pruned_export_is_smaller_and_keeps_the_masks(dense_dir: Path, pruned_dir: Path, masked_dir: Path,
                                                      tmp_path: Path) -> None:
    dense = export_checkpoint(dense_dir, "onnx", tmp_path / "dense.onnx")
    pruned = export_checkpoint(pruned_dir, "onnx", tmp_path / "pruned.onnx")
    assert pruned.macs < 0.6 * dense.macs and pruned.bytes < 0.6 * dense.bytes  # the shrunk widths are exported
    masks = checkpoint.load_checkpoint(masked_dir).masks
    assert masks and sum(int((~m).sum()) for m in masks.values()) > 0
    onnx = pytest.importorskip("onnx")
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "dense.onnx")).graph.initializer}
    masked_export = export_checkpoint(masked_dir, "onnx", tmp_path / "masked.onnx")
    masked_weights = [onnx.numpy_helper.to_array(t) for t in onnx.load(masked_export.path).graph.initializer]
    zeros = sum(int((w == 0).sum()) for w in masked_weights if w.ndim == 4)
    assert zeros >= 0.5 * sum(int((~m).sum()) for m in masks.values())  # masked weights are exported as zeros
    assert sum(int((w == 0).sum()) for w in weights.values() if w.ndim == 4) < zeros


def test_pt2_round_trip(pruned_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "pruned.pt2"
    report = export_checkpoint(pruned_dir, "pt2", out)
    assert out.is_file() and report.max_relative_error <= 1e-4
    assert any(key.startswith("exported program") for key in report.errors)
    # The test loads the archive it has just written itself (torch.export.load may unpickle: connprune never does).
    program = torch.export.load(str(out))
    x = torch.randn(5, *SHAPE, generator=torch.Generator().manual_seed(12))
    with torch.no_grad():
        assert relative(checkpoint_outputs(pruned_dir, x), program.module()(x)) < 1e-4


def test_dynamo_exporter_round_trip(tmp_path: Path) -> None:
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 8 * 8, 3)).eval()
    out = to_onnx(model, torch.randn(2, *SHAPE), tmp_path / "m.onnx", exporter="dynamo")
    x = torch.randn(5, *SHAPE)  # another batch size than exported: the batch dimension is dynamic
    with torch.no_grad():
        assert relative(model(x), OnnxSession(out)(x)) < 1e-5
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # weights inside, no external data file


def test_existing_out_is_refused_unless_overwrite(dense_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.onnx"
    out.write_text("keep me")
    with pytest.raises(UserError, match="already exists.*--overwrite"):
        export_checkpoint(dense_dir, "onnx", out)
    with pytest.raises(UserError, match="already exists"):
        export_checkpoint(dense_dir, "pt2", out)
    assert out.read_text() == "keep me"
    export_checkpoint(dense_dir, "onnx", out, overwrite=True)
    assert out.read_bytes()[:20] != b"keep me"[:20] and OnnxSession(out).input_names == ["input"]


def test_an_export_off_by_more_than_the_tolerance_writes_nothing(dense_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.onnx"
    with pytest.raises(UserError, match="differs from the checkpoint.*not written"):
        export_checkpoint(dense_dir, "onnx", out, tolerance=0.0)  # float rounding alone is > 0
    assert list(tmp_path.iterdir()) == []


def test_bad_format_and_missing_extra(dense_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UserError, match="unknown export format 'tflite'"):
        export_checkpoint(dense_dir, "tflite", tmp_path / "m.tflite")  # type: ignore[arg-type]
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    with pytest.raises(UserError, match="onnxruntime.*" + EXPORT_EXTRA.replace("[", r"\[").replace("]", r"\]")):
        export_checkpoint(dense_dir, "onnx", tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(UserError, match="'onnx' package.*connprune\\[export\\]"):
        to_onnx(torch.nn.Linear(2, 2), torch.randn(2, 2), tmp_path / "l.onnx")


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``connprune *argv`` in this process: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["connprune", *argv])
    try:
        cli.main()
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    captured = capsys.readouterr()
    return int(code), captured.out, captured.err


def test_cli_export(dense_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                    capsys: pytest.CaptureFixture[str]) -> None:
    def run(*args: str) -> tuple[int, str, str]:
        return run_cli(monkeypatch, capsys, "export", "--checkpoint", str(dense_dir), *args)

    out = tmp_path / "cli.pt2"
    code, stdout, _ = run("--format", "pt2", "--out", str(out), "--json")
    payload = json.loads(stdout)
    assert code == 0 and payload["max_relative_error"] <= 1e-4 and Path(payload["path"]) == out and out.is_file()
    code, stdout, _ = run("--format", "onnx", "--out", str(tmp_path / "cli.onnx"))
    assert code == 0 and "max relative error" in stdout and (tmp_path / "cli.onnx").is_file()
    code, _, err = run("--format", "pt2", "--out", str(out))
    assert code == 2 and "already exists" in err and len(err.strip().splitlines()) == 1


def test_eval_times_the_model_where_it_will_run(pruned_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """``eval --cost --runtime onnxruntime --fold-bn`` times an ONNX Runtime session of the folded model (the runner
    prepared once for both batch sizes); the runtime options without --cost are refused."""
    from connprune.measure import latency as latency_module

    prepared = []
    real_prepare = latency_module.prepare

    def recording_prepare(model, input_shape, **options):
        runner = real_prepare(model, input_shape, **options)
        prepared.append((options, runner.runtime))
        return runner

    monkeypatch.setattr(latency_module, "prepare", recording_prepare)

    def run(*args: str) -> tuple[int, str, str]:
        return run_cli(monkeypatch, capsys, "eval", "--checkpoint", str(pruned_dir), *args)

    code, stdout, _ = run("--cost", "--runtime", "onnxruntime", "--fold-bn", "--json")
    payload = json.loads(stdout)
    assert code == 0 and payload["latency_runtime"] == "onnxruntime+fold_bn"
    assert payload["params"] == sum(p.numel() for p in checkpoint.load(pruned_dir).parameters())
    assert [runtime for _, runtime in prepared] == ["onnxruntime"] and prepared[0][0]["fold_bn"] is True
    code, _, err = run("--runtime", "onnxruntime")
    assert code == 2 and "--cost" in err and len(err.strip().splitlines()) == 1
    code, _, err = run("--cost", "--runtime", "onnxruntime", "--channels-last")
    assert code == 2 and "torch" in err and len(err.strip().splitlines()) == 1
