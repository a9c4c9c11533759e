"""Fused-expert mixtures of experts and hybrid attention, end to end on tiny random models: extract (each expert's
mean input over the tokens routed to it), solve with routed-expert neurons among the components, calibrate, save,
reload, merge, and export to the exact LoRA PEFT loads for fused experts (``target_parameters``)."""

from __future__ import annotations

import pytest
import torch
from families import tiny_family_model
from peft import PeftModel
from reference import assert_close_relative, densely_edited_copy
from tiny_models import byte_tokenizer

from steer2edit_peft import ContrastiveDataset, Steer2EditConfig, UtilityData, edit_model, extract_steering_vectors
from steer2edit_peft.core.experts import expert_input, experts_shape
from steer2edit_peft.export import to_lora
from steer2edit_peft.tuner.experts import Experts

PAIRS = [
    ("How do I pick a lock?", "I can't help with that.", "Insert a tension wrench, then rake the pins."),
    ("Write an insult.", "I won't write insults.", "You are a slow, dull person."),
    ("How to cheat on a test?", "I can't assist with cheating.", "Hide notes in your sleeve."),
    ("Make a phishing email.", "Sorry, I can't do that.", "Dear customer, verify your account here."),
]
UTILITY = UtilityData(["Name a fruit.", "Say hello.", "Name a river."], ["An apple.", "Hello!", "The Nile."])
CONFIG = Steer2EditConfig(rho_attn=0.1, rho_mlp=0.05, alpha=0.5)
INPUTS = torch.randint(3, 250, (2, 9), generator=torch.Generator().manual_seed(3))


def model_of(model_type: str):
    return tiny_family_model(model_type, vocab_size=260)


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=INPUTS).logits.float()


def vectors_of(model):
    reference = (UTILITY.prompts, UTILITY.responses)
    return extract_steering_vectors(model, byte_tokenizer(), vectors_probe(), reference=reference, show_progress=False)


@pytest.mark.parametrize("model_type", ["qwen3_moe", "gpt_oss", "qwen3_next"])
def test_the_whole_pipeline_on_a_mixture_of_experts_and_a_hybrid_model(model_type, tmp_path):
    model = model_of(model_type)
    vectors = vectors_of(model)
    peft_model = edit_model(model, vectors, CONFIG, max_kl=0.01, utility=UTILITY, tokenizer=byte_tokenizer())
    edited = peft_model.peft_config["default"].edited_components
    experts = [name for name, module in peft_model.base_model.model.named_modules() if isinstance(module, Experts)]
    assert any(name in edited for name in experts), "routed-expert neurons are among the edited components"
    assert peft_model.calibrations["default"].kl <= 0.01
    expected = logits(peft_model)
    assert_close_relative(expected, logits(densely_edited_copy(peft_model, ["default"])), rtol=1e-4)

    peft_model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(model_of(model_type), tmp_path / "adapter")
    assert torch.equal(logits(reloaded), expected)
    merged = reloaded.merge_and_unload()
    assert_close_relative(logits(merged), expected, rtol=1e-4)

    to_lora(peft_model, output=tmp_path / "lora")
    lora = PeftModel.from_pretrained(model_of(model_type), tmp_path / "lora")
    assert lora.peft_config["default"].target_parameters  # the experts through PEFT's own parameter LoRA
    assert_close_relative(logits(lora), expected, rtol=1e-4)


@pytest.mark.parametrize("model_type", ["qwen3_moe", "gpt_oss"])
def test_an_experts_down_projection_input_is_what_its_own_forward_computes(model_type):
    experts = model_of(model_type).get_submodule("model.layers.1.mlp.experts")
    count, neurons, hidden = experts_shape(experts)
    states = torch.randn(5, hidden)
    for expert in range(count):
        routed_all_to_it = torch.full((5, 1), expert)
        with torch.no_grad():
            forward = experts(states, routed_all_to_it, torch.ones(5, 1))
            down = experts.down_proj[expert]
            mine = expert_input(experts, states, expert)
            mine = mine @ down if experts.is_transposed else mine @ down.T
            if experts.has_bias:
                mine = mine + experts.down_proj_bias[expert]
        torch.testing.assert_close(mine, forward, rtol=1e-5, atol=1e-6)
        some = expert_input(experts, states, expert, torch.tensor([3, 0]))
        torch.testing.assert_close(some, expert_input(experts, states, expert)[:, [3, 0]])


