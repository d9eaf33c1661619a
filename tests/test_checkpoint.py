"""Checkpoints: bit-exact round trips, shrunk widths, masks, clear errors on damaged or crafted files (checked before
anything is allocated), and a process killed mid-save never leaves a half-written checkpoint."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from connprune import checkpoint, models
from connprune.errors import UserError
from connprune.surgery import edits, skips


@pytest.mark.parametrize("name,config", [("mlp", {"input_size": 8}), ("resnet20", {}), ("mobilenetv2", {})])
def test_round_trip_is_bit_exact(tmp_path, name, config):
    torch.manual_seed(0)
    model = models.create(name, **config)
    for m in model.modules():  # make BN statistics non-trivial
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    checkpoint.save(model, tmp_path / "ck", data_info={"name": "digits"}, metrics={"accuracy": 0.5})
    loaded = checkpoint.load_checkpoint(tmp_path / "ck")
    assert not loaded.model.training and loaded.metrics == {"accuracy": 0.5}
    for (key, a), (key_b, b) in zip(model.state_dict().items(), loaded.model.state_dict().items()):
        assert key == key_b and torch.equal(a, b)
    x = torch.randn(2, *((1, 8, 8) if name == "mlp" else (3, 32, 32)))
    assert torch.equal(model.eval()(x), loaded.model(x))
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_shrunk_widths_and_masks_are_rebuilt(tmp_path):
    model = models.create("mlp", input_size=8, widths=[32, 16])
    layers = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    first, second = (model.get_submodule(n) for n in layers[:2])
    parent0, _, child0 = layers[0].rpartition(".")
    parent1, _, child1 = layers[1].rpartition(".")
    setattr(model.get_submodule(parent0) if parent0 else model, child0, nn.Linear(first.in_features, 20))
    setattr(model.get_submodule(parent1) if parent1 else model, child1, nn.Linear(20, second.out_features))
    mask = torch.rand_like(model.get_submodule(layers[0]).weight) > 0.5
    checkpoint.save(model, tmp_path / "ck", masks={f"{layers[0]}.weight": mask})
    meta = json.loads((tmp_path / "ck" / "model.json").read_text())
    assert meta["widths"][layers[0]] == [64, 20]
    loaded = checkpoint.load(tmp_path / "ck")
    weight = loaded.get_submodule(layers[0]).weight
    assert weight.shape == (20, 64) and torch.all(weight[~mask] == 0)
    assert checkpoint.load_checkpoint(tmp_path / "ck").masks[f"{layers[0]}.weight"].dtype == torch.bool


def test_damaged_checkpoints_give_clear_errors(tmp_path):
    model = models.create("mlp", input_size=8)
    directory = checkpoint.save(model, tmp_path / "ck")
    with pytest.raises(UserError, match="does not exist"):
        checkpoint.load(tmp_path / "nowhere")
    weights = directory / "model.safetensors"
    blob = weights.read_bytes()
    weights.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(UserError, match="truncated or corrupt"):
        checkpoint.load(directory)
    weights.unlink()
    with pytest.raises(UserError, match="model.safetensors is missing"):
        checkpoint.load(directory)


def test_checkpoint_from_another_architecture_is_refused(tmp_path):
    checkpoint.save(models.create("resnet20"), tmp_path / "ck")
    meta_path = tmp_path / "ck" / "model.json"
    meta = json.loads(meta_path.read_text())
    meta["architecture"], meta["widths"] = "resnet32", {}
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(UserError, match="does not match architecture 'resnet32'"):
        checkpoint.load(tmp_path / "ck")


def test_any_module_saves_and_needs_its_model_named_to_load(tmp_path):
    layer = nn.Linear(2, 2)
    checkpoint.save(layer, tmp_path / "ck")
    with pytest.raises(UserError, match=r"torch.nn.modules.linear.Linear .*model=YourModel\(\)"):
        checkpoint.load(tmp_path / "ck")
    assert torch.equal(checkpoint.load(tmp_path / "ck", model=nn.Linear(2, 2)).weight, layer.weight.detach())
    with pytest.raises(UserError, match="is a torch.nn.modules.conv.Conv2d but the checkpoint's is a .*Linear"):
        checkpoint.load(tmp_path / "ck", model=nn.Conv2d(2, 2, 1))
    with pytest.raises(UserError, match="not an importable factory"):
        checkpoint.save(layer, tmp_path / "other", architecture="no factory here")


def test_a_bias_added_by_surgery_survives_the_round_trip(tmp_path):
    model = models.create("resnet20")
    conv = model.get_submodule("conv1")
    assert conv.bias is None  # the architecture has none: surgery folding a constant unit may create one
    conv.bias = nn.Parameter(torch.randn(conv.out_channels))
    checkpoint.save(model, tmp_path / "ck")
    loaded = checkpoint.load(tmp_path / "ck")
    assert torch.equal(loaded.get_submodule("conv1").bias, conv.bias.detach())
    assert loaded.get_submodule("layer1.0.conv1").bias is None


# -- model.json is checked against the weights' header before anything is allocated ---------------------------------


def _saved_mlp(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return checkpoint.save(models.create("mlp", input_size=8, widths=[32, 16]), tmp_path / "ck")


def _edit_meta(directory: Path, change) -> None:
    path = directory / "model.json"
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


def test_an_edited_width_is_refused_naming_the_layer(tmp_path):
    directory = _saved_mlp(tmp_path)
    _edit_meta(directory, lambda m: m["widths"].update({"features.0": [64, 33]}))
    with pytest.raises(UserError, match=r"layer 'features\.0'.*\[33\].*F32 \[32\]"):
        checkpoint.load(directory)


def test_absurd_sizes_are_refused_before_building(tmp_path):
    directory = _saved_mlp(tmp_path)
    _edit_meta(directory, lambda m: m["widths"].update({"features.0": [64, 50_000_000]}))
    with pytest.raises(UserError, match=r"widths\.features\.0\[1\] is 50,000,000, outside 0 to 16,777,216"):
        checkpoint.load(directory)
    directory = _saved_mlp(tmp_path / "second")
    _edit_meta(directory, lambda m: m["config"].update({"widths": [50_000_000, 16]}))
    with pytest.raises(UserError, match=r"config\.widths\[0\] is 50,000,000"):
        checkpoint.load(directory)
    directory = _saved_mlp(tmp_path / "third")
    _edit_meta(directory, lambda m: m["widths"].update({"features.0": "wide"}))
    with pytest.raises(UserError, match=r"layer 'features\.0' has width 'wide'"):
        checkpoint.load(directory)


LOAD_UNDER_A_MEMORY_LIMIT = """
import resource, sys
from connprune import checkpoint
from connprune.errors import UserError

