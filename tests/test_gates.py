"""Gates (solver/gates.py): each fitting step against an independent computation, the edit against the neuron
rewritten by hand, and the adapter's round trips (merge, save and load, LoRA export, inspect)."""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from peft import PeftModel
from reference import assert_close_relative
from test_calibration import PAIRS, UTILITY
from tiny_models import byte_tokenizer, tiny_model

from steer2edit_peft import GATES, ContrastiveDataset, EditSettings, edit_model, extract_steering_vectors
from steer2edit_peft.cli.inspect import inspect_adapter
from steer2edit_peft.core.errors import AdapterValidationError, Steer2EditError
from steer2edit_peft.evaluation.selectivity import gate_selectivity
from steer2edit_peft.export.lora import to_lora
from steer2edit_peft.solver.gates import (
    constant_direction,
    fit_detector,
    fit_gates,
    gated_mlp,
    gates_written,
    shifted_detector,
)

# A quantile the four reference answers of UTILITY can resolve (a few dozen tokens), so the tiny model gets gates.
TINY_GATES = replace(GATES, gate_layers=(0.5, 1.0), gate_quantile=0.9)


@pytest.fixture(scope="module")
def probed():
    model, tokenizer = tiny_model("llama", num_hidden_layers=4, vocab_size=260), byte_tokenizer()
    records = [{"prompt": p, "positive": a, "negative": b} for p, a, b in PAIRS]
    vectors = extract_steering_vectors(
        model,
        tokenizer,
        ContrastiveDataset.from_records(records),
        reference=(UTILITY.prompts, UTILITY.responses),
        show_progress=False,
    )
    return model, tokenizer, vectors


@pytest.mark.parametrize("name", ["llama", "qwen3", "gemma3_text", "mistral"])
def test_the_gate_and_up_projections_are_found_by_structure(name):
    model = tiny_model(name)
    for layer in range(model.config.num_hidden_layers):
        mlp = gated_mlp(model, layer)
        prefix = f"model.layers.{layer}.mlp."
        assert (mlp.gate, mlp.up, mlp.down) == (prefix + "gate_proj", prefix + "up_proj", prefix + "down_proj")


def test_the_up_projection_is_told_apart_by_what_the_neuron_is_odd_in_not_by_its_name():
    model = tiny_model("llama")
    swapped = model.model.layers[0].mlp
    # Rename the two projections: the one behind the activation is still the gate.
    swapped.gate_proj, swapped.up_proj = swapped.up_proj, swapped.gate_proj
    swapped.forward = lambda x: swapped.down_proj(swapped.act_fn(swapped.up_proj(x)) * swapped.gate_proj(x))
    mlp = gated_mlp(model, 0)
    assert mlp.gate.endswith(".up_proj") and mlp.up.endswith(".gate_proj")


@pytest.mark.parametrize("name", ["gpt2", "phi3"])
def test_a_model_without_separate_gate_and_up_projections_is_refused_with_the_module_named(name):
    with pytest.raises(Steer2EditError, match=r"(h|model\.layers)\.0\.mlp|gate"):
        gated_mlp(tiny_model(name), 0)


def test_the_fitted_detector_is_the_optimum_of_its_regularized_loss():
    generator = torch.Generator().manual_seed(0)
    probe = torch.randn(60, 6, generator=generator) + torch.tensor([1.5, 0, 0, 0, 0, 0])
    reference = torch.randn(200, 6, generator=generator) * torch.tensor([1.0, 2, 0.5, 1, 1, 3])
    weights = fit_detector(probe, reference, ridge=1e-3).double()
    # The gradient of the same loss, written out in float64: mean softplus(-p . w) + mean softplus(n . w) + ridge
    # |w'|^2 with w' = w * spread the weights of the scaled features.
    spread = reference.double().std(0) + 1e-6
    scaled = weights * spread
    positive, negative = probe.double() / spread, reference.double() / spread
    gradient = -(torch.sigmoid(-(positive @ scaled))[:, None] * positive).mean(0)
    gradient += (torch.sigmoid(negative @ scaled)[:, None] * negative).mean(0) + 2e-3 * scaled
    assert gradient.norm() < 1e-4
    assert (probe.double() @ weights).mean() > 0 > (reference.double() @ weights).mean()


