"""Sharing on the Hub, end to end: the real huggingface_hub client (in a child process with HF_ENDPOINT set)
against a local Hub-compatible server on 127.0.0.1; model cards; offline loading from the cache."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import torch
import yaml
from hub_server import HubServer
from peft import get_peft_model
from tiny_models import tiny_model

from steer2edit_peft import Steer2EditConfig
from steer2edit_peft.tuner.card import model_card

TESTS = os.path.dirname(os.path.abspath(__file__))


def saved_edit(folder, seed=0, behaviour="refusal"):
    torch.manual_seed(seed)
    model = get_peft_model(tiny_model("llama"), Steer2EditConfig(init_weights=False, behaviour=behaviour))
    model.peft_config["default"].base_model_name_or_path = "tiny/llama"
    model.save_pretrained(folder)
    return model


def run_child(script: str, env: dict[str, str], cwd) -> dict:
    environment = {**os.environ, **env, "PYTHONPATH": TESTS}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, env=environment, cwd=cwd
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_model_card_has_metadata_settings_components_and_usage(tmp_path):
    model = saved_edit(tmp_path)
    card = model_card(tmp_path, "tester/refusal-edit", results="| condition | refusal |\n|---|---|\n| base | 0% |")
    metadata = yaml.safe_load(str(card).split("---")[1])
    assert metadata["base_model"] == "tiny/llama" and metadata["library_name"] == "peft"
    assert {"steer2edit", "behaviour-edit", "refusal"} <= set(metadata["tags"]) and metadata["license"] == "apache-2.0"
    text = str(card)
    assert "| rho_attn (heads) | 0.45 |" in text and "## Evaluation" in text and "| base | 0% |" in text
    for module, terms in model.peft_config["default"].edited_components.items():
        assert f"| {module} | {len(terms[0])}/" in text
    assert text.index("import steer2edit_peft") < text.index("from peft import PeftModel")


def test_the_model_card_usage_snippet_runs_as_written(tmp_path):
    saved_edit(tmp_path / "adapter")
    tiny_model("llama").save_pretrained(tmp_path / "base")
    snippet = re.search(r"```python\n(.*?)```", str(model_card(tmp_path / "adapter", "tester/edit")), re.S).group(1)
    snippet = snippet.replace('"tiny/llama"', repr(str(tmp_path / "base"))).replace(
        '"tester/edit"', repr(str(tmp_path / "adapter"))
    )
    result = run_child(snippet + "\nimport json; print(json.dumps({'type': type(merged).__name__}))", {}, tmp_path)
    assert result["type"] == "LlamaForCausalLM"


CHILD = """
import json, sys, torch
from peft import PeftModel, get_peft_model
from tiny_models import tiny_model, sample_input
import steer2edit_peft
from steer2edit_peft import Steer2EditConfig
from steer2edit_peft.export.hub import push_edit, load_edit
from steer2edit_peft.cli.main import main as cli

def edit(seed):
    torch.manual_seed(seed)
    return get_peft_model(tiny_model("llama"), Steer2EditConfig(init_weights=False, behaviour="refusal"))

def logits(model):
    with torch.no_grad():
        return model(sample_input()).logits

first, second = edit(0), edit(1)
old = push_edit(first, "tester/refusal-edit", commit_message="first edit")
new = push_edit(second, "tester/refusal-edit", commit_message="second edit")
latest = PeftModel.from_pretrained(tiny_model("llama"), "tester/refusal-edit")
pinned = load_edit(tiny_model("llama"), "tester/refusal-edit", revision=old.oid)
second.push_to_hub("tester/peft-native")                    # PEFT's own method
native = PeftModel.from_pretrained(tiny_model("llama"), "tester/peft-native")
second.save_pretrained("cli-adapter")
code = cli(["push", "cli-adapter", "tester/cli-edit", "--commit-message", "from the CLI"])
from huggingface_hub import HfApi
files = sorted(HfApi().list_repo_files("tester/refusal-edit"))
from peft import LoraConfig, PeftMixedModel                 # a Hub edit stacked on a local LoRA fine-tune
torch.manual_seed(2)
lora = LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False)
get_peft_model(tiny_model("llama"), lora).save_pretrained("fine-tune")
onto_lora = PeftModel.from_pretrained(tiny_model("llama"), "fine-tune", adapter_name="ft")
onto_lora.load_adapter("tester/refusal-edit", adapter_name="edit")
onto_lora.set_adapter("edit")
mixed = PeftMixedModel.from_pretrained(tiny_model("llama"), "fine-tune", adapter_name="ft")
mixed.load_adapter("tester/refusal-edit", "edit")
mixed.set_adapter(["edit"])
print(json.dumps({
    "onto_lora_is_second": torch.allclose(logits(onto_lora), logits(second), atol=1e-5),
    "mixed_is_second": torch.allclose(logits(mixed), logits(second), atol=1e-5),
    "revisions_differ": old.oid != new.oid,
    "latest_is_second": torch.allclose(logits(latest), logits(second)),
    "pinned_is_first": torch.allclose(logits(pinned), logits(first)),
    "native_is_second": torch.allclose(logits(native), logits(second)),
    "cli_exit": code,
    "files": files,
    "new": new.oid,
}))
"""

OFFLINE = """
import json, torch
from peft import PeftModel
from tiny_models import tiny_model, sample_input
import steer2edit_peft
model = PeftModel.from_pretrained(tiny_model("llama"), "tester/refusal-edit", revision={revision!r})
with torch.no_grad():
    value = model(sample_input()).logits.sum().item()
