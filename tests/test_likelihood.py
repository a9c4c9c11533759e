"""The KL meter against a KL computed one answer and one token at a time, with and without running from a layer."""

from __future__ import annotations

import pytest
import torch
from tiny_models import byte_tokenizer, tiny_model

from steer2edit_peft import Steer2EditConfig, edit_model
from steer2edit_peft.core.errors import Steer2EditError
from steer2edit_peft.core.likelihood import KLMeter
from steer2edit_peft.core.tokens import Exchange, encode_example
from steer2edit_peft.extraction.extract import extract_steering_vectors
from steer2edit_peft.probes import builtin_probe

PROMPTS = ["Name a colour.", "How tall is a giraffe?", "Say hi.", "Count to three, please.", "Why is the sky blue?"]
ANSWERS = ["Blue.", "About five metres, often more.", "Hi!", "One, two, three.", "Light scatters off the air."]


def slow_kl(edited, tokenizer) -> float:
    """Mean over answer tokens of sum_w p(w) (log p(w) - log q(w)): one answer at a time, no padding, no cache."""
    total, count = 0.0, 0
    for prompt, answer in zip(PROMPTS, ANSWERS):
        item = encode_example(tokenizer, Exchange(prompt, answer), None, where="test")  # the project's own tokens
        ids = torch.tensor([item.input_ids])
        with torch.no_grad():
            with edited.disable_adapter():
                reference = torch.log_softmax(edited(input_ids=ids).logits[0].double(), -1)
            changed = torch.log_softmax(edited(input_ids=ids).logits[0].double(), -1)
        for position in range(
            item.response_start - 1, len(item.input_ids) - 1
        ):  # each position that predicts an answer token
            p = reference[position].exp()
            total += float((p * (reference[position] - changed[position])).sum())
            count += 1
    return total / count


@pytest.mark.parametrize("name", ["llama", "gemma3_text", "gpt2"])  # gpt2 adds positions to its inputs: no shortcut
def test_the_kl_meter_from_the_first_edited_layer_equals_the_slow_kl(name):
    model, tokenizer = (
        tiny_model(name, vocab_size=260, num_hidden_layers=3)
        if name != "gpt2"
        else (tiny_model(name, vocab_size=260, n_layer=3)),
        byte_tokenizer(),
    )
    probe = builtin_probe("refusal")
    vectors = extract_steering_vectors(model, tokenizer, probe, batch_size=4, show_progress=False)
    meter = KLMeter(model, tokenizer, PROMPTS, ANSWERS, batch_size=2)
    config = Steer2EditConfig(rho_attn=0.05, rho_mlp=0.05, alpha=0.1, layers_to_transform=[1, 2])
    edited = edit_model(model, vectors, config)
    expected = slow_kl(edited, tokenizer)
    assert expected > 1e-6  # the edit changes something
    assert meter(edited) == pytest.approx(expected, rel=1e-4, abs=1e-9)
    assert meter(edited, from_layer=1) == pytest.approx(expected, rel=1e-4, abs=1e-9)
    shortcut = meter.hidden_states[1] is not None
    assert shortcut == (name != "gpt2")
    edited.unload()
    assert meter(model) == pytest.approx(0.0, abs=1e-9) and meter(model, from_layer=1) == pytest.approx(0.0, abs=1e-9)


def test_a_meter_too_large_to_cache_measures_steering_as_the_cached_one_does():
    # Uncached, the reference is recomputed each time: outside the edit's context, or every KL would be zero.
    from steer2edit_peft.extraction.steering import steer

    model, tokenizer = tiny_model("llama", vocab_size=260, num_hidden_layers=3), byte_tokenizer()
    vectors = extract_steering_vectors(model, tokenizer, builtin_probe("refusal"), batch_size=4, show_progress=False)
    cached = KLMeter(model, tokenizer, PROMPTS, ANSWERS, batch_size=2)
    uncached = KLMeter(model, tokenizer, PROMPTS, ANSWERS, batch_size=2, max_cached_bytes=0)
    assert cached.cached is not None and uncached.cached is None
    steering = lambda: steer(model, vectors, 2.0)  # noqa: E731
    expected = cached(model, steering)
    assert expected > 1e-6 and uncached(model, steering) == pytest.approx(expected, rel=1e-5)


def test_a_meter_too_large_to_cache_refuses_a_reference_changed_in_place():
    model, tokenizer = tiny_model("llama", vocab_size=260, num_hidden_layers=3), byte_tokenizer()
    vectors = extract_steering_vectors(model, tokenizer, builtin_probe("refusal"), batch_size=4, show_progress=False)
    meter = KLMeter(model, tokenizer, PROMPTS, ANSWERS, batch_size=2, max_cached_bytes=0)
    edited = edit_model(model, vectors, Steer2EditConfig(rho_attn=0.05, rho_mlp=0.05, alpha=0.1))  # in place
    with pytest.raises(Steer2EditError, match="reference model has changed"):
        meter(edited)
    edited.unload()
    assert meter(model) == pytest.approx(0.0, abs=1e-9)