def test_the_constant_direction_is_the_ridge_least_squares_solution():
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(300, 8, generator=generator) + 3.0
    # The same problem as one augmented least-squares system: rows x / sqrt(n) -> 1 / sqrt(n), sqrt(penalty) I -> 0.
    rows = inputs.double().numpy()
    penalty = 1e-4 * float((rows**2).mean(0).mean())
    system = np.vstack([rows / np.sqrt(300), np.sqrt(penalty) * np.eye(8)])
    target = np.concatenate([np.ones(300) / np.sqrt(300), np.zeros(8)])
    expected = np.linalg.lstsq(system, target, rcond=None)[0]
    found = constant_direction(inputs, ridge=1e-4)
    assert found.dtype == torch.float64
    np.testing.assert_allclose(found.numpy(), expected, rtol=1e-8, atol=1e-12)
    assert abs(float((inputs.double() @ found).mean()) - 1) < 0.05


@pytest.mark.parametrize("share", [0.5, 0.9, 0.999, 1.0])
def test_the_shifted_detector_reads_below_zero_on_the_share_of_the_reference(share):
    generator = torch.Generator().manual_seed(2)
    reference = torch.randn(1000, 5, generator=generator) + torch.tensor([4.0, 0, 0, 0, 0])
    constant = constant_direction(reference)
    detector = shifted_detector(torch.randn(5, generator=generator), constant, (reference, share))
    readings = [float(sum(a * b for a, b in zip(row.tolist(), detector.tolist()))) for row in reference.double()]
    below = sum(reading <= 1e-9 for reading in readings) / len(readings)
    assert below >= share - 1e-3 and below <= share + 2 / len(readings)


def test_gate_settings_are_checked():
    with pytest.raises(ValueError, match="max_kl=None"):
        EditSettings(gate_amount=2.0)
    with pytest.raises(ValueError, match="gate_layers"):
        replace(GATES, gate_layers=(0.8, 0.4))
    with pytest.raises(ValueError, match="gate_quantile"):
        replace(GATES, gate_quantile=0.0)
    with pytest.raises(ValueError, match="gate_amount"):
        replace(GATES, gate_amount=-1.0)
    assert list(GATES.gated_layers(30)) == list(range(14, 25))


def _rewritten_by_hand(model, gates, amount):
    """The model with each gate's neuron written into its weights directly."""
    rewritten = copy.deepcopy(model)
    named = dict(rewritten.named_modules())
    with torch.no_grad():
        for gate in gates:
            named[gate.mlp.gate].weight[gate.neuron] = gate.gate_row.float()
            named[gate.mlp.up].weight[gate.neuron] = gate.up_row.float()
            named[gate.mlp.down].weight[:, gate.neuron] = amount * gate.down_column.float()
    return rewritten