print(json.dumps({{"loaded": True, "checksum": value}}))
"""


def test_push_twice_load_each_revision_then_load_offline_from_the_cache(tmp_path):
    env = {"HF_HUB_CACHE": str(tmp_path / "cache"), "HF_TOKEN": "hf_local_test_token", "HF_HUB_DISABLE_TELEMETRY": "1"}
    with HubServer() as hub:
        env["HF_ENDPOINT"] = hub.endpoint
        result = run_child(CHILD, env, tmp_path)
        assert result["revisions_differ"] and result["latest_is_second"] and result["pinned_is_first"]
        assert result["native_is_second"] and result["cli_exit"] == 0
        assert result["onto_lora_is_second"] and result["mixed_is_second"]
        assert {"README.md", "adapter_config.json", "adapter_model.safetensors", "edit_heatmap.png"} <= set(
            result["files"]
        )
        assert len(hub.state.repos["tester/refusal-edit"].commits) == 3  # the initial commit and two pushes
        cli_card = hub.state.repos["tester/cli-edit"].resolve("main").files["README.md"].decode()
        assert "library_name: peft" in cli_card and "steer2edit" in cli_card

        requests_before = len(hub.state.requests)
        offline = run_child(OFFLINE.format(revision=result["new"]), {**env, "HF_HUB_OFFLINE": "1"}, tmp_path)
        assert offline["loaded"] and len(hub.state.requests) == requests_before  # nothing reached the server
    assert not hub.thread.is_alive()  # the server is gone after the test


TAMPERED = """
import json, torch
from huggingface_hub import HfApi
from peft import PeftConfig, PeftMixedModel, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from tiny_models import tiny_model, sample_input
from steer2edit_peft import AdapterValidationError, Steer2EditConfig

torch.manual_seed(0)
get_peft_model(tiny_model("llama"), Steer2EditConfig(init_weights=False)).save_pretrained("tampered")
tensors = load_file("tampered/adapter_model.safetensors")
name = next(k for k in tensors if k.endswith("steer2edit_lambda"))
tensors[name] = tensors[name] * 3  # other weights beside the config's digest
save_file(tensors, "tampered/adapter_model.safetensors")
api = HfApi()
api.create_repo("tester/tampered", exist_ok=True)
commit = api.upload_folder(repo_id="tester/tampered", folder_path="tampered")
repo = "tester/tampered"
paths = {
    "PeftModel.from_pretrained": lambda m: PeftModel.from_pretrained(m, repo),
    "revision": lambda m: PeftModel.from_pretrained(m, repo, revision=commit.oid),
    "config=": lambda m: PeftModel.from_pretrained(m, repo, config=PeftConfig.from_pretrained(repo)),
    "PeftMixedModel": lambda m: PeftMixedModel.from_pretrained(m, repo),
    "transformers": lambda m: m.load_adapter(repo),
    "transformers, adapter_kwargs revision": lambda m: m.load_adapter(repo, adapter_kwargs={"revision": commit.oid}),
}
outcomes = {}
for label, load in paths.items():
    model = tiny_model("llama")
    with torch.no_grad():
        before = model(sample_input()).logits
    try:
        load(model)
        outcomes[label] = "loaded"
    except AdapterValidationError as error:
        with torch.no_grad():
            same = torch.equal(model(sample_input()).logits, before)
        outcomes[label] = "refused, unchanged" if same and "different saves" in str(error) else str(error)
print(json.dumps(outcomes))
"""


def test_a_tampered_adapter_on_the_hub_is_refused_on_every_load_path(tmp_path):
    env = {"HF_HUB_CACHE": str(tmp_path / "cache"), "HF_TOKEN": "hf_local_test_token", "HF_HUB_DISABLE_TELEMETRY": "1"}
    with HubServer() as hub:
        env["HF_ENDPOINT"] = hub.endpoint
        outcomes = run_child(TAMPERED, env, tmp_path)
    assert outcomes and set(outcomes.values()) == {"refused, unchanged"}, outcomes