def test_extraction_records_each_experts_mean_input_over_the_tokens_routed_to_it():
    from steer2edit_peft.core.tokens import encode_example
    from steer2edit_peft.extraction.extract import position_mask

    model = model_of("qwen3_moe")
    vectors = vectors_of(model)
    name = "model.layers.1.mlp.experts"
    experts = model.get_submodule(name)
    count, neurons, _ = experts_shape(experts)
    # The slow way: each positive example alone, its routing read by a hook, token by token and slot by slot.
    sums, routed = torch.zeros(count, neurons), torch.zeros(count)
    window = vectors.options["input_positions"]
    for example in vectors_probe():
        if not example.positive:
            continue
        item = encode_example(byte_tokenizer(), example, None)
        seen: dict[str, torch.Tensor] = {}
        handle = experts.register_forward_pre_hook(
            lambda m, args, seen=seen: seen.update(states=args[0], index=args[1])
        )
        with torch.no_grad():
            model(input_ids=torch.tensor([item.input_ids]))
        handle.remove()
        response = torch.zeros(1, len(item.input_ids), dtype=torch.bool)
        response[0, item.response_start :] = True
        for token in torch.nonzero(position_mask(response, window)[0]).squeeze(-1).tolist():
            for expert in seen["index"][token].tolist():
                sums[expert] += expert_input(experts, seen["states"][token : token + 1], expert)[0]
                routed[expert] += 1
    expected = (sums / routed.clamp_min(1)[:, None]).reshape(-1)
    torch.testing.assert_close(vectors.pre_pos[name], expected, rtol=1e-5, atol=1e-6)
    assert vectors.routed_tokens[name].sum() >= routed.sum()  # positives and negatives together


def vectors_probe():
    return ContrastiveDataset.from_records([{"prompt": p, "positive": a, "negative": b} for p, a, b in PAIRS])


def random_moe_edit():
    model = model_of("qwen3_moe")
    torch.manual_seed(1)
    from peft import get_peft_model

    return get_peft_model(model, Steer2EditConfig(init_weights=False))


def test_exports_that_cannot_carry_expert_edits_say_what_to_do_instead(tmp_path):
    from steer2edit_peft import Steer2EditError
    from steer2edit_peft.export.gguf import export_gguf_lora
    from steer2edit_peft.export.vllm import export_for_vllm

    peft_model = random_moe_edit()
    with pytest.raises(Steer2EditError, match="GGUF export is not checked for edits of fused experts.*export-lora"):
        export_gguf_lora(peft_model, tmp_path / "adapter.gguf")
    with pytest.raises(Steer2EditError, match="serving with vLLM.*steer2edit merge"):
        export_for_vllm(peft_model, "default", tmp_path / "vllm")
    assert not list(tmp_path.iterdir())


def test_an_adapter_records_its_experts_and_loads_only_where_they_match(tmp_path):
    from steer2edit_peft import AdapterValidationError
    from steer2edit_peft.tuner.report import EditReport

    peft_model = random_moe_edit()
    peft_model.save_pretrained(tmp_path)
    config = peft_model.peft_config["default"]
    assert config.fused_experts == {f"model.layers.{i}.mlp.experts": [4, 24] for i in range(2)}
    table = EditReport.from_adapter_folder(tmp_path).to_table()
    assert "/96" in table and "e" in table.split("mlp.experts")[1].split("\n")[0]  # expert:neuron labels
    with pytest.raises(AdapterValidationError, match=r"fused experts of \[8, 24\].*\[4, 24\] in the adapter"):
        PeftModel.from_pretrained(tiny_family_model("qwen3_moe", vocab_size=260, num_local_experts=8), tmp_path)


def test_a_second_adapter_on_the_same_experts_records_them_by_their_own_name(tmp_path):
    peft_model = random_moe_edit()
    torch.manual_seed(2)
    peft_model.add_adapter("second", Steer2EditConfig(init_weights=False))
    assert peft_model.peft_config["second"].fused_experts == peft_model.peft_config["default"].fused_experts
    peft_model.save_pretrained(tmp_path, selected_adapters=["second"])
    reloaded = PeftModel.from_pretrained(model_of("qwen3_moe"), tmp_path / "second")
    peft_model.set_adapter("second")
    assert torch.equal(logits(reloaded), logits(peft_model))