def test_the_gated_adapter_is_the_neuron_rewritten_unmerged_merged_saved_and_as_lora(probed, tmp_path):
    model, tokenizer, vectors = probed
    gates = fit_gates(model, tokenizer, vectors.options["probe_prompts"], UTILITY, vectors, TINY_GATES)
    expected_model = _rewritten_by_hand(model, gates, TINY_GATES.gate_amount)
    x = torch.randint(3, 260, (2, 11), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected, base = expected_model(x).logits, model(x).logits
    edited = edit_model(copy.deepcopy(model), vectors, TINY_GATES, utility=UTILITY, tokenizer=tokenizer)
    assert (expected - base).abs().max() > 1e-3  # the gates change something on these tokens
    with torch.no_grad():
        assert_close_relative(edited(x).logits, expected, rtol=1e-4)
        edited.merge_adapter()
        assert_close_relative(edited(x).logits, expected, rtol=1e-4)
        edited.unmerge_adapter()
    records = edited.peft_config["default"].gates
    assert {record["layer"] for record in records.values()} == {gate.mlp.layer for gate in gates}
    for record in records.values():  # each rewritten row is one component of the whole row
        assert edited.peft_config["default"].edited_components[record["gate_module"]] == [[0]]
        assert record["row_width"] == model.config.hidden_size
    edited.save_pretrained(str(tmp_path / "gated"))
    loaded = PeftModel.from_pretrained(copy.deepcopy(model), tmp_path / "gated")
    assert loaded.peft_config["default"].gates == records
    to_lora(loaded, output=tmp_path / "lora")
    lora = PeftModel.from_pretrained(copy.deepcopy(model), tmp_path / "lora")
    with torch.no_grad():
        assert_close_relative(loaded(x).logits, expected, rtol=1e-4)
        assert_close_relative(lora(x).logits, expected, rtol=1e-4)
    table = inspect_adapter(tmp_path / "gated")
    assert "probe above threshold" in table and "heads" not in table.split("probe above")[1]
    for record in records.values():
        assert f"{record['probe_share']:.1%}" in table


def test_gate_selectivity_reads_the_rewritten_gate_rows(probed):
    model, tokenizer, vectors = probed
    gates = fit_gates(model, tokenizer, vectors.options["probe_prompts"], UTILITY, vectors, TINY_GATES)
    edited = edit_model(copy.deepcopy(model), vectors, TINY_GATES, utility=UTILITY, tokenizer=tokenizer)
    act_on, leave_alone = [p for p, _, _ in PAIRS], UTILITY.prompts
    table = gate_selectivity(edited, tokenizer, act_on, leave_alone)
    from steer2edit_peft.core.readings import last_token_inputs

    inputs = last_token_inputs(model, tokenizer, act_on + leave_alone, [g.mlp.gate for g in gates])
    for row, gate in zip(table, sorted(gates, key=lambda g: g.mlp.layer)):
        readings = inputs[gate.mlp.gate].double() @ gate.gate_row
        assert row.above_positive == pytest.approx(float((readings[: len(act_on)] > 0).double().mean()))
        assert row.above_negative == pytest.approx(float((readings[len(act_on) :] > 0).double().mean()))


def test_a_bad_gate_record_is_refused_naming_the_file_or_the_module(probed, tmp_path):
    model, tokenizer, vectors = probed
    edited = edit_model(copy.deepcopy(model), vectors, TINY_GATES, utility=UTILITY, tokenizer=tokenizer)
    edited.save_pretrained(str(tmp_path))
    path = tmp_path / "adapter_config.json"
    content = json.loads(path.read_text())
    down, record = next(iter(content["gates"].items()))
    for broken in (
        {down: record | {"up_module": "model.layers.0.mlp.nowhere"}},
        {down: record | {"neuron": -1}},
        {down: record | {"row_width": 0}},
        {down: record | {"row_width": record["row_width"] - 1}},  # not the rows' width
    ):
        path.write_text(json.dumps(content | {"gates": broken}))
        with pytest.raises(AdapterValidationError, match="adapter_config.json|gates|row_width"):
            PeftModel.from_pretrained(copy.deepcopy(model), tmp_path)


def test_gates_need_the_probe_prompts_and_the_reference(probed):
    model, tokenizer, vectors = probed
    with pytest.raises(Steer2EditError, match="utility"):
        edit_model(copy.deepcopy(model), vectors, TINY_GATES, tokenizer=tokenizer)


def test_in_order_fitting_reads_later_layers_with_the_earlier_gates_written_and_restores_the_weights(probed):
    model, tokenizer, vectors = probed
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    prompts = vectors.options["probe_prompts"]
    together = fit_gates(model, tokenizer, prompts, UTILITY, vectors, replace(TINY_GATES, gate_in_order=False))
    in_order = fit_gates(model, tokenizer, prompts, UTILITY, vectors, replace(TINY_GATES, gate_in_order=True))
    assert all(torch.equal(tensor, before[name]) for name, tensor in model.state_dict().items())
    assert [g.mlp.layer for g in in_order][:1] == [g.mlp.layer for g in together][:1]
    torch.testing.assert_close(in_order[0].gate_row, together[0].gate_row)  # nothing earlier to write
    # A later layer's inputs, read by hand with the first gate written into the weights, give its detector.
    with gates_written(model, in_order[:1], TINY_GATES.gate_amount):
        expected = fit_gates(model, tokenizer, prompts, UTILITY, vectors, replace(TINY_GATES, gate_layers=(0.75, 1.0)))
    assert all(torch.equal(tensor, before[name]) for name, tensor in model.state_dict().items())
    assert in_order[1].mlp.layer == expected[0].mlp.layer == 3
    torch.testing.assert_close(in_order[1].gate_row, expected[0].gate_row)
    assert not torch.allclose(in_order[1].gate_row, together[1].gate_row)


def test_a_decision_quantile_keeps_every_reference_prompt_below_its_gates_threshold(probed):
    from steer2edit_peft.core.readings import last_token_inputs

    model, tokenizer, vectors = probed
    settings = replace(TINY_GATES, gate_decision_quantile=1.0)
    gates = fit_gates(model, tokenizer, vectors.options["probe_prompts"], UTILITY, vectors, settings)
    decisions = last_token_inputs(model, tokenizer, UTILITY.prompts, [g.mlp.gate for g in gates], UTILITY.system_prompt)
    for gate in gates:
        readings = decisions[gate.mlp.gate].double() @ gate.gate_row
        # The fit reads these tokens in the answers' pass (right-padded): float32 rounding of a reading of order
        # gate_sharpness, no more, may separate it from this prompt-only pass.
        assert (readings <= 1e-5 * settings.gate_sharpness).all()


def test_the_cli_makes_the_same_gates_as_the_python_api():
    from steer2edit_peft.cli.arguments import settings_from
    from steer2edit_peft.cli.main import build_parser

    args = build_parser().parse_args(["edit", "--probe", "refusal", "--gates", "2", "--output", "out"])
    assert settings_from(args, "refusal") == GATES
    for command in (["edit", "--probe", "refusal", "--output", "out"], ["demo"]):  # demo has no gate options
        assert settings_from(build_parser().parse_args(command), "refusal").gate_amount is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["edit", "--probe", "refusal", "--gates", "-1", "--output", "out"])


