"""Experiment configs: validation errors name the key and its line; the grid expands as documented."""

from __future__ import annotations

from pathlib import Path

import pytest

from connprune.errors import UserError
from connprune.experiments.config import expand, load_config, parse_config

BASE = """\
name: t
models: [mlp]
data: digits
train:
  epochs: 1
methods:
  - magnitude
  - name: random
    params: {scope: layer}
sparsities: [0.5, 0.9]
seeds: [0, 1]
fine-tune: {epochs: 1}
"""

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def error_of(text: str) -> str:
    with pytest.raises(UserError) as info:
        parse_config(text, file="exp.yaml")
    return str(info.value)


def test_unknown_top_level_key_names_key_and_line():
    message = error_of(BASE + "sparsitys: [0.1]\n")
    assert "exp.yaml, line 13" in message and "'sparsitys'" in message and "sparsities" in message


def test_unknown_key_in_train_names_key_line_and_allowed_keys():
    message = error_of(BASE.replace("  epochs: 1\n", "  epochs: 1\n  lrate: 0.1\n"))
    assert "line 6" in message and "train.lrate" in message and "batch_size" in message


def test_unknown_method_parameter_names_key_and_line():
    message = error_of(BASE.replace("{scope: layer}", "{scope: layer, sharpness: 2}"))
    assert "line 9" in message and "methods[1].params.sharpness" in message and "scope" in message


def test_wrong_types_name_key_and_line():
    message = error_of(BASE.replace("seeds: [0, 1]", "seeds: [0, one]").replace("{epochs: 1}", "{epochs: many}"))
    assert "line 11: seeds[1]" in message and "valid integer" in message
    assert "line 12: fine-tune.epochs" in message
    message = error_of(BASE.replace("  epochs: 1\n", "  epochs: ten\n"))
    assert "line 5: train.epochs" in message and "'ten'" in message
    message = error_of(BASE.replace("[0.5, 0.9]", "[0.5, lots]"))
    assert "line 10: sparsities[1]" in message and "'auto'" in message


def test_unknown_names_list_the_allowed_ones():
    message = error_of(BASE.replace("models: [mlp]", "models: [mlp, lenet7]").replace("- magnitude", "- magnitud"))
    assert "line 2: models[1]: unknown model 'lenet7'" in message and "lenet5" in message
    assert "line 7: methods[0]: unknown method 'magnitud'" in message and "snip" in message
    assert "line 3" in error_of(BASE.replace("data: digits", "data: fmnist")) and "fashion-mnist" in \
        error_of(BASE.replace("data: digits", "data: fmnist"))


def test_bad_values_and_yaml():
    assert "line 10" in error_of(BASE.replace("[0.5, 0.9]", "[0.5, 1.5]"))
    assert "shift" in error_of(BASE + "shift: sunburn:3\n")
    assert "appears twice" in error_of(BASE + "seeds: [3]\n")
    assert "not valid YAML" in error_of(BASE + "models: [\n")
    assert "seeds:" in error_of(BASE.replace("  epochs: 1\n", "  epochs: 1\n  seed: 3\n"))
    assert "missing required key 'methods'" in error_of("models: [mlp]\nsparsities: [0.5]\n")


def test_grid_expansion_counts_and_keys():
    loaded = parse_config(BASE)
    runs = expand(loaded)
    assert len(runs) == 1 * 2 * 2 * 2  # models × seeds × methods × sparsities
    assert len({r.key for r in runs}) == len(runs)
    assert [(r.method, r.sparsity, r.seed) for r in runs[:4]] == [
        ("magnitude", 0.5, 0), ("magnitude", 0.9, 0), ("random", 0.5, 0), ("random", 0.9, 0)]
    assert runs[0].key.startswith("mlp-magnitude-sp0.5-s0-") and runs[0].params == {"scope": "global"}
    # a method's own sparsities, a bare name and an explicit default parameter give the same keys
    more = parse_config(BASE.replace("sparsities: [0.5, 0.9]", "sparsities: [0.5, 0.9, 0.8]")
                        .replace("- magnitude", "- {name: magnitude, params: {scope: global}}"))
    assert more.hash == loaded.hash
    assert {r.key for r in runs} < {r.key for r in expand(more)} and len(expand(more)) == 12
    changed = parse_config(BASE.replace("  epochs: 1\n", "  epochs: 2\n"))
    assert changed.hash != loaded.hash and not {r.key for r in runs} & {r.key for r in expand(changed)}
    own = parse_config(BASE.replace("    params: {scope: layer}\n",
                                    "    params: {scope: layer}\n    sparsities: [0.3]\n"))
    assert sorted({r.sparsity for r in expand(own) if r.method == "random"}) == [0.3]
    assert all(r.needs_trained for r in runs)
    snip = [r for r in expand(parse_config(BASE.replace("- magnitude", "- snip"))) if r.method == "snip"]
    assert snip and not any(r.needs_trained for r in snip)


def test_paper_numbers_are_checked():
    text = BASE + "paper:\n  accuracy:\n    mlp: {magnitude: {0.5: 91.0}}\n"
    assert "line 15" in error_of(text) and "fraction" in error_of(text)
    assert "not a method label" in error_of(BASE + "paper:\n  accuracy:\n    mlp: {magnitud: {0.5: 0.9}}\n")


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    loaded = load_config(path)
    assert path.read_text().startswith("#") and expand(loaded)


def test_model_options_are_validated_and_change_the_hash():
    plain = parse_config(BASE)
    wide = parse_config(BASE.replace("data: digits", "model-options: {mlp: {widths: [32, 32]}}\ndata: digits"))
    assert wide.config.model_options == {"mlp": {"widths": [32, 32]}} and wide.hash != plain.hash
    assert "no config key 'wibble'" in error_of(BASE.replace("data: digits",
                                                             "model-options: {mlp: {wibble: 1}}\ndata: digits"))
    assert "not in models" in error_of(BASE.replace("data: digits", "model-options: {lenet5: {}}\ndata: digits"))
    assert "come from the data set" in error_of(BASE.replace("data: digits",
                                                             "model-options: {mlp: {num_classes: 3}}\ndata: digits"))
