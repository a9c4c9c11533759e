"""Importing steer2edit_peft changes nothing for other adapter types: the same script, with and without the import,
loads, saves and mixes LoRA, LoHa and IA3 adapters (and fails on their bad files) with the same outcomes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

SCRIPT = textwrap.dedent(
    """
    import hashlib, json, os, sys, tempfile, warnings
    sys.path.insert(0, {tests!r})
    warnings.simplefilter("ignore")
    if {with_package!r}:
        import steer2edit_peft  # noqa: F401
    import torch
    from peft import IA3Config, LoHaConfig, LoraConfig, PeftConfig, PeftMixedModel, PeftModel, get_peft_model
    from tiny_models import sample_input, tiny_model

    outcomes = {{}}

    def record(name, action):
        try:
            value = action()
        except Exception as error:  # the type and message are the outcome
            outcomes[name] = ["error", type(error).__name__, str(error).replace(root, "ROOT")[:300]]
        else:
            outcomes[name] = ["ok", value]

    def digest(model):
        with torch.no_grad():
            logits = model(sample_input()).logits
        return hashlib.sha256(logits.numpy().tobytes()).hexdigest()[:16]

    def listing(folder):
        return sorted(str(p.relative_to(folder)) for p in __import__("pathlib").Path(folder).rglob("*"))

    root = tempfile.mkdtemp()
    configs = {{
        "lora": LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
        "loha": LoHaConfig(r=2, target_modules=["q_proj", "v_proj"], init_weights=False),
        "ia3": IA3Config(target_modules=["k_proj", "down_proj"], feedforward_modules=["down_proj"], init_ia3_weights=False),
    }}
    for kind, config in configs.items():
        torch.manual_seed(0)
        model = get_peft_model(tiny_model("llama"), config)
        folder = os.path.join(root, kind)
        record(f"{{kind}} save", lambda: (model.save_pretrained(folder), listing(folder))[1])
        record(f"{{kind}} load", lambda: digest(PeftModel.from_pretrained(tiny_model("llama"), folder)))
        record(f"{{kind}} config", lambda: type(PeftConfig.from_pretrained(folder)).__name__)
        record(f"{{kind}} transformers", lambda: (lambda m: (m.load_adapter(folder), digest(m))[1])(tiny_model("llama")))
        record(f"{{kind}} resave", lambda: (model.save_pretrained(folder), listing(folder))[1])
    mixed = lambda: PeftMixedModel.from_pretrained(tiny_model("llama"), os.path.join(root, "lora"), adapter_name="a")
    record("mixed lora + loha", lambda: (lambda m: (m.load_adapter(os.path.join(root, "loha"), "b"),
                                                     m.set_adapter(["a", "b"]), digest(m))[2])(mixed()))
    record("lora then loha load_adapter", lambda: (lambda m: m.load_adapter(os.path.join(root, "loha"), "b"))(
        PeftModel.from_pretrained(tiny_model("llama"), os.path.join(root, "lora"))))

    def damaged(name, change):
        folder = os.path.join(root, "damaged-" + name)
        os.makedirs(folder)
        content = json.load(open(os.path.join(root, "lora", "adapter_config.json")))
        text = change(content)
        open(os.path.join(folder, "adapter_config.json"), "w").write(text if isinstance(text, str) else json.dumps(content))
        with open(os.path.join(root, "lora", "adapter_model.safetensors"), "rb") as source:
            open(os.path.join(folder, "adapter_model.safetensors"), "wb").write(source.read())
        return folder

    cases = {{
        "no peft_type": lambda c: c.pop("peft_type") and None,
        "unknown peft_type": lambda c: c.update(peft_type="NOT_A_METHOD"),
        "not JSON": lambda c: "{{",
        "a list": lambda c: "[1, 2]",
        "bad rank": lambda c: c.update(r="two"),
    }}
    for name, change in cases.items():
        folder = damaged(name, change)
        record(f"LoraConfig {{name}}", lambda: type(LoraConfig.from_pretrained(folder)).__name__)
        record(f"PeftConfig {{name}}", lambda: type(PeftConfig.from_pretrained(folder)).__name__)
        record(f"PeftModel {{name}}", lambda: digest(PeftModel.from_pretrained(tiny_model("llama"), folder)))
        record(f"transformers {{name}}", lambda: (lambda m: (m.load_adapter(folder), digest(m))[1])(tiny_model("llama")))
    print(json.dumps(outcomes, sort_keys=True))
    """
)


def outcomes(with_package: bool) -> dict:
    script = SCRIPT.format(tests=str(TESTS), with_package=with_package)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def plain():
    return outcomes(with_package=False)


def test_other_adapter_types_behave_the_same_with_steer2edit_imported(plain):
    assert len(plain) > 20 and any(value[0] == "error" for value in plain.values())  # errors are compared too
    assert any(value[0] == "ok" for value in plain.values())
    assert outcomes(with_package=True) == plain
