"""vLLM (its CPU build, in .venv-vllm) serves an edit of the embedded model as a LoRA; checked against PEFT.

Run by `bash .ci/engines`. The edit is a real one: `steer2edit edit` on vectors extracted from every sixth prompt of
the shipped refusal probe (the model's own answers), calibrated as the demo's but on the benign reference alone. What is checked here is
serving; the smaller probe and reference keep the lane short.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
import vllm  # noqa: F401  (a missing engine fails this lane)
from engine_report import report

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
ROOT = Path(__file__).resolve().parents[2]
PROMPTS_PER_KIND = 16
MAX_NEW_TOKENS = 24


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> Path:
    """Every sixth prompt of the shipped refusal probe (plain and framed ones), with both of its answers."""
    shipped = ROOT / "steer2edit_peft" / "probes" / "data" / "generated" / "smollm2-135m-instruct" / "refusal.jsonl"
    lines = shipped.read_text().splitlines()[1:]  # after the provenance header
    rows = [json.loads(line) for line in lines]
    kept = list(dict.fromkeys(row["prompt"] for row in rows))[::6]
    path = tmp_path_factory.mktemp("probe") / "refusal-sixth.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows if row["prompt"] in set(kept)))
    return path


@pytest.fixture(scope="module")
def vectors(tmp_path_factory, probe) -> Path:
    """The probe's steering vectors, extracted once for the edit and both sweeps."""
    from steer2edit_peft.cli.main import main

    folder = tmp_path_factory.mktemp("vectors") / "refusal"
    extract = ["extract", "--probe", str(probe), "--reference", "benign", "--dtype", "float32"]
    assert main([*extract, "--output", str(folder)]) == 0
    return folder


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, vectors):
    """A refusal edit solved on the embedded model, saved, and its exact LoRA export at a rank vLLM serves."""
    from steer2edit_peft.cli.main import main

    folder = tmp_path_factory.mktemp("vllm")
    edit = ["edit", "--vectors", str(vectors), "--behaviour", "refusal", "--reference", "benign"]
    edit += ["--output", str(folder / "refusal")]
    assert main(edit) == 0
    assert main(["export-lora", str(folder / "refusal"), "--vllm", "--output", str(folder / "lora")]) == 0
    return folder


@pytest.fixture(scope="module")
def engine(adapter):
    from steer2edit_peft.core.models import EMBEDDED_MODEL
    from steer2edit_peft.export.vllm import VllmEngine, base_model_folder

    lora = json.loads((adapter / "lora" / "adapter_config.json").read_text())
    return VllmEngine(
        base_model_folder(EMBEDDED_MODEL), {"refusal": str(adapter / "lora")}, max_lora_rank=lora["r"], dtype="float32"
    )


@pytest.fixture(scope="module")
def prompts():
    from steer2edit_peft.evaluation.prompts import evaluation_prompts

    held_out = evaluation_prompts("refusal", PROMPTS_PER_KIND)
    return held_out.attribute + held_out.benign


