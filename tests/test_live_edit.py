"""The live (unmerged) edit is a pure function of its tensors: whatever the grad mode, the threads or in-place
changes, and it never writes into a tensor another module produced; merging and unmerging restore weights exactly."""

from __future__ import annotations

import itertools
import threading
from contextlib import nullcontext

import pytest
import torch
from peft import PeftModel, get_peft_model
from reference import assert_close_relative, densely_edited_copy
from tiny_models import sample_input, tiny_model

from steer2edit_peft import Steer2EditConfig
from steer2edit_peft.tuner import Steer2EditLayer


def random_edit(seed: int = 0, dtype: torch.dtype = torch.float32):
    base = tiny_model("llama", dtype=dtype)
    torch.manual_seed(seed)
    return get_peft_model(base, Steer2EditConfig(init_weights=False))


def layers(model) -> list[Steer2EditLayer]:
    return [m for m in model.modules() if isinstance(m, Steer2EditLayer)]


def run(model, mode: str = "no_grad") -> torch.Tensor:
    context = {"no_grad": torch.no_grad(), "inference_mode": torch.inference_mode(), "autograd": nullcontext()}[mode]
    with context:
        return model(sample_input()).logits.detach().clone()


MODES = ("autograd", "no_grad", "inference_mode")


@pytest.mark.parametrize("load_mode", MODES)
def test_the_output_is_the_same_in_every_grad_mode_and_order(tmp_path, load_mode):
    random_edit().save_pretrained(tmp_path)
    with {"no_grad": torch.no_grad(), "inference_mode": torch.inference_mode(), "autograd": nullcontext()}[load_mode]:
        model = PeftModel.from_pretrained(tiny_model("llama"), tmp_path)
    expected = run(densely_edited_copy(model, ["default"]))
    for order in itertools.permutations(MODES):
        for mode in order:
            assert_close_relative(run(model, mode), expected)


def test_in_place_changes_reach_the_forward_pass_however_they_are_made():
    model = random_edit()
    with model.disable_adapter():
        base_logits = run(model)
    run(model)
    for layer in layers(model):
        layer.steer2edit_lambda["default"].data.mul_(0)  # .data bypasses autograd's version counters
    assert torch.equal(run(model), base_logits)
    with torch.no_grad():
        for layer in layers(model):
            layer.steer2edit_lambda["default"].fill_(2.0)
    assert_close_relative(run(model), run(densely_edited_copy(model, ["default"])))


def test_a_strength_changed_by_another_thread_is_never_half_applied():
    model = random_edit()
    at_one = run(model)
    stop = threading.Event()
    failures: list[BaseException] = []

    def forwards():
        try:
            while not stop.is_set():
                run(model)
        except BaseException as error:  # noqa: BLE001 - reported below
            failures.append(error)

    reader = threading.Thread(target=forwards)
    reader.start()
    try:
        for _ in range(200):
            model.base_model.set_strength(0.0)
            model.base_model.set_strength(1.0)
    finally:
        stop.set()
        reader.join()
    assert not failures
    assert torch.equal(run(model), at_one)


def test_the_base_layers_output_is_never_written_to():
    model = random_edit()
    held = {}

    def keep(module, inputs, output):
        held[module] = (output, output.detach().clone())

    handles = [layer.get_base_layer().register_forward_hook(keep) for layer in layers(model)]
    try:
        for mode in MODES:
            run(model, mode)
            assert held and all(torch.equal(output, copy) for output, copy in held.values()), mode
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_unmerge_restores_the_base_weights_bit_for_bit(dtype):
    model = random_edit(dtype=dtype)
    before = {name: tensor.clone() for name, tensor in model.get_base_model().state_dict().items()}
    with model.disable_adapter():
        base_logits = run(model)
    for _ in range(3):
        model.merge_adapter()
        model.unmerge_adapter()
    after = model.get_base_model().state_dict()
    assert all(torch.equal(after[name], tensor) for name, tensor in before.items())
    with model.disable_adapter():
        assert torch.equal(run(model), base_logits)


def test_set_strength_on_a_merged_adapter_merges_it_again_at_that_strength():
    model = random_edit()
    with model.disable_adapter():
        base_logits = run(model)
    model.base_model.set_strength(0.5)
    half = run(model)
    model.base_model.set_strength(1.0)
    model.merge_adapter()
    model.base_model.set_strength(0.5)
    assert all(layer.merged for layer in layers(model))
    assert_close_relative(run(model), half)
    model.unmerge_adapter()
    with model.disable_adapter():
        assert torch.equal(run(model), base_logits)  # the base weights are intact
    assert_close_relative(run(model), half)


def test_a_merged_adapter_cannot_be_deleted_or_replaced():
    model = random_edit()
    model.merge_adapter()
    layer = layers(model)[0]
    with pytest.raises(ValueError, match="is merged; unmerge it"):
        layer.delete_adapter("default")
    with pytest.raises(ValueError, match="is merged; unmerge it"):
        layer.update_layer("default", layer.component_size["default"], [[0]], 1.0, init_weights=True)
