"""Every malformed adapter is refused with one AdapterValidationError, before anything changes.

Each case of the tables below damages a valid saved adapter in one way and loads it through every loading path
(PeftModel.from_pretrained, with low_cpu_mem_usage, PeftModel.load_adapter on a model that already holds an
adapter, transformers' model.load_adapter). Each load must raise AdapterValidationError with a message naming the
file or module and the problem, and leave the model bit-identical (state_dict and logits) with no adapter layer
injected. The undamaged adapter loads on every path (positive control).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from peft import PeftConfig, PeftMixedModel, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from tiny_models import sample_input, tiny_model

from steer2edit_peft import AdapterValidationError, Steer2EditConfig
from steer2edit_peft.tuner import Steer2EditLayer
from steer2edit_peft.tuner.checkpoint import tensor_digest

O_PROJ = "base_model.model.model.layers.0.self_attn.o_proj"
O_PROJ_MODULE = "model.layers.0.self_attn.o_proj"


def valid_adapter(folder: Path) -> Path:
    torch.manual_seed(0)
    peft_model = get_peft_model(tiny_model("llama"), Steer2EditConfig(init_weights=False))
    peft_model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return valid_adapter(tmp_path_factory.mktemp("pristine"))


def copy_adapter(pristine: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (folder / name).write_bytes((pristine / name).read_bytes())
    return folder


def edit_config(folder: Path, change) -> None:
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))


def edit_tensors(folder: Path, change, keep_digest_consistent: bool) -> None:
    path = folder / "adapter_model.safetensors"
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path)
    if keep_digest_consistent:  # so the value checks, not the digest, must catch the damage
        edit_config(folder, lambda c: c.update(tensor_digest=tensor_digest(tensors)))


def snapshot(model):
    with torch.no_grad():
        logits = model(sample_input()).logits.clone()
    return {k: v.clone() for k, v in model.state_dict().items()}, logits


def assert_unchanged(model, before) -> None:
    state, logits = snapshot(model)
    assert state.keys() == before[0].keys()
    assert all(torch.equal(state[k], before[0][k]) for k in state)
    assert torch.equal(logits, before[1])


def load_peft(model, folder):
    return PeftModel.from_pretrained(model, folder)


def load_low_memory(model, folder):
    return PeftModel.from_pretrained(model, folder, low_cpu_mem_usage=True)


def load_transformers(model, folder):
    model.load_adapter(str(folder))
    return model


def load_with_config(model, folder):
    return PeftModel.from_pretrained(model, folder, config=PeftConfig.from_pretrained(folder))


def load_from_subfolder(model, folder):
    return PeftModel.from_pretrained(model, str(folder.parent), subfolder=folder.name)


def load_transformers_subfolder(model, folder):
    model.load_adapter(str(folder.parent), adapter_kwargs={"subfolder": folder.name})
    return model


def load_transformers_config(model, folder):
    model.load_adapter(peft_config=PeftConfig.from_pretrained(str(folder)))
    return model


def load_mixed(model, folder):
    return PeftMixedModel.from_pretrained(model, folder)


LOADERS = {
    "PeftModel.from_pretrained": load_peft,
    "low_cpu_mem_usage": load_low_memory,
    "config=PeftConfig.from_pretrained": load_with_config,
    "subfolder": load_from_subfolder,
    "PeftMixedModel.from_pretrained": load_mixed,
    "transformers": load_transformers,
    "transformers, adapter_kwargs subfolder": load_transformers_subfolder,
    "transformers, peft_config": load_transformers_config,
}


def assert_refused_everywhere(folder: Path, match: str | None, error: type[Exception] = AdapterValidationError) -> None:
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    for loader_name, loader in LOADERS.items():
        model = tiny_model("llama")
        before = snapshot(model)
        with pytest.raises(error, match=match):
            loader(model, folder)
        assert not any(isinstance(m, Steer2EditLayer) for m in model.modules()), loader_name
        assert_unchanged(model, before)
    # A second adapter loaded into a PeftModel (and a PeftMixedModel) that already holds one.
    for holder in (
        get_peft_model(tiny_model("llama"), Steer2EditConfig(init_weights=False)),
        get_peft_model(tiny_model("llama"), Steer2EditConfig(init_weights=False), mixed=True),
    ):
        before = snapshot(holder)
        with pytest.raises(error, match=match):
            holder.load_adapter(str(folder), adapter_name="second")
        assert list(holder.peft_config) == ["default"]
        assert all("second" not in m.steer2edit_u for m in holder.modules() if isinstance(m, Steer2EditLayer))
        assert_unchanged(holder, before)
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == files  # nothing written


def test_the_undamaged_adapter_loads_on_every_path(pristine, tmp_path):
    folder = copy_adapter(pristine, tmp_path / "adapter")
    reference = PeftModel.from_pretrained(tiny_model("llama"), folder)
    expected = reference(sample_input()).logits
    for loader in LOADERS.values():
        model = tiny_model("llama")
        loaded = loader(model, folder)
        torch.testing.assert_close(loaded(sample_input()).logits, expected, rtol=0, atol=0)
    for mixed in (False, True):
        holder = get_peft_model(tiny_model("llama"), Steer2EditConfig(init_weights=False), mixed=mixed)
        holder.load_adapter(str(folder), adapter_name="second")
        assert set(holder.peft_config) == {"default", "second"}


def _set(key, value):
    return lambda c: c.update({key: value})


def _component(value):
    return lambda c: c["edited_components"][O_PROJ_MODULE][0].__setitem__(0, value)


# (case, change to adapter_config.json, what the message must say)
CONFIG_CASES = [
    ("strength NaN", _set("strength", math.nan), "strength must be a finite number"),
    ("strength Infinity", _set("strength", math.inf), "strength must be a finite number"),
    ("strength absurd", _set("strength", 1e9), "strength must be a finite number of magnitude at most"),
    ("strength a string", _set("strength", "1"), "strength must be"),
    ("alpha 1", _set("alpha", 1.0), r"alpha must be a finite number in \[0, 1\)"),
    ("alpha NaN", _set("alpha", math.nan), "alpha must be"),
    ("rho NaN", _set("rho_attn", math.nan), "rho_attn must be null or a finite number"),
    ("format_version 1.0", _set("format_version", 1.0), "format_version must be an integer"),
    ("format_version true", _set("format_version", True), "format_version must be an integer"),
    ("format_version 1", _set("format_version", 1), "unknown Steer2Edit format_version 1"),
    ("format_version 99", _set("format_version", 99), "unknown Steer2Edit format_version 99"),
    ("format_version missing", lambda c: c.pop("format_version"), "lacks format_version"),
    ("digest missing", lambda c: c.pop("tensor_digest"), "lacks tensor_digest"),
    ("digest malformed", _set("tensor_digest", "md5:1234"), "tensor_digest must be"),
    ("digest of other weights", _set("tensor_digest", "sha256:" + "0" * 64), "come from different saves"),
    ("index 1.7", _component(1.7), "list of non-negative integers"),
    ("index '0'", _component("0"), "list of non-negative integers"),
    ("index true", _component(True), "list of non-negative integers"),
    ("index -1", _component(-1), "list of non-negative integers"),
    (
        "index twice",
        lambda c: c["edited_components"][O_PROJ_MODULE][0].append(c["edited_components"][O_PROJ_MODULE][0][0]),
        "same component twice",
    ),
    ("components a list", _set("edited_components", [[0]]), "edited_components must be"),
    ("term not a list", lambda c: c["edited_components"].update({O_PROJ_MODULE: [3]}), "every term must be a list"),
    ("signature removed", _set("base_model_signature", {}), "records no base_model_signature"),
    ("signature missing", lambda c: c.pop("base_model_signature"), "lacks base_model_signature"),
    ("signature a list", _set("base_model_signature", [32]), "base_model_signature must be"),
    (
        "another hidden size",
        lambda c: c["base_model_signature"].update(hidden_size=48),
        "hidden_size: adapter 48 vs model 32",
    ),
    ("head_dim 0", _set("head_dim", 0), "head_dim must be null or a positive integer"),
    ("head_dim a string", _set("head_dim", "8"), "head_dim must be"),
    ("target_modules a number", _set("target_modules", 5), "target_modules must be"),
    ("layers a float", _set("layers_to_transform", [1.5]), "layers_to_transform must be"),
    ("init_weights a string", _set("init_weights", "false"), "init_weights must be a boolean"),
    ("inference_mode a string", _set("inference_mode", "yes"), "inference_mode must be a boolean"),
    ("unknown key", _set("surprise", 1), r"unknown key\(s\) \['surprise'\]"),
    ("behaviour a number", _set("behaviour", 3), "behaviour must be null or a string"),
    ("target_modules a regex", _set("target_modules", "(a+)+$"), "target_modules must be a list of module names"),
    ("target_modules a pattern", _set("target_modules", ["(a|a)*b"]), "must list plain dotted module names"),
    ("layers_pattern a pattern", _set("layers_pattern", ".*"), "layers_pattern must list plain dotted module names"),
    ("attention_modules a pattern", _set("attention_modules", ["o_proj|x"]), "plain dotted module names"),
    ("library_version null", _set("library_version", None), "library_version must be a string"),
]


@pytest.mark.parametrize("case, change, match", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_a_malformed_config_is_refused_on_every_path(pristine, tmp_path, case, change, match):
    folder = copy_adapter(pristine, tmp_path / "adapter")
    edit_config(folder, change)
    assert_refused_everywhere(folder, match)


def _poison(key, value):
    def change(tensors):
        tensors[f"{O_PROJ}.{key}"].view(-1)[0] = value

    return change


# (case, change to the tensors, keep the digest consistent, what the message must say)
TENSOR_CASES = [
    (
        "NaN lambda, digest kept",
        _poison("steer2edit_lambda", math.nan),
        True,
        r"o_proj\.steer2edit_lambda: holds NaN/inf",
    ),
    ("inf u, digest kept", _poison("steer2edit_u", math.inf), True, r"o_proj\.steer2edit_u: holds NaN/inf"),
    ("absurd lambda, digest kept", _poison("steer2edit_lambda", 3.4e38), True, "above the bound 10000"),
    ("NaN lambda, digest stale", _poison("steer2edit_lambda", math.nan), False, "holds NaN/inf|different saves"),
    ("tensor missing", lambda t: t.pop(f"{O_PROJ}.steer2edit_u"), True, r"o_proj: the weights lack steer2edit_u"),
    (
        "tensor extra",
        lambda t: t.update({f"{O_PROJ}.steer2edit_extra": torch.zeros(2)}),
        True,
        "unexpected tensor.*steer2edit_extra",
    ),
    (
        "u misshapen",
        lambda t: t.update({f"{O_PROJ}.steer2edit_u": torch.zeros(1, 31)}),
        True,
        r"o_proj\.steer2edit_u: shape \(1, 31\)",
    ),
    (
        "u of ints",
        lambda t: t.update({f"{O_PROJ}.steer2edit_u": torch.zeros(1, 32, dtype=torch.int64)}),
        True,
        "expected a float dtype",
    ),
    (
        "u of float8",
        lambda t: t.update({f"{O_PROJ}.steer2edit_u": t[f"{O_PROJ}.steer2edit_u"].to(torch.float8_e4m3fn)}),
        True,
        r"o_proj\.steer2edit_u: dtype torch.float8_e4m3fn, expected a float dtype",
    ),
    (
        "keys without PEFT's prefix",
        lambda t: t.update({k.removeprefix("base_model.model."): t.pop(k) for k in list(t)}),
        True,
        "lacks PEFT's 'base_model.model.' prefix.*no edit at all",
    ),
    (
        "indices of floats",
        lambda t: t.update({f"{O_PROJ}.steer2edit_indices": t[f"{O_PROJ}.steer2edit_indices"].float()}),
        True,
        "1-D int64",
    ),
    (
        "indices differ from config",
        lambda t: t[f"{O_PROJ}.steer2edit_indices"].add_(1).remainder_(4),
        True,
        "come from different saves",
    ),
    (
        "weights of another module",
        lambda t: t.update({k.replace("layers.0", "layers.7"): v.clone() for k, v in list(t.items())}),
        True,
        r"in the weights but \[\] in the config",
    ),
]


@pytest.mark.parametrize("case, change, consistent, match", TENSOR_CASES, ids=[c[0] for c in TENSOR_CASES])
def test_malformed_weights_are_refused_on_every_path(pristine, tmp_path, case, change, consistent, match):
    folder = copy_adapter(pristine, tmp_path / "adapter")
    edit_tensors(folder, change, keep_digest_consistent=consistent)
    assert_refused_everywhere(folder, match)


def _truncate(folder):
    path = folder / "adapter_model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])


def _empty(folder):
    (folder / "adapter_model.safetensors").write_bytes(b"")


def _garbage_header(folder):
    (folder / "adapter_model.safetensors").write_bytes((10**12).to_bytes(8, "little") + b"{")


def _remove(folder):
    (folder / "adapter_model.safetensors").unlink()


def _a_folder(folder):
    _remove(folder)
    (folder / "adapter_model.safetensors").mkdir()


def _dangling(folder):
    _remove(folder)
    os.symlink(folder / "nowhere", folder / "adapter_model.safetensors")


def _device(folder):
    _remove(folder)
    os.symlink("/dev/zero", folder / "adapter_model.safetensors")


def _pickle_only(folder):
    tensors = load_file(folder / "adapter_model.safetensors")
    _remove(folder)
    torch.save(tensors, folder / "adapter_model.bin")


def _config_not_json(folder):
    (folder / "adapter_config.json").write_text('{"peft_type": "STEER2EDIT", ')


def _config_empty(folder):
    (folder / "adapter_config.json").write_bytes(b"")


def _config_a_list(folder):
    (folder / "adapter_config.json").write_text("[1, 2]")


def _config_nested(folder):
    (folder / "adapter_config.json").write_text("[" * 100_000 + "]" * 100_000)


def _bare_keys_random_init(folder):
    # Without the prefix PEFT keeps the fresh layers' values: random ones where the config says init_weights false.
    edit_config(folder, _set("init_weights", False))
    edit_tensors(folder, lambda t: t.update({k.removeprefix("base_model.model."): t.pop(k) for k in list(t)}), True)


def _config_binary(folder):
    (folder / "adapter_config.json").write_bytes(bytes(range(256)))


def _huge_integer(folder):
    path = folder / "adapter_config.json"
    path.write_text(path.read_text().replace('"format_version": 2', '"format_version": ' + "7" * 5001))


FILE_CASES = [
    ("truncated weights", _truncate, "truncated or not a valid safetensors"),
    ("empty weights", _empty, "truncated or not a valid safetensors"),
    ("garbage header", _garbage_header, "truncated or not a valid safetensors"),
    ("weights missing", _remove, "holds no adapter_model.safetensors"),
    ("weights a folder", _a_folder, "adapter_model.safetensors is not a regular file"),
    ("weights a dangling link", _dangling, "adapter_model.safetensors is a dangling link"),
    ("weights /dev/zero", _device, "adapter_model.safetensors is not a regular file"),
    ("only a pickle", _pickle_only, "holds adapter_model.bin but no adapter_model.safetensors.*never loads pickles"),
    ("config not JSON", _config_not_json, r"adapter_config.json: not valid JSON"),
    ("an integer of 5001 digits", _huge_integer, r"adapter_config.json: an integer of 5001 digits"),
    ("bare keys, init_weights false", _bare_keys_random_init, "lacks PEFT's 'base_model.model.' prefix"),
]


@pytest.mark.parametrize("case, damage, match", FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_damaged_files_are_refused_on_every_path(pristine, tmp_path, case, damage, match):
    folder = copy_adapter(pristine, tmp_path / "adapter")
    damage(folder)
    assert_refused_everywhere(folder, match)


# Configs that name no PEFT type are not this package's to judge: PEFT and transformers report them as they would
# without steer2edit_peft (plain PEFT stays plain), and Steer2EditConfig.from_pretrained names the file.
FOREIGN_CONFIG_CASES = [
    ("config empty", _config_empty, "not valid JSON"),
    ("config a list", _config_a_list, "holds a JSON list, not an object"),
    ("config binary", _config_binary, "not valid JSON"),
    ("config nested 100000 deep", _config_nested, "JSON nested too deeply"),
]


@pytest.mark.parametrize("case, damage, match", FOREIGN_CONFIG_CASES, ids=[c[0] for c in FOREIGN_CONFIG_CASES])
def test_configs_naming_no_peft_type_are_refused_as_peft_refuses_them(pristine, tmp_path, case, damage, match):
    folder = copy_adapter(pristine, tmp_path / "adapter")
    damage(folder)
    assert_refused_everywhere(folder, None, error=Exception)  # a config that names no type is not ours to judge
    with pytest.raises(AdapterValidationError, match=f"adapter_config.json: {match}"):
        Steer2EditConfig.from_pretrained(str(folder))


def test_weights_of_another_save_beside_a_config_are_refused(pristine, tmp_path):
    # Same component layout, other values: only the digest tells the pair apart.
    other = tmp_path / "other"
    torch.manual_seed(0)
    model = get_peft_model(tiny_model("llama"), Steer2EditConfig(init_weights=False))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, Steer2EditLayer):
                module.steer2edit_lambda["default"].mul_(2)
    model.save_pretrained(other)
    folder = copy_adapter(pristine, tmp_path / "adapter")
    (folder / "adapter_model.safetensors").write_bytes((other / "adapter_model.safetensors").read_bytes())
    assert_refused_everywhere(folder, "come from different saves")


def test_the_model_signature_must_match(pristine, tmp_path):
    folder = copy_adapter(pristine, tmp_path / "adapter")
    model = tiny_model("llama", num_attention_heads=2, num_key_value_heads=1)
    before = snapshot(model)
    with pytest.raises(AdapterValidationError, match="head_dim: adapter 8 vs model 16"):
        PeftModel.from_pretrained(model, folder)
    assert_unchanged(model, before)


def test_set_strength_refuses_non_finite_and_absurd_values():
    torch.manual_seed(0)
    model = get_peft_model(tiny_model("llama"), Steer2EditConfig(init_weights=False))
    before = snapshot(model)
    for value in (math.nan, math.inf, -math.inf, 1e9, "2"):
        with pytest.raises(AdapterValidationError, match="strength"):
            model.base_model.set_strength(value)
    assert_unchanged(model, before)
    model.base_model.set_strength(0.5)
    assert model.peft_config["default"].strength == 0.5


def test_a_config_made_by_hand_is_checked_like_a_file():
    for kwargs, match in [
        ({"strength": math.nan}, "strength must be a finite number"),
        ({"alpha": 1.0}, "alpha must be"),
        ({"edited_components": {"m": [[1.7]]}}, "non-negative integers"),
        ({"head_dim": True}, "head_dim must be"),
    ]:
        with pytest.raises(AdapterValidationError, match=match):
            Steer2EditConfig(**kwargs)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=True) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=6,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(sorted(set(Steer2EditConfig.__dataclass_fields__) - {"peft_type"})), value=JSON_VALUES)
def test_any_config_value_loads_correctly_or_is_refused(pristine, tmp_path_factory, field, value):
    folder = copy_adapter(pristine, tmp_path_factory.mktemp("property"))
    edit_config(folder, _set(field, value))
    model = tiny_model("llama")
    before = snapshot(model)
    try:
        loaded = PeftModel.from_pretrained(model, folder)
    except AdapterValidationError:
        assert not any(isinstance(m, Steer2EditLayer) for m in model.modules())
        assert_unchanged(model, before)
        return
    # Accepted: then it is a valid config that loads the very same edit weights.
    config = loaded.peft_config["default"]
    assert math.isfinite(config.strength) and 0 <= config.alpha < 1
    assert torch.isfinite(loaded(sample_input()).logits).all()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=st.binary(max_size=64), tail=st.binary(max_size=64))
def test_any_weights_file_loads_correctly_or_is_refused(pristine, tmp_path_factory, header, tail):
    folder = copy_adapter(pristine, tmp_path_factory.mktemp("bytes"))
    original = (folder / "adapter_model.safetensors").read_bytes()
    (folder / "adapter_model.safetensors").write_bytes(header + original[len(header) :] + tail)
    model = tiny_model("llama")
    before = snapshot(model)
    try:
        PeftModel.from_pretrained(model, folder)
    except AdapterValidationError:
        assert_unchanged(model, before)
        assert not any(isinstance(m, Steer2EditLayer) for m in model.modules())
        return
    assert header == original[: len(header)] and not tail  # only an unchanged file may load


@pytest.mark.parametrize(
    "model_dtype, adapter_dtype",
    [(torch.bfloat16, torch.float32), (torch.float32, torch.float64), (torch.bfloat16, torch.bfloat16)],
)
def test_every_load_path_takes_a_valid_adapter_of_any_float_dtype_onto_any_model_dtype(
    tmp_path, model_dtype, adapter_dtype
):
    torch.manual_seed(0)
    edited = get_peft_model(tiny_model("llama"), Steer2EditConfig(init_weights=False)).to(adapter_dtype)
    edited.save_pretrained(tmp_path / "adapter")
    results = []
    for name, loader in LOADERS.items():
        model = tiny_model("llama", dtype=model_dtype)
        results.append((name, loader(model, tmp_path / "adapter")(sample_input()).logits.float()))
    for name, result in results[1:]:
        if model_dtype == torch.float32:
            torch.testing.assert_close(result, results[0][1], rtol=0, atol=0, msg=name)
        else:  # PEFT's paths keep an adapter at float32 or at the model's bfloat16 (low_cpu_mem_usage, mixed models)
            error = float((result - results[0][1]).abs().max())
            assert error <= 2e-2 * float(results[0][1].abs().max()), name