def test_an_edit_that_loading_would_refuse_is_refused_before_it_is_saved(probed):
    from steer2edit_peft.solver.adapter import solved_adapter
    from steer2edit_peft.solver.gates import gate_edits
    from steer2edit_peft.solver.settings import adapter_config

    model, tokenizer, vectors = probed
    gates = fit_gates(model, tokenizer, vectors.options["probe_prompts"], UTILITY, vectors, TINY_GATES)
    edits = gate_edits(model, gates, 1e9)  # an output column a billion times the gate's
    config = adapter_config(TINY_GATES, 4)
    config.gates = {gate.mlp.down: gate.record(1e9) for gate in gates}
    with pytest.raises(Steer2EditError, match="would not load"):
        solved_adapter(copy.deepcopy(model), vectors, config, edits=edits)


def test_a_hybrid_gets_gates_only_where_its_layers_have_a_gated_mlp_and_a_moe_is_refused():
    from families import tiny_family_model

    from steer2edit_peft.solver.gates import gated_mlps

    hybrid = tiny_family_model("jamba")  # layer 0 a dense gated MLP, layer 1 mixture-of-experts
    assert [mlp.layer for mlp in gated_mlps(hybrid, range(2))] == [0]
    with pytest.raises(Steer2EditError, match="no layer of 0-1 can hold a gate"):
        gated_mlps(tiny_family_model("mixtral"), range(2))


def test_the_decision_tokens_read_with_the_answers_are_the_prompts_last_tokens(probed):
    from steer2edit_peft.core.readings import answer_inputs, last_token_inputs

    model, tokenizer, _ = probed
    names = ["model.layers.1.mlp.gate_proj", "model.layers.3.mlp.down_proj"]
    answers, decisions = answer_inputs(
        model, tokenizer, UTILITY.prompts, UTILITY.responses, names, UTILITY.system_prompt, batch_size=3
    )
    alone = last_token_inputs(model, tokenizer, UTILITY.prompts, names, UTILITY.system_prompt, batch_size=3)
    for name in names:
        assert decisions[name].shape == alone[name].shape and len(answers[name]) > len(alone[name])
        torch.testing.assert_close(decisions[name], alone[name], rtol=1e-5, atol=1e-5)


def test_a_gated_adapter_loads_on_every_path_and_a_bad_row_width_is_refused_on_each(probed, tmp_path):
    from test_validation import LOADERS

    from steer2edit_peft.tuner import Steer2EditLayer

    model, tokenizer, vectors = probed
    edited = edit_model(copy.deepcopy(model), vectors, TINY_GATES, utility=UTILITY, tokenizer=tokenizer)
    folder = tmp_path / "adapters" / "gated"
    edited.save_pretrained(str(folder))
    x = torch.randint(3, 260, (2, 11), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = edited(x).logits
        for name, loader in LOADERS.items():
            assert_close_relative(loader(copy.deepcopy(model), folder)(x).logits, expected, rtol=1e-5), name
    path = folder / "adapter_config.json"
    content = json.loads(path.read_text())
    for record in content["gates"].values():
        record["row_width"] -= 1
    path.write_text(json.dumps(content))
    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    for name, loader in LOADERS.items():
        target = copy.deepcopy(model)
        before = {key: value.clone() for key, value in target.state_dict().items()}
        with pytest.raises(AdapterValidationError, match="row_width"):
            loader(target, folder)
        assert not any(isinstance(m, Steer2EditLayer) for m in target.modules()), name
        assert all(torch.equal(value, before[key]) for key, value in target.state_dict().items()), name
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == files
