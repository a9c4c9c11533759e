"""Every decoder family transformers ships, recognised by its structure and edited exactly: dense, hybrid-attention
(linear attention between full attention), per-layer head sizes and fused-expert mixtures of experts alike.

For each causal-LM family (transformers' own list, tests/families.py) a tiny random model is built from the
family's default config; the edit is found by structure (no table), applied unmerged, and checked against a plain
copy of the model whose weights carry the same edit written out by loops (routing is then the model's own).
Families whose default config transformers cannot build tiny, or whose base model needs more than token ids, are
skipped with the reason; families without attention or MLP output projections (state-space layers only) are refused
with one clear error.
"""

from __future__ import annotations

import pytest
import torch
from families import family_types, tiny_family_model
from peft import get_peft_model
from reference import assert_close_relative, densely_edited_copy

from steer2edit_peft import Steer2EditConfig, UnknownArchitectureError
from steer2edit_peft.core.architectures import find_output_projections
from steer2edit_peft.tuner import Steer2EditLayer

INPUTS = torch.randint(3, 60, (2, 6), generator=torch.Generator().manual_seed(1))

# The families the issue named, and the ones the project shipped before structure: none may be skipped.
REQUIRED = {
    "llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3", "gpt2", "gpt_neox", "ministral",
    "exaone4", "seed_oss", "olmo3", "apertus", "qwen3_5_text", "qwen3_next", "qwen3_moe", "mixtral", "olmoe",
    "gpt_oss", "glm4_moe", "llama4_text", "gemma4_text", "deepseek_v3",
}  # fmt: skip


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=INPUTS).logits.float()


def built(model_type: str):
    try:
        model = tiny_family_model(model_type)
        logits(model)
    except Exception as error:  # noqa: BLE001 - transformers' own failure is the reason shown
        if model_type in REQUIRED:
            raise
        pytest.skip(f"{model_type}: transformers' default config does not run tiny ({type(error).__name__})")
    return model


@pytest.mark.parametrize("model_type", family_types())
def test_every_family_is_found_by_structure_and_edited_exactly(model_type):
    model = built(model_type)
    try:
        projections = find_output_projections(model)
    except UnknownArchitectureError:
        assert model_type not in REQUIRED
        with pytest.raises(UnknownArchitectureError, match="Pass them by hand"):
            get_peft_model(model, Steer2EditConfig(init_weights=False))
        return
    base = logits(model)
    torch.manual_seed(1)
    peft_model = get_peft_model(model, Steer2EditConfig(init_weights=False))
    layers = {name: m for name, m in peft_model.base_model.model.named_modules() if isinstance(m, Steer2EditLayer)}
    for name, size in projections.head_sizes.items():
        assert layers[name].component_size["default"] == size, name  # each attention module at its own heads
    edited = logits(peft_model)
    assert_close_relative(edited, logits(densely_edited_copy(peft_model, ["default"])), rtol=1e-4)
    assert not torch.allclose(edited, base)
    peft_model.merge_adapter()
    assert_close_relative(logits(peft_model), edited, rtol=1e-4)
    peft_model.unmerge_adapter()
    with peft_model.disable_adapter():
        assert torch.equal(logits(peft_model), base)


def test_the_family_list_is_transformers_own():
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    assert set(family_types()) == set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES) and set(family_types()) >= REQUIRED
