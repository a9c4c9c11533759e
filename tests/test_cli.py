"""The `steer2edit` command line: every command on a tiny checkpoint, and clear errors for bad input."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model
from tiny_models import save_tiny_checkpoint, tiny_model
from transformers import AutoModelForCausalLM

from steer2edit_peft import Steer2EditConfig, SteeringVectors
from steer2edit_peft.cli.main import main
from steer2edit_peft.core.models import load_model
from steer2edit_peft.probes import builtin_prompts

ALL_COMMANDS = (
    "demo",
    "probe",
    "extract",
    "edit",
    "eval",
    "sweep",
    "inspect",
    "push",
    "export-lora",
    "export-gguf",
    "merge",
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), "llama", num_hidden_layers=3)


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def four_pair_probe(folder) -> Path:
    """A probe file of four made-up pairs, for tests whose subject is not the extraction."""
    probe = folder / "my-probe.jsonl"
    records = [{"prompt": "q" * (2 + i), "positive": "yes" * (1 + i % 2), "negative": "no thanks"} for i in range(4)]
    probe.write_text("".join(json.dumps(r) + "\n" for r in records))
    return probe


def four_prompt_reference(folder) -> Path:
    """A reference of four benign prompts (the tiny model answers them itself), for the same tests."""
    reference = folder / "my-reference.json"
    reference.write_text(json.dumps(builtin_prompts("benign")[:4]))
    return reference


def test_help_lists_every_command():
    result = subprocess.run(
        [sys.executable, "-m", "steer2edit_peft.cli.main", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0
    for command in ALL_COMMANDS:
        assert command in result.stdout


@pytest.mark.parametrize("command", ALL_COMMANDS)
def test_each_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0 and "usage: steer2edit " + command in capsys.readouterr().out


def test_extract_edit_inspect_eval_merge_chain(checkpoint, tmp_path, capsys):
    model_args = ["--model", checkpoint, "--dtype", "float32", "--batch-size", "64"]
    vectors_dir, adapter_dir, merged_dir = tmp_path / "vectors", tmp_path / "adapter", tmp_path / "merged"

    code, out, _ = run(capsys, "extract", *model_args, "--probe", "refusal", "--output", vectors_dir)
    assert code == 0 and "module vectors" in out
    vectors = SteeringVectors.load(vectors_dir)
    assert len(vectors.modules) == 6  # o_proj and down_proj of 3 layers

    # As given, without calibration: the calibrated path has its own tests (test_calibration, test_demo).
    solver = ["--rho-attn", "0.05", "--rho-mlp", "0.05", "--alpha", "0.5", "--first-layer", "1", "--no-calibration"]
    code, out, _ = run(
        capsys, "edit", *model_args, "--vectors", vectors_dir, *solver, "--output", adapter_dir, "--heatmap"
    )
    assert code == 0 and (adapter_dir / "edit_heatmap.png").is_file()
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert config["layers_to_transform"] == [1, 2] and all(".0." not in m for m in config["edited_components"])

    code, out, _ = run(capsys, "inspect", adapter_dir, "--heatmap", tmp_path / "inspect.png")
    assert code == 0 and "layers=[1, 2]" in out and (tmp_path / "inspect.png").is_file()
    code, out, _ = run(capsys, "inspect", adapter_dir, "--model", checkpoint, "--selectivity")
    assert code == 0 and "key selectivity:" in out and "30 prompts to act on vs 120 to leave alone" in out
    assert "held-out harmful requests (never probed)" in out and "borderline report half" in out
    code, out, _ = run(capsys, "inspect", adapter_dir, "--model", checkpoint, "--act-on", "harmful")
    counts = f"{len(builtin_prompts('harmful'))} prompts to act on vs 120 to leave alone"
    assert code == 0 and counts in out and "in sample" in out

    code, out, _ = run(
        capsys,
        "eval",
        *model_args,
        "--adapter",
        adapter_dir,
        "--vectors",
        vectors_dir,
        "--num-eval",
        "2",
        "--max-new-tokens",
        "3",
        "--output",
        tmp_path / "eval",
    )
    assert code == 0
    rows = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert [r["condition"] for r in rows] == ["base", "steering x1", "adapter adapter"]

    code, out, _ = run(
        capsys, "merge", adapter_dir, "--model", checkpoint, "--dtype", "float32", "--output", merged_dir
    )
    assert code == 0
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)  # plain transformers, no steer2edit needed
    base, _ = load_model(str(checkpoint), dtype=torch.float32)
    expected = PeftModel.from_pretrained(base, adapter_dir)
    x = torch.randint(3, 250, (2, 6))
    torch.testing.assert_close(merged(x).logits, expected(x).logits, atol=1e-5, rtol=1e-5)

    code, out, _ = run(
        capsys, "export-lora", adapter_dir, "--model", checkpoint, "--output", tmp_path / "lora", "--rank", "4"
    )
    assert code == 0 and "r=4" in out
    lora = PeftModel.from_pretrained(load_model(str(checkpoint), dtype=torch.float32)[0], tmp_path / "lora")
    assert lora.peft_config["default"].peft_type == "LORA"
    torch.testing.assert_close(lora(x).logits, expected(x).logits, atol=1e-5, rtol=1e-5)


def test_inspect_reads_a_saved_adapter_without_a_model(tmp_path, capsys):
    torch.manual_seed(0)
    peft_model = get_peft_model(tiny_model("llama"), Steer2EditConfig(init_weights=False, behaviour="test"))
    peft_model.save_pretrained(tmp_path)
    code, out, _ = run(capsys, "inspect", tmp_path, "--top", "50")
    components = peft_model.peft_config["default"].edited_components["model.layers.0.self_attn.o_proj"][0]
    assert code == 0 and "behaviour: test" in out
    line = next(line for line in out.splitlines() if "0  self_attn.o_proj" in line)
    assert {int(part.split(":")[0]) for part in line.split("  ")[-1].split(", ")} == set(components)


def test_inspect_a_folder_without_an_adapter_is_a_clear_error(tmp_path, capsys):
    code, _, err = run(capsys, "inspect", tmp_path)
    assert code == 2 and "holds no adapter_config.json" in err


def test_inspect_rejects_a_lora_adapter(tmp_path, capsys):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    code, _, err = run(capsys, "inspect", tmp_path)
    assert code == 2 and "LORA adapter, not a Steer2Edit one" in err


def test_edit_with_a_missing_probe_file_is_a_clear_error(tmp_path, capsys):
    code, _, err = run(capsys, "edit", "--probe", tmp_path / "missing.jsonl", "--output", tmp_path / "out")
    assert code == 2 and "missing.jsonl does not exist" in err


def test_merge_refuses_to_overwrite_a_folder(checkpoint, tmp_path, capsys):
    torch.manual_seed(0)
    get_peft_model(tiny_model("llama"), Steer2EditConfig(init_weights=False)).save_pretrained(tmp_path / "adapter")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    code, _, err = run(capsys, "merge", tmp_path / "adapter", "--model", checkpoint, "--output", tmp_path / "taken")
    assert code == 2 and "not empty" in err and (tmp_path / "taken" / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["edit", "--vectors", "v", "--output", "o", "--alpha", "1.5"], "alpha must lie in [0, 1)"),
        (["edit", "--vectors", "v", "--output", "o", "--rho-attn", "-1"], "rho must be a positive finite number"),
        (["demo", "--num-eval", "0"], "expected a positive integer"),
        (["edit", "--output", "o"], "one of the arguments --vectors --probe is required"),
        (["edit", "--vectors", "v", "--output", "o", "--rho-attn", "nan"], "rho must be a positive finite number"),
        (["edit", "--vectors", "v", "--output", "o", "--rho-mlp", "inf"], "rho must be a positive finite number"),
        (["edit", "--vectors", "v", "--output", "o", "--first-layer", "-5"], "expected a non-negative integer"),
        (["edit", "--vectors", "v", "--output", "o", "--max-kl", "nan"], "expected a finite number"),
        (["edit", "--vectors", "v", "--output", "o", "--max-head-share", "1.5"], "a share must lie in (0, 1]"),
        (["eval", "--steering-strength", "nan"], "expected a finite number"),
        (["demo", "--steering-strength=-inf"], "expected a finite number"),
        (["eval", "--steering-strength", "1e30"], "magnitude at most 1000"),
        (["demo", "--steering-strength=-2e3"], "magnitude at most 1000"),
    ],
)
def test_bad_arguments_are_named(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_sweep_saves_the_strongest_edit_within_the_budget(checkpoint, tmp_path, capsys):
    pytest.importorskip("optuna")
    args = ["sweep", "--model", checkpoint, "--dtype", "float32", "--batch-size", "64", "--num-eval", "2"]
    args += ["--max-new-tokens", "3", "--trials", "3", "--max-kl", "1000", "--compare-steering", "--output", tmp_path]
    code, out, _ = run(capsys, *args)
    assert code == 0 and "strongest edit under KL 1000" in out, _
    trials = json.loads((tmp_path / "trials.json").read_text())
    assert set(trials) == {"Steer2Edit", "steering"} and len(trials["Steer2Edit"]) == 3
    # The strongest of the trials that edit something (a threshold that keeps nothing is the base model).
    editing = [t for t in trials["Steer2Edit"] if t["details"]["edited_heads"] + t["details"]["edited_neurons"]]
    best = max(editing, key=lambda t: (t["attribute"], -t["kl"]))
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["alpha"] == pytest.approx(best["params"]["alpha"])
    assert (tmp_path / "frontier.png").is_file()


def test_sweep_extracts_from_a_probe_file_when_given_one(checkpoint, tmp_path, capsys):
    pytest.importorskip("optuna")
    probe = four_pair_probe(tmp_path)
    args = ["sweep", "--model", checkpoint, "--dtype", "float32", "--batch-size", "64", "--num-eval", "2"]
    args += ["--max-new-tokens", "3", "--trials", "3", "--max-kl", "1000", "--probe", probe, "--reference", "benign"]
    args += ["--output", tmp_path / "s"]
    code, _, err = run(capsys, *args)
    assert code == 0, err
    config = json.loads((tmp_path / "s" / "adapter" / "adapter_config.json").read_text())
    assert "my-probe.jsonl" in config["probe_data"]


def test_sweep_from_saved_vectors_tries_what_it_tries_from_their_probe(checkpoint, tmp_path, capsys):
    pytest.importorskip("optuna")
    probe = four_pair_probe(tmp_path)
    common = ["--model", checkpoint, "--dtype", "float32", "--batch-size", "64", "--reference", "benign"]
    assert run(capsys, "extract", *common, "--probe", probe, "--output", tmp_path / "v")[0] == 0
    sweep = ["sweep", *common, "--num-eval", "2", "--max-new-tokens", "3", "--trials", "3", "--max-kl", "1000"]
    code, _, err = run(capsys, *sweep, "--vectors", tmp_path / "v", "--output", tmp_path / "unnamed")
    assert code == 2 and "these vectors name no behaviour" in err and "pass --behaviour" in err
    assert not (tmp_path / "unnamed").exists()
    for source, folder in (("--vectors", tmp_path / "v"), ("--probe", probe)):
        code, _, err = run(capsys, *sweep, "--behaviour", "refusal", source, folder, "--output", tmp_path / source)
        assert code == 0, err
    saved, extracted = (json.loads((tmp_path / s / "trials.json").read_text()) for s in ("--vectors", "--probe"))
    assert saved == extracted and len(saved["Steer2Edit"]) == 3


def test_sweep_with_an_impossible_budget_is_a_clear_error(checkpoint, tmp_path, capsys):
    pytest.importorskip("optuna")
    args = ["sweep", "--model", checkpoint, "--dtype", "float32", "--batch-size", "64", "--num-eval", "2"]
    args += ["--probe", four_pair_probe(tmp_path), "--behaviour", "refusal"]
    args += ["--reference", four_prompt_reference(tmp_path)]
    args += ["--max-new-tokens", "3", "--trials", "2", "--max-kl", "-1", "--output", tmp_path / "out"]
    code, _, err = run(capsys, *args)
    assert code == 2 and "no edit tried stays under KL -1" in err


def test_sweep_on_vllm_refuses_steering_before_loading_anything(tmp_path, capsys):
    args = ["sweep", "--model", str(tmp_path / "no-model"), "--backend", "vllm", "--compare-steering"]
    code, _, err = run(capsys, *args, "--output", tmp_path / "out")
    assert code == 2 and "forward hooks" in err and not (tmp_path / "out").exists()


def _tiny_adapter(folder):
    torch.manual_seed(0)
    get_peft_model(tiny_model("llama"), Steer2EditConfig(init_weights=False)).save_pretrained(folder)
    return folder


@pytest.mark.parametrize(("command", "owned"), [("edit", "adapter_config.json"), ("extract", "steering_vectors.json")])
def test_edit_and_extract_refuse_a_folder_that_holds_their_files(command, owned, checkpoint, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / owned).write_text("{}")
    source = ["--probe", "refusal"] if command == "extract" else ["--vectors", tmp_path / "v"]
    code, _, err = run(capsys, command, "--model", checkpoint, *source, "--output", taken)
    assert code == 2 and f"{taken}" in err and owned in err and "--overwrite" in err
    assert (taken / owned).read_text() == "{}" and len(list(taken.iterdir())) == 1


def test_first_layer_past_the_last_layer_is_named_before_any_data_is_read(checkpoint, tmp_path, capsys, monkeypatch):
    vectors_dir = tmp_path / "vectors"
    extract = ["extract", "--model", checkpoint, "--dtype", "float32", "--probe", four_pair_probe(tmp_path)]
    assert run(capsys, *extract, "--reference", four_prompt_reference(tmp_path), "--output", vectors_dir)[0] == 0
    monkeypatch.setattr("steer2edit_peft.cli.edit.load_utility", None)  # reading the reference would fail otherwise
    code, _, err = run(
        capsys,
        "edit",
        "--model",
        checkpoint,
        "--vectors",
        vectors_dir,
        "--first-layer",
        "99",
        "--output",
        tmp_path / "o",
    )
    assert code == 2 and "first layer 99 (--first-layer) is out of range: the model has layers 0-2" in err
    assert not (tmp_path / "o").exists()


def test_a_vectors_folder_whose_metadata_is_a_list_is_named(tmp_path, capsys):
    from safetensors.torch import save_file

    (tmp_path / "v").mkdir()
    save_file({"m::pos_post": torch.zeros(2)}, tmp_path / "v" / "steering_vectors.safetensors")
    (tmp_path / "v" / "steering_vectors.json").write_text("[1, 2]")
    code, _, err = run(capsys, "edit", "--vectors", tmp_path / "v", "--output", tmp_path / "o")
    assert code == 2 and "steering_vectors.json holds a JSON list, not an object" in err


def test_inspect_heatmap_needs_an_image_suffix(tmp_path, capsys):
    adapter = _tiny_adapter(tmp_path / "adapter")
    code, _, err = run(capsys, "inspect", adapter, "--heatmap", tmp_path / "keep")
    assert code == 2 and "name the image with one of .png" in err and not (tmp_path / "keep.png").exists()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("not json", "not valid JSON"),
        ("[1]", "not an object"),
        ({"edited_components": 3}, "edited_components"),
        ({"format_version": 1.0}, "format_version"),
    ],
)
def test_inspect_names_a_malformed_folder(config, message, tmp_path, capsys):
    adapter = _tiny_adapter(tmp_path / "adapter")
    if isinstance(config, dict):
        config = json.dumps({**json.loads((adapter / "adapter_config.json").read_text()), **config})
    (adapter / "adapter_config.json").write_text(config)
    code, out, err = run(capsys, "inspect", adapter)
    assert code == 2 and message in err and "Traceback" not in err + out


def test_probe_with_an_empty_prompt_list_is_a_clear_error(checkpoint, tmp_path, capsys):
    prompts = tmp_path / "prompts.json"
    prompts.write_text("[]")
    code, _, err = run(
        capsys, "probe", "--model", checkpoint, "--prompts", prompts, "--output", tmp_path / "p.jsonl", "--seed", "1"
    )
    assert code == 2 and f"{prompts} holds no prompts" in err and not (tmp_path / "p.jsonl").exists()


def test_probe_refuses_an_existing_file_without_overwrite(checkpoint, tmp_path, capsys):
    (tmp_path / "p.jsonl").write_text("mine")
    code, _, err = run(capsys, "probe", "--model", checkpoint, "--output", tmp_path / "p.jsonl")
    assert code == 2 and "--overwrite" in err and (tmp_path / "p.jsonl").read_text() == "mine"


def test_demo_and_eval_refuse_a_folder_that_holds_files(checkpoint, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "results.json").write_text("mine")  # not a demo's results: the demo too must not replace it
    for command in (["demo"], ["eval", "--num-eval", "1", "--max-new-tokens", "2"]):
        code, _, err = run(capsys, *command, "--model", checkpoint, "--output", taken)
        assert code == 2 and "--overwrite" in err, err
        assert (taken / "results.json").read_text() == "mine" and len(list(taken.iterdir())) == 1


def test_eval_writes_beside_other_files_and_overwrite_replaces_only_its_own(checkpoint, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "old.txt").write_text("mine")
    (taken / "results.json").write_text("earlier")
    args = ["eval", "--model", checkpoint, "--dtype", "float32", "--num-eval", "1", "--max-new-tokens", "2"]
    code, _, _ = run(capsys, *args, "--output", taken, "--overwrite")
    assert code == 0 and sorted(p.name for p in taken.iterdir()) == ["old.txt", "results.json"]
    assert (taken / "old.txt").read_text() == "mine"
    assert json.loads((taken / "results.json").read_text())[0]["condition"] == "base"


def test_an_interrupted_probe_overwrite_keeps_the_old_file(checkpoint, tmp_path, capsys, monkeypatch):
    (tmp_path / "p.jsonl").write_text("mine")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("steer2edit_peft.probes.generate_probe", interrupted)
    code, _, err = run(capsys, "probe", "--model", checkpoint, "--output", tmp_path / "p.jsonl", "--overwrite")
    assert code == 130 and "earlier files are as they were" in err
    assert (tmp_path / "p.jsonl").read_text() == "mine"


def test_probe_with_a_system_prompt_of_ones_own_writes_a_probe_file(checkpoint, tmp_path, capsys):
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(["Name a colour.", "Name a fruit."]))
    args = ["probe", "--model", checkpoint, "--dtype", "float32", "--prompts", prompts, "--num-samples", "2"]
    args += ["--system-prompt", "Answer in French.", "--max-new-tokens", "4", "--output", tmp_path / "fr.jsonl"]
    code, out, _ = run(capsys, *args)
    assert code == 0
    from steer2edit_peft import ContrastiveDataset

    probe = ContrastiveDataset.from_file(tmp_path / "fr.jsonl")
    assert probe.num_positive == probe.num_negative == 2 * 2
    assert {e.prompt for e in probe.examples} == {"Name a colour.", "Name a fruit."}


def test_nan_strength_in_a_saved_adapter_is_refused_by_merge_and_export(checkpoint, tmp_path, capsys):
    adapter = _tiny_adapter(tmp_path / "adapter")
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "strength": float("nan")}))
    for command in ("merge", "export-lora"):
        code, _, err = run(capsys, command, adapter, "--model", checkpoint, "--output", tmp_path / command)
        assert code == 2 and "strength" in err and not (tmp_path / command).exists()


# A behaviour of every answer (concise) takes contrast keys by default, one kind of prompt's (refusal) selective keys.
@pytest.mark.parametrize("behaviour, keys", [(None, "selective"), ("concise", "contrast")])
def test_the_python_api_and_the_cli_make_the_same_edit_from_the_defaults(
    behaviour, keys, checkpoint, tmp_path, capsys, monkeypatch
):
    from safetensors.torch import load_file

    from steer2edit_peft import DEFAULTS, ContrastiveDataset, edit_model, extract_steering_vectors
    from steer2edit_peft.probes import builtin_utility_data

    pairs = [
        {"prompt": p, "positive": "I can't help with that.", "negative": "Sure, here is how."}
        for p in builtin_prompts("harmful")[:6]
    ]
    probe_file = tmp_path / "probe.jsonl"
    probe_file.write_text("".join(json.dumps(pair) + "\n" for pair in pairs))
    reference_file = tmp_path / "reference.json"
    reference_file.write_text(json.dumps(builtin_prompts("benign")[:8]))

    # The sanity gate reads the tiny random model's answers, which are noise; it has tests of its own.
    checked = []
    monkeypatch.setattr("steer2edit_peft.solver.check_sanity", lambda *args, **kwargs: checked.append(args))
    code, _, err = run(
        capsys, "edit", "--model", checkpoint, "--dtype", "float32", "--probe", probe_file,
        "--reference", reference_file, "--output", tmp_path / "cli", *(["--behaviour", behaviour] if behaviour else []),
    )  # fmt: skip
    assert code == 0 and len(checked) == 1, err

    model, tokenizer = load_model(str(checkpoint), dtype=torch.float32)
    utility = builtin_utility_data(model, tokenizer, builtin_prompts("benign")[:8])
    probe = ContrastiveDataset.from_file(probe_file)
    vectors = extract_steering_vectors(model, tokenizer, probe, reference=(utility.prompts, utility.responses))
    peft_model = edit_model(model, vectors, utility=utility, tokenizer=tokenizer, behaviour=behaviour)
    peft_model.save_pretrained(tmp_path / "api")

    cli_config, api_config = (json.loads((tmp_path / f / "adapter_config.json").read_text()) for f in ("cli", "api"))
    assert cli_config == api_config
    cli_tensors, api_tensors = (load_file(tmp_path / f / "adapter_model.safetensors") for f in ("cli", "api"))
    assert cli_tensors.keys() == api_tensors.keys()
    assert all(torch.equal(cli_tensors[k], api_tensors[k]) for k in cli_tensors)
    assert cli_config["input_positions"] == DEFAULTS.input_positions and cli_config["key_direction"] == keys


def test_edit_from_saved_vectors_takes_the_keys_of_the_behaviour_they_were_extracted_for(checkpoint, tmp_path, capsys):
    model_args = ["--model", checkpoint, "--dtype", "float32", "--batch-size", "64"]
    code, _, err = run(capsys, "extract", *model_args, "--probe", "refusal", "--output", tmp_path / "v")
    assert code == 0, err
    assert SteeringVectors.load(tmp_path / "v").options["behaviour"] == "refusal"
    solver = ["--rho-attn", "0.05", "--alpha", "0.5", "--first-layer", "1", "--no-calibration"]
    # A tiny random model shows no concise behaviour to probe, so the concise vectors are the same ones renamed.
    metadata_file = tmp_path / "v" / "steering_vectors.json"
    for behaviour, keys in (("refusal", "selective"), ("concise", "contrast")):
        metadata = json.loads(metadata_file.read_text())
        metadata_file.write_text(json.dumps(metadata | {"options": metadata["options"] | {"behaviour": behaviour}}))
        output = tmp_path / behaviour
        code, _, err = run(capsys, "edit", *model_args, "--vectors", tmp_path / "v", *solver, "--output", output)
        assert code == 0, err
        assert json.loads((output / "adapter_config.json").read_text())["key_direction"] == keys


# --- errors that point at the fix -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message", "prog"),
    [
        (["inpsect", "x"], "unknown command 'inpsect'; did you mean inspect?", "steer2edit"),
        (["inspect", "x", "--heatmpa", "y.png"], "unrecognized option --heatmpa; did you mean --heatmap?", "inspect"),
        (["edit", "--ouput", "x"], "unrecognized option --ouput; did you mean --output?", "edit"),
        (["edit", "--vectors", "v", "--output", "o", "--max-kl", "0"], "pass --no-calibration instead", "edit"),
    ],
)
def test_mistakes_get_the_fix_in_a_few_lines(args, message, prog, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err
    assert len(err.strip().splitlines()) <= 3 and err.startswith(
        f"steer2edit {prog}: error" if prog != "steer2edit" else "steer2edit: error"
    )


@pytest.mark.parametrize("command", ALL_COMMANDS)
def test_help_names_each_default_once(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in text and "(default: False)" not in text
    assert not re.search(r"\(default: [^)]*\) \(default:", text)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("wrong-key.jsonl", '{"prompt": "fine"}\n{"question": "no"}\n', "wrong-key.jsonl: line 2: no 'prompt' key"),
        ("not-text.json", '["fine", 3]', "not-text.json: item 2: a prompt must be a non-empty string"),
        ("empty.json", "[]", "empty.json holds no prompts"),
        ("bad.jsonl", '{"prompt": "a"}\n{oops\n', "bad.jsonl: line 2 is not valid JSON"),
    ],
)
def test_a_bad_prompt_file_is_named_with_its_line_before_any_model_loads(name, content, message, tmp_path, capsys):
    adapter = _tiny_adapter(tmp_path / "adapter")
    (tmp_path / name).write_text(content)
    nowhere = tmp_path / "no-such-model"  # loading it would fail: the prompt file's error must come first
    code, out, err = run(capsys, "inspect", adapter, "--act-on", tmp_path / name, "--model", nowhere)
    assert code == 2 and message in err and out == ""


def test_a_plain_text_prompt_file_holds_one_prompt_per_line(tmp_path):
    from steer2edit_peft.probes import load_prompts

    (tmp_path / "prompts.txt").write_text("How do I bake bread?\n\nName a colour.\n")
    assert load_prompts(str(tmp_path / "prompts.txt")) == ["How do I bake bread?", "Name a colour."]


def test_export_gguf_checks_its_inputs_before_loading_the_model(tmp_path, capsys):
    adapter = _tiny_adapter(tmp_path / "adapter")
    nowhere = ["--model", str(tmp_path / "no-model"), "--output", tmp_path / "out"]
    code, _, err = run(capsys, "export-gguf", adapter, "--base-gguf", tmp_path / "missing.gguf", *nowhere)
    assert code == 2 and "missing.gguf is not a file" in err
    code, _, err = run(capsys, "export-gguf", adapter, "--tensor-type", "f16", *nowhere)
    assert code == 2 and "pass --merged too" in err and not (tmp_path / "out").exists()


def test_inspect_checks_the_heatmap_before_printing_and_keeps_an_existing_image(tmp_path, capsys):
    adapter = _tiny_adapter(tmp_path / "adapter")
    code, out, err = run(capsys, "inspect", adapter, "--heatmap", tmp_path / "out.jpg")
    assert code == 2 and out == "" and "name the image with one of .png" in err
    (tmp_path / "mine.png").write_bytes(b"mine")
    code, out, err = run(capsys, "inspect", adapter, "--heatmap", tmp_path / "mine.png")
    assert code == 2 and out == "" and "--overwrite" in err and (tmp_path / "mine.png").read_bytes() == b"mine"
    code, out, _ = run(capsys, "inspect", adapter, "--heatmap", tmp_path / "mine.png", "--overwrite")
    assert code == 0 and (tmp_path / "mine.png").read_bytes().startswith(b"\x89PNG")


def test_merge_writes_the_dtype_models_load_in(checkpoint, tmp_path, capsys):
    from steer2edit_peft.core.models import resolve_dtype

    torch.manual_seed(0)
    edited = get_peft_model(AutoModelForCausalLM.from_pretrained(checkpoint), Steer2EditConfig(init_weights=False))
    edited.save_pretrained(tmp_path / "adapter")
    code, _, err = run(capsys, "merge", tmp_path / "adapter", "--model", checkpoint, "--output", tmp_path / "merged")
    assert code == 0, err
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype="auto")
    assert merged.model.layers[0].self_attn.o_proj.weight.dtype == resolve_dtype("auto")


def test_eval_names_a_folder_without_an_adapter_before_loading_a_model(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, "eval", "--model", tmp_path / "no-model", "--adapter", tmp_path / "empty")
    assert code == 2 and "holds no adapter_config.json" in err
