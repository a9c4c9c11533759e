"""Edit reports (from a model and from saved files alone) and the pictures drawn from them."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model
from tiny_models import tiny_model

from steer2edit_peft import Steer2EditConfig, edit_report
from steer2edit_peft.core.errors import Steer2EditError
from steer2edit_peft.core.figures import save_figure
from steer2edit_peft.evaluation.plots import plot_frontiers, plot_metrics
from steer2edit_peft.tuner.heatmap import edit_matrices, plot_edit_heatmap
from steer2edit_peft.tuner.report import EditReport, ModuleReport


def random_edit(**config):
    torch.manual_seed(0)
    model = tiny_model("llama", num_hidden_layers=3)
    return get_peft_model(model, Steer2EditConfig(init_weights=False, **config))


def test_report_read_from_files_equals_the_report_of_the_loaded_model(tmp_path):
    peft_model = random_edit(behaviour="demo")
    peft_model.save_pretrained(tmp_path)
    from_model = {m.module: m for m in edit_report(peft_model).modules}
    from_files = EditReport.from_adapter_folder(tmp_path)
    assert from_files.adapter_name == "demo" and from_files.num_layers == 3
    assert {m.module for m in from_files.modules} == {name for name, m in from_model.items() if m.num_edited}
    for module in from_files.modules:
        expected = from_model[module.module]
        assert (module.kind, module.layer, module.num_components) == (
            expected.kind,
            expected.layer,
            expected.num_components,
        )
        assert [i for i, _ in module.components] == [i for i, _ in expected.components]
        assert [v for _, v in module.components] == pytest.approx([v for _, v in expected.components], rel=1e-6)
    report = edit_report(peft_model)
    assert (from_files.total_heads, from_files.total_neurons) == (report.total_heads, report.total_neurons)


def test_layers_to_transform_limits_the_edit_and_survives_a_round_trip(tmp_path):
    from peft import PeftModel

    peft_model = random_edit(layers_to_transform=[1, 2])
    edited = {m.module for m in edit_report(peft_model).modules}
    assert edited and all(".layers.0." not in name for name in edited)
    peft_model.save_pretrained(tmp_path)
    torch.manual_seed(0)
    reloaded = PeftModel.from_pretrained(tiny_model("llama", num_hidden_layers=3), tmp_path)
    x = torch.randint(3, 90, (2, 5))
    torch.testing.assert_close(reloaded(x).logits, peft_model(x).logits)
    assert {m.module for m in edit_report(reloaded).modules} == edited


def test_a_damaged_weights_file_is_a_clear_error(tmp_path):
    random_edit().save_pretrained(tmp_path)
    (tmp_path / "adapter_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(Steer2EditError, match="cannot be read as safetensors"):
        EditReport.from_adapter_folder(tmp_path)


def test_edit_matrices_place_every_lambda_where_a_loop_puts_it():
    report = EditReport("hand made", num_layers=3)
    report.modules = [
        ModuleReport("model.layers.0.self_attn.o_proj", 0, "attention", 4, [(3, -2.0), (1, 0.5)]),
        ModuleReport("model.layers.2.self_attn.o_proj", 2, "attention", 4, [(0, 1.5)]),
        ModuleReport("model.layers.2.mlp.down_proj", 2, "mlp", 40, [(7, -1.0), (9, 0.25), (39, 2.0)]),
    ]
    heads, counts, mass = edit_matrices(report)
    expected = torch.zeros(3, 4)
    for module in report.modules:
        for index, value in module.components:
            if module.kind == "attention":
                expected[module.layer, index] = value
    torch.testing.assert_close(heads, expected)
    torch.testing.assert_close(counts, torch.tensor([0.0, 0.0, 3.0]))
    torch.testing.assert_close(mass, torch.tensor([0.0, 0.0, 3.25]))


def test_figures_are_written_as_png(tmp_path):
    from steer2edit_peft.evaluation.suite import EvaluationResult

    results = [
        EvaluationResult(name, r, o, 10.0, kl, 5.0) for name, r, o, kl in [("base", 0, 0, 0), ("edit", 0.5, 0.1, 0.02)]
    ]
    figures = {
        "heatmap.png": plot_edit_heatmap(edit_report(random_edit())),
        "metrics.png": plot_metrics(results),
        "frontier.png": plot_frontiers(
            {"a": [(0.1, 0.2), (0.0, 0.0)], "b": []}, "KL", "refusal", points={"a": [(1, 1)]}
        ),
    }
    for name, figure in figures.items():
        assert save_figure(figure, tmp_path / name).read_bytes()[:4] == b"\x89PNG"