def mapped() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024

checkpoint.load_checkpoint(sys.argv[1])          # once, so that every library it uses is loaded
limit = mapped() + (768 << 20)                   # then at most 768 MiB more address space
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
checkpoint.load_checkpoint(sys.argv[1])
print("intact checkpoint loaded")
try:
    checkpoint.load_checkpoint(sys.argv[2])
except UserError as exc:
    print("UserError:", exc)
"""


def test_a_crafted_width_costs_no_memory(tmp_path):
    """A hidden layer of 16 million units (the largest width model.json may record) would take 16e6 × (64 + 16) ×
    4 bytes = 5.1 GB to build; the load runs under an address-space limit 768 MiB above what the interpreter holds,
    so it can only end in the UserError if it allocates nothing for the crafted layers."""
    intact = _saved_mlp(tmp_path / "intact")
    crafted = _saved_mlp(tmp_path / "crafted")
    units = 1 << 24
    assert units * (64 + 16) * 4 > 5 * (768 << 20)
    _edit_meta(crafted, lambda m: m["widths"].update({"features.0": [64, units], "features.2": [units, 16]}))
    script = tmp_path / "load.py"
    script.write_text(LOAD_UNDER_A_MEMORY_LIMIT)
    result = subprocess.run([sys.executable, str(script), str(intact), str(crafted)], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0] == "intact checkpoint loaded"
    assert lines[1].startswith("UserError: layer 'features.0'") and "16777216" in lines[1]


def test_dtypes_masks_and_skips_are_checked_against_the_header(tmp_path):
    directory = _saved_mlp(tmp_path)
    weights = directory / "model.safetensors"
    tensors = load_file(str(weights))
    save_file({**tensors, "features.2.weight": tensors["features.2.weight"].to(torch.int32)}, str(weights))
    with pytest.raises(UserError, match=r"layer 'features\.2'.*float .* I32"):
        checkpoint.load(directory)
    save_file({**tensors, "mask::features.2.weight": torch.ones(3, 3, dtype=torch.bool)}, str(weights))
    with pytest.raises(UserError, match=r"mask 'features\.2\.weight' \(BOOL \[3, 3\]\) does not fit"):
        checkpoint.load(directory)
    save_file({**tensors, "mask::features.2.weight": torch.ones(16, 32)}, str(weights))
    with pytest.raises(UserError, match=r"mask 'features\.2\.weight' \(F32"):
        checkpoint.load(directory)

    model = models.create("lenet5")
    site = skips.plan(model, (1, 28, 28), span=2)[0]
    masks = edits.perform(model, {"op": "skip", **site.spec("s0", "n2n", connections=10, seed=0)})
    checkpoint.save(model, tmp_path / "skip", masks=masks)
    assert checkpoint.load_checkpoint(tmp_path / "skip").masks.keys() == masks.keys()
    _edit_meta(tmp_path / "skip", lambda m: m["edits"][0].update({"in_units": 4000, "out_units": 4000}))
    with pytest.raises(UserError, match=r"skip 's0' records 4000 × 4000 units but model.safetensors holds \[16, 1\]"):
        checkpoint.load(tmp_path / "skip")


# -- a process killed while it saves over an existing checkpoint -------------------------------------------------------

SAVE_AND_DIE = """
import os, signal, sys, torch
from connprune import checkpoint, models
from connprune.utils import io

