"""The study configs (configs/studies/): each CPU config, read through its script's own parser and
``--config`` loader (benchmarks/common.py: load_study_config), gives the settings recorded in the committed results
JSON that the actual run wrote (the independent oracle); the full configs give what ``--full`` means; a bad key or
value exits with status 2 and one line naming it; command-line flags override the file. No training."""

from __future__ import annotations

import importlib.util
import json
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STUDIES = ROOT / "configs" / "studies"
RESULTS = ROOT / "benchmarks" / "results"
LOCATIONS = {"data_dir", "out", "rewrite"}
"""Where the data were read and the results written (machine paths, not study settings; left to the command line)."""
CONFIG_KEYS = {"config", "config_content"}


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"study_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gcnet():
    return _script("reproduce_gcnet")


@pytest.fixture(scope="module")
def kfac():
    return _script("reproduce_kfac")


def gcnet_settings(module, argv: list[str]) -> dict:
    args = module.parse(argv)
    return module.study_settings(args, module.methods_list(args.splits, args.ghost_steps))


def kfac_settings(module, argv: list[str]) -> dict:
    return module.study_settings(module.parse(argv))


def test_gcnet_cpu_config_gives_the_recorded_settings(gcnet):
    recorded = json.loads((RESULTS / "reproduce_gcnet_lenet.json").read_text())["settings"]
    config = STUDIES / "gcnet-lenet-cpu.yaml"
    settings = gcnet_settings(gcnet, ["--config", str(config)])
    compared = [key for key in recorded if key not in LOCATIONS]
    assert len(compared) >= 20 and "methods" in compared
    assert {key: settings[key] for key in compared} == {key: recorded[key] for key in compared}
    assert settings["config"] == str(config) and settings["config_content"]["epochs"] == recorded["epochs"]
    # the file names every recorded setting itself (not by leaving it to a default), and nothing else
    assert set(settings["config_content"]) == {key for key in vars(gcnet.parse([])) if key in recorded} - LOCATIONS


def test_kfac_cpu_config_gives_the_recorded_settings_and_command(kfac):
    recorded = json.loads((RESULTS / "reproduce_kfac_grid.json").read_text())
    config = STUDIES / "kfac-grid-cpu.yaml"
    settings = kfac_settings(kfac, ["--config", str(config)])
    assert {key: settings[key] for key in recorded["settings"]} == recorded["settings"]
    assert set(settings) - set(recorded["settings"]) == CONFIG_KEYS and settings["config"] == str(config)
    command = shlex.split(recorded["command"])  # the run's own command line gives the same settings
    assert Path(command[0]).name == "reproduce_kfac.py"
    assert kfac_settings(kfac, command[1:]) == recorded["settings"]
    sized = {key for key in kfac.SIZED} | {"betas", "seeds", "datasets", "models"}
    assert sized <= set(settings["config_content"])  # the file names every setting it may change


def test_full_configs_are_what_full_means(gcnet, kfac):
    full = gcnet_settings(gcnet, ["--config", str(STUDIES / "gcnet-lenet-full.yaml")])
    flag = gcnet_settings(gcnet, ["--full"])
    assert {k: v for k, v in full.items() if k not in CONFIG_KEYS} == {k: v for k, v in flag.items()
                                                                        if k not in CONFIG_KEYS}
    assert full["epochs"] == 30 and full["shift_subset"] is None and full["severities"] == [1, 2, 3, 4, 5]
    full = kfac_settings(kfac, ["--config", str(STUDIES / "kfac-grid-full.yaml")])
    flag = kfac_settings(kfac, ["--full"])
    assert {k: v for k, v in full.items() if k not in CONFIG_KEYS} == {k: v for k, v in flag.items()
                                                                        if k not in CONFIG_KEYS}
    assert full["size"] == "full" and full["shrunk"] == kfac.SHRUNK["full"]
    assert kfac.parse(["--config", str(STUDIES / "kfac-grid-full.yaml")]).name == "reproduce_kfac_grid_full"


@pytest.mark.parametrize("text, words", [
    ("epoch: 6\n", ["unknown key 'epoch'", "did you mean 'epochs'"]),
    ("finetune-epochs: 1\n", ["unknown key 'finetune-epochs'", "finetune_epochs"]),
    ("epochs: six\n", ["key 'epochs'", "give it int", "'six'"]),
    ("epochs: 2.5\n", ["key 'epochs'"]),
    ("seeds: 0\n", ["key 'seeds'", "a list of int"]),
    ("full: yes please\n", ["key 'full'", "true or false"]),
    ("epochs: null\n", ["key 'epochs'"]),
    ("- epochs\n", ["mapping"]),
])
@pytest.mark.parametrize("name", ["reproduce_gcnet", "reproduce_kfac"])
def test_bad_config_exits_2_with_one_line(name, text, words, tmp_path, capsys, gcnet, kfac):
    module = {"reproduce_gcnet": gcnet, "reproduce_kfac": kfac}[name]
    if name == "reproduce_kfac" and text == "epochs: null\n":
        text = "threads: null\n"  # K-FAC's epochs default to the size's (None): null is its default there
        words = ["key 'threads'"]
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SystemExit) as exit_:
        module.parse(["--config", str(path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(path) in err, err
    assert all(word in err for word in words), err


def test_script_specific_values_are_checked(gcnet, kfac, tmp_path, capsys):
    path, missing = tmp_path / "case.yaml", tmp_path / "missing.yaml"
    cases = [(kfac, "models: [lenet300-100, resnet]\n", "key 'models'"),
             (kfac, "sparsities: [lenet5=1.5]\n", "key 'sparsities'"),
             (gcnet, "suite: imagenet\n", "key 'suite'"),
             (gcnet, "finetune_subset: some\n", "key 'finetune_subset'"),
             (gcnet, None, "cannot read it"),
             (kfac, "full: true\nsmoke: true\n", "exclude each other")]  # argparse's error: usage, then the line
    for module, text, word in cases:
        if text is not None:
            path.write_text(text)
        with pytest.raises(SystemExit) as exit_:
            module.parse(["--config", str(path if text is not None else missing)])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and word in err.strip().splitlines()[-1], (text, err)
        assert len(err.strip().splitlines()) == 1 or word == "exclude each other", err


def test_command_line_flags_override_the_config(gcnet, kfac):
    config = ["--config", str(STUDIES / "gcnet-lenet-cpu.yaml")]
    args = gcnet.parse([*config, "--epochs", "2", "--seeds", "5", "--data", "mnist", "--finetune-subset", "all"])
    assert (args.epochs, args.seeds, args.data, args.finetune_subset) == (2, [5], ["mnist"], None)
    assert args.threads == 1 and args.shift_subset == 500  # the rest from the file
    assert gcnet.parse(["--epochs", "2", *config]).epochs == 2  # wherever --config stands
    config = ["--config", str(STUDIES / "kfac-grid-cpu.yaml")]
    settings = kfac_settings(kfac, [*config, "--epochs", "2", "--sparsities", "lenet5=0.5,0.9", "--seeds", "7"])
    assert settings["epochs"] == 2 and settings["seeds"] == [7]
    assert settings["sparsities"] == {"lenet300-100": [0.5, 0.7, 0.9], "lenet5": [0.5, 0.9]}
    assert "changed: epochs = 2" in settings["shrunk"] and "changed: sparsities" in settings["shrunk"]
    assert kfac_settings(kfac, [*config, "--datasets", "mnist"])["datasets"] == ["mnist"]