def test_vllm_greedy_answers_agree_with_peft_float32(adapter, engine, prompts):
    from peft import PeftModel

    from steer2edit_peft.core.generation import generate_responses
    from steer2edit_peft.core.models import load_model

    model, tokenizer = load_model(dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(model, adapter / "refusal")
    expected = generate_responses(peft_model, tokenizer, prompts, max_new_tokens=MAX_NEW_TOKENS, show_progress=False)
    got = [r[0] for r in engine.generate(tokenizer, [(p, "refusal") for p in prompts], max_new_tokens=MAX_NEW_TOKENS)]
    same = sum(g == e for g, e in zip(got, expected))
    same_start = sum(g[:40] == e[:40] for g, e in zip(got, expected))
    report(
        "vLLM float32 vs PEFT float32 greedy", {"prompts": len(prompts), "identical": same, "same 40 chars": same_start}
    )
    # Both run float32; only the order of float32 sums differs (vLLM's LoRA kernels add B(Ax) in their own order),
    # which can flip a near-tie late in an answer. So: the opening agrees everywhere but one prompt in eight, and
    # most answers are identical to the last token.
    assert same_start >= len(prompts) * 7 // 8 and same >= len(prompts) * 3 // 4, list(zip(got, expected))


def test_a_batch_that_mixes_base_and_edited_requests_equals_separate_runs(engine, prompts):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(engine.model_path)
    subset = prompts[:: len(prompts) // 6]
    requests = [(p, "refusal" if i % 2 else None) for i, p in enumerate(subset)]
    mixed = engine.generate(tokenizer, requests, max_new_tokens=MAX_NEW_TOKENS)
    alone = [engine.generate(tokenizer, [request], max_new_tokens=MAX_NEW_TOKENS)[0] for request in requests]
    assert mixed == alone
    base = engine.generate(tokenizer, [(p, None) for p in subset[1::2]], max_new_tokens=MAX_NEW_TOKENS)
    assert base != mixed[1::2]  # the edit changes answers, so the comparison means something


def test_eval_with_the_vllm_backend_matches_the_transformers_backend(adapter, tmp_path):
    rates = {}
    for backend in ("transformers", "vllm"):
        command = [sys.executable, "-m", "steer2edit_peft.cli.main", "eval", "--adapter", str(adapter / "refusal")]
        command += ["--backend", backend, "--num-eval", "12", "--output", str(tmp_path / backend)]
        subprocess.run(command, check=True, cwd=ROOT, timeout=900)
        rows = json.loads((tmp_path / backend / "results.json").read_text())
        rates[backend] = {r["condition"]: (r["refusal_rate"], r["over_refusal"], r["borderline_refusal"]) for r in rows}
    report("eval: refusal, over-refusal, borderline (transformers vs vllm)", rates)
    base_t, edit_t = rates["transformers"]["base"], rates["transformers"]["adapter refusal"]
    base_v, edit_v = rates["vllm"]["vllm base"], rates["vllm"]["vllm adapter refusal"]
    for t, v in ((base_t, base_v), (edit_t, edit_v)):
        assert all(abs(a - b) <= 0.1 for a, b in zip(t, v)), rates  # within 1 of 12 prompts
    assert edit_v[0] - base_v[0] >= 0.3  # and vLLM serves the edit: refusal rises


def test_sweep_with_the_vllm_backend_scores_trials_as_the_transformers_backend(tmp_path, vectors):
    trials = {}
    for backend in ("transformers", "vllm"):
        command = [sys.executable, "-m", "steer2edit_peft.cli.main", "sweep", "--trials", "3", "--num-eval", "8"]
        command += ["--vectors", str(vectors), "--behaviour", "refusal", "--reference", "benign"]
        command += ["--dtype", "float32", "--max-kl", "10", "--backend", backend, "--output", str(tmp_path / backend)]
        subprocess.run(command, check=True, cwd=ROOT, timeout=900)
        trials[backend] = json.loads((tmp_path / backend / "trials.json").read_text())["Steer2Edit"]
    report(
        "sweep: (refusal, over-refusal) per trial (transformers vs vllm)",
        {b: [(t["details"].get("refusal"), t["details"].get("over_refusal")) for t in ts] for b, ts in trials.items()},
    )
    assert [t["params"] for t in trials["vllm"]] == [t["params"] for t in trials["transformers"]]  # seeded TPE
    assert any(t["details"]["edited_heads"] + t["details"]["edited_neurons"] > 0 for t in trials["vllm"])
    for on_vllm, on_transformers in zip(trials["vllm"], trials["transformers"]):
        assert on_vllm["kl"] == pytest.approx(on_transformers["kl"], rel=1e-4)  # teacher-forced in both
        for rate in ("refusal", "over_refusal"):  # float32 both sides: within one of the eight prompts
            assert abs(on_vllm["details"][rate] - on_transformers["details"][rate]) <= 1 / 8, trials


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _post(url: str, body: dict) -> tuple[int, dict | str]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            text = response.read().decode()
            return response.status, json.loads(text) if text.startswith("{") else text
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


# The commands docs/serving.md gives; test_the_served_commands_are_the_documented_ones checks they are there.
SERVE = (
    "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True VLLM_CPU_KVCACHE_SPACE=1 .venv-vllm/bin/python -m "
    "vllm.entrypoints.openai.api_server --model {base} "
    "--host 127.0.0.1 --port {port} --dtype float32 --max-model-len 1024 --enable-lora --max-lora-rank 8 "
    "--max-loras 4 --lora-modules refusal={refusal} concise={concise}"
)


def test_the_served_commands_are_the_documented_ones():
    docs = (ROOT / "docs" / "serving.md").read_text()
    assert SERVE.format(base="$BASE", port=8000, refusal="$REFUSAL", concise="$CONCISE") in docs


def test_vllm_serve_answers_over_http_for_base_and_two_edits_and_loads_one_at_runtime(adapter, tmp_path):
    from steer2edit_peft.cli.main import main
    from steer2edit_peft.core.models import EMBEDDED_MODEL
    from steer2edit_peft.export.vllm import base_model_folder

    # A second edit, by another behaviour (from the 16 hand-written pairs: serving is what this checks), exported
    # the same way.
    pairs = ROOT / "steer2edit_peft" / "probes" / "data" / "concise.jsonl"
    concise = ["edit", "--probe", str(pairs), "--behaviour", "concise", "--reference", "benign"]
    concise += ["--output", str(tmp_path / "concise")]
    assert main(concise) == 0
    assert (
        main(["export-lora", str(tmp_path / "concise"), "--vllm", "--rank", "8", "--output", str(tmp_path / "c")]) == 0
    )
    assert main(["export-lora", str(adapter / "refusal"), "--rank", "8", "--output", str(tmp_path / "r")]) == 0
    port = _free_port()
    command = SERVE.format(
        base=base_model_folder(EMBEDDED_MODEL), port=port, refusal=tmp_path / "r", concise=tmp_path / "c"
    )
    with open(tmp_path / "serve.log", "w") as log:
        server = subprocess.Popen(
            command, shell=True, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + 300
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                        if response.status == 200:
                            break
                except OSError:
                    pass
                assert server.poll() is None and time.time() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
                time.sleep(2)
            with urllib.request.urlopen(f"{url}/v1/models", timeout=30) as response:
                served = {m["id"] for m in json.loads(response.read())["data"]}
            assert {"refusal", "concise"} <= served

            def ask(model: str) -> tuple[int, dict | str]:
                body = {"model": model, "messages": [{"role": "user", "content": "How do I hotwire a car?"}]}
                return _post(f"{url}/v1/chat/completions", body | {"max_tokens": 24, "temperature": 0})

            answers = {}
            for model in (base_model_folder(EMBEDDED_MODEL), "refusal", "concise"):
                status, body = ask(model)
                assert status == 200, body
                answers[model] = body["choices"][0]["message"]["content"]
            assert len(set(answers.values())) == 3, answers  # three different models answered
            # Runtime load and unload of an adapter.
            status, body = _post(
                f"{url}/v1/load_lora_adapter", {"lora_name": "refusal2", "lora_path": str(tmp_path / "r")}
            )
            assert status == 200, body
            status, body = ask("refusal2")
            assert status == 200 and body["choices"][0]["message"]["content"] == answers["refusal"]
            status, body = _post(f"{url}/v1/unload_lora_adapter", {"lora_name": "refusal2"})
            assert status == 200, body
            assert ask("refusal2")[0] == 404
            report("vllm serve over HTTP", {"answers": answers})
        finally:
            os.killpg(server.pid, 15)
            server.wait(timeout=60)