target, point = sys.argv[1], sys.argv[2]
model = models.create("mlp", input_size=8, widths=[256, 128])


def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)


def stamp(k: int) -> None:
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(k)


def half_written(tensors, filename, *args, **kwargs):   # half of the new weights on disk, then killed
    real_save_file(tensors, filename)
    with open(filename, "r+b") as handle:
        handle.truncate(os.path.getsize(filename) // 2)
    die()


def second_replace_dies(src, dst):                       # killed between the two renames of the fallback
    calls.append(dst)
    if len(calls) == 2:
        die()
    real_replace(src, dst)


if point == "loop":                                      # saves in a loop until the test kills this process
    io.exchange = (lambda a, b: False) if sys.argv[3] == "fallback" else io.exchange
    for k in range(2, 1_000_000):
        stamp(k)
        checkpoint.save(model, target, metrics={"k": k})
        print(k, flush=True)
    sys.exit(0)
stamp(1)
checkpoint.save(model, target, metrics={"k": 1})
real_save_file, real_replace, calls = checkpoint.save_file, os.replace, []
if point == "weights":
    checkpoint.save_file = half_written
elif point == "between-renames":
    io.exchange = lambda a, b: False                     # as on a system without renameat2
    io.os.replace = second_replace_dies
elif point == "after-swap":
    io.shutil.rmtree = die                               # swapped in, the old copy not yet removed
stamp(2)
checkpoint.save(model, target, metrics={"k": 2})
print("not killed", flush=True)
"""


def _stamp_of(directory: Path) -> int:
    """The k that every tensor of a saved checkpoint was filled with, after checking that all agree."""
    loaded = checkpoint.load_checkpoint(directory)
    k = loaded.metrics["k"]
    assert all(torch.all(p == k) for p in loaded.model.parameters()), "weights of two saves mixed"
    assert sorted(p.name for p in directory.iterdir()) == ["metrics.json", "model.json", "model.safetensors"]
    return k


def _visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


@pytest.mark.parametrize("point,survivor", [("weights", 1), ("between-renames", 1), ("after-swap", 2)])
def test_a_kill_during_a_save_leaves_one_whole_checkpoint(tmp_path, point, survivor):
    """SIGKILL while ``save`` writes over an existing checkpoint: with the new weights half on disk, between the two
    renames of the fallback without renameat2 (the old checkpoint is moved aside, the new one not yet in place), and
    after the atomic swap. A reader then finds one whole checkpoint (the old one, or the complete new one), and the
    next save cleans up what the killed process left."""
    target = tmp_path / "ck"
    script = tmp_path / "save.py"
    script.write_text(SAVE_AND_DIE)
    result = subprocess.run([sys.executable, str(script), str(target), point], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert _visible(tmp_path) == (["save.py"] if point == "between-renames" else ["ck", "save.py"])
    assert any(p.name.startswith(".ck.") for p in tmp_path.iterdir())  # the killed writer's leftovers
    assert _stamp_of(target) == survivor  # loading puts a checkpoint moved aside back first
    checkpoint.save(models.create("mlp", input_size=8, widths=[256, 128]), target, metrics={"k": 3})
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert checkpoint.load_checkpoint(target).metrics == {"k": 3}


@pytest.mark.parametrize("mode", ["exchange", "fallback"])
def test_kills_at_random_moments_of_repeated_saves(tmp_path, mode):
    """The same at moments nobody chose: a process saves in a loop and is killed at a random time; the checkpoint
    that loads is always whole, and is the last completed save or the one in flight."""
    rng = random.Random(mode)
    script = tmp_path / "save.py"
    script.write_text(SAVE_AND_DIE)
    for round_ in range(3):  # one process per round: Popen.kill needs no pid read from the output
        target = tmp_path / f"ck{round_}"
        proc = subprocess.Popen([sys.executable, str(script), str(target), "loop", mode], stdout=subprocess.PIPE,
                                text=True)
        completed = [proc.stdout.readline() for _ in range(3)]
        time.sleep(rng.uniform(0.0, 0.03))
        proc.kill()
        proc.wait(timeout=60)                            # dead and reaped: nobody writes now
        last = int((completed + proc.stdout.read().split())[-1])
        proc.stdout.close()
        assert _stamp_of(target) in (last, last + 1)


def test_exchange_swaps_two_directories_in_one_step(tmp_path):
    from connprune.utils import io

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "from-a").write_text("")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "from-b").write_text("")
    if not io.exchange(tmp_path / "a", tmp_path / "b"):
        pytest.skip("no renameat2(RENAME_EXCHANGE) here: atomic_dir uses the two-rename fallback")
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["from-b"]
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["from-a"]
