"""llama.cpp (llama-cpp-python, built from source) runs the GGUF exports of an edit of the embedded model.

Reference: PEFT in float32 on the same dequantized weights. llama.cpp multiplies Q4_1 weights with activations it
quantizes to 8 bits, so even the base model differs from the reference; the edit may add no more error than that.
"""

from __future__ import annotations

import os

import llama_cpp  # a missing engine fails this lane
import numpy as np
import pytest
import torch
from engine_report import report
from gguf_edits import edited_embedded_model, export_all

PROMPTS = [
    "How do I pick the lock on someone else's front door?",
    "Give me three tips for a good night's sleep.",
    "What is the capital of Australia?",
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from steer2edit_peft.core.tokens import encode_prompt

    peft_model, tokenizer = edited_embedded_model()
    files = export_all(peft_model, tmp_path_factory.mktemp("gguf"), float32=True)
    ids = [encode_prompt(tokenizer, p) for p in PROMPTS]
    with torch.no_grad():
        edited = [peft_model(torch.tensor([row])).logits[0].numpy() for row in ids]
        with peft_model.disable_adapter():
            base = [peft_model(torch.tensor([row])).logits[0].numpy() for row in ids]
    return files, ids, {"base": base, "edited": edited}


def llama_logits(model_path, ids, lora_path=None, float32_cache=False):
    kv_type = {"type_k": 0, "type_v": 0} if float32_cache else {}  # 0: GGML_TYPE_F32 (default f16)
    llm = llama_cpp.Llama(
        model_path=str(model_path),
        lora_path=str(lora_path) if lora_path else None,
        n_ctx=256,
        **kv_type,
        logits_all=True,
        n_threads=os.cpu_count(),
        verbose=False,
        seed=0,
    )
    out = []
    for row in ids:
        llm.reset()
        llm.eval(row)
        out.append(np.array(llm.scores[: len(row)], dtype=np.float32))
    del llm
    return out


def largest_error(got, want):
    return max(float(np.abs(g - w).max()) for g, w in zip(got, want))


def test_on_the_dequantized_weights_llama_cpp_equals_peft_with_the_lora_and_merged(setup):
    """Float32 GGUFs and KV cache: llama.cpp computes unquantized; only float32 summation order separates it from
    PEFT."""
    files, ids, reference = setup
    runs = {
        "base": llama_logits(files["base-f32"], ids, float32_cache=True),
        "lora": llama_logits(files["base-f32"], ids, files["adapter"], float32_cache=True),
        "merged": llama_logits(files["merged-f32"], ids, float32_cache=True),
    }
    errors = {"base": largest_error(runs["base"], reference["base"])}
    errors |= {name: largest_error(runs[name], reference["edited"]) for name in ("lora", "merged")}
    effect = max(float(np.abs(e - b).max()) for e, b in zip(reference["edited"], reference["base"]))
    report("llama.cpp float32 GGUF: max |logit - PEFT float32|", errors | {"edit's own max |logit change|": effect})
    assert effect > 1.0  # the edit moves logits far more than the tolerance, so the check means something
    assert all(error < 1e-3 for error in errors.values()), errors


def test_on_the_q4_1_gguf_llama_cpp_stays_within_its_own_quantization_error(setup):
    """Q4_1 weights times 8-bit activations: the base already differs from PEFT; the edit may add no more."""
    files, ids, reference = setup
    runs = {
        "base": llama_logits(files["base"], ids),
        "lora": llama_logits(files["base"], ids, files["adapter"]),
        "merged": llama_logits(files["merged"], ids),
    }
    base_error = largest_error(runs["base"], reference["base"])
    errors = {"base": base_error}
    for name in ("lora", "merged"):
        errors[name] = largest_error(runs[name], reference["edited"])
        assert errors[name] <= 1.5 * base_error + 0.05, errors
        # Greedy next tokens agree wherever PEFT's top two logits are further apart than the base's own error.
        for got_row, want_row in zip(runs[name], reference["edited"]):
            top2 = np.sort(want_row, axis=-1)[:, -2:]
            clear = (top2[:, 1] - top2[:, 0]) > 2 * base_error
            assert (got_row.argmax(-1)[clear] == want_row.argmax(-1)[clear]).all(), name
    report("llama.cpp Q4_1 GGUF: max |logit - PEFT float32 on dequantized weights|", errors)
