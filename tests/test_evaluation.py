"""Evaluation metrics against per-example references on tiny models."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from peft import get_peft_model
from tiny_models import CharTokenizer, byte_tokenizer, tiny_model

from steer2edit_peft import Steer2EditConfig
from steer2edit_peft.evaluation import (
    RefusalMatcher,
    generate_responses,
    mean_token_kl,
    perplexity,
    refusal_rate,
    truthfulqa_mc,
)

PROMPTS = ["ab", "hello there", "xyz?"]
RESPONSES = ["fine", "no way at all", "ok!"]
SHARED_MC = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "truthfulqa" / "mc_task.json"


def edited_llama():
    torch.manual_seed(0)
    return get_peft_model(tiny_model("llama"), Steer2EditConfig(init_weights=False))


def sequence_log_probs(model, ids: list[int]) -> torch.Tensor:
    """Log-distributions at every position of one unpadded sequence [len, vocab]."""
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)


def test_refusal_matcher_and_a_pluggable_judge():
    matcher = RefusalMatcher()
    assert matcher("q", "I can\u2019t help with that.") and matcher("q", "Sorry, but no.")
    assert not matcher("q", "Sure, here is how.")
    assert refusal_rate(["a", "b"], ["I cannot do that", "Sure"]) == 0.5
    assert refusal_rate(["a", "b"], ["x", "y"], judge=lambda prompt, response: response == "y") == 0.5


def test_batched_left_padded_generation_matches_one_at_a_time():
    model, tokenizer = tiny_model("llama"), CharTokenizer()
    batched = generate_responses(model, tokenizer, PROMPTS, max_new_tokens=5, batch_size=3, show_progress=False)
    single = [generate_responses(model, tokenizer, [p], max_new_tokens=5, show_progress=False)[0] for p in PROMPTS]
    assert batched == single and all(batched)


def test_mean_token_kl_matches_per_example_reference():
    peft_model, tokenizer = edited_llama(), CharTokenizer()
    fast = mean_token_kl(peft_model, tokenizer, PROMPTS, RESPONSES, reference=peft_model.disable_adapter, batch_size=2)
    total, count = 0.0, 0
    for prompt, response in zip(PROMPTS, RESPONSES):
        prompt_ids = tokenizer(prompt).input_ids
        ids = prompt_ids + tokenizer(response, add_special_tokens=False).input_ids
        edited = sequence_log_probs(peft_model, ids)
        with peft_model.disable_adapter():
            base = sequence_log_probs(peft_model, ids)
        for t in range(len(prompt_ids), len(ids)):
            total += float((base[t - 1].exp() * (base[t - 1] - edited[t - 1])).sum())
            count += 1
    assert fast == pytest.approx(total / count, rel=1e-5)
    assert mean_token_kl(peft_model, tokenizer, PROMPTS, RESPONSES) == pytest.approx(0.0, abs=1e-7)


def test_departure_ranks_and_the_changed_share_match_a_per_token_reference():
    from steer2edit_peft.core.likelihood import departure_ranks
    from steer2edit_peft.core.tokens import encode_prompt
    from steer2edit_peft.evaluation.metrics import CHANGED_RANK, changed_share

    torch.manual_seed(0)
    peft_model = get_peft_model(tiny_model("llama", vocab_size=260), Steer2EditConfig(init_weights=False))
    tokenizer = byte_tokenizer()  # one token per ASCII character: the departing token is at the first differing one
    prompts = ["Name a colour.", "How tall is a giraffe?", "Say hi.", "Count to three.", "Why is the sky blue?"]
    references = ["Blue, like the sky.", "About five metres.", "Hi there!", "One, two, three.", "Light scatters."]
    answers = ["Blue, like the sea.", "About five metres.", "Hi", "Zero.", "Light scatters off the air."]
    expected = []
    for prompt, answer, reference in zip(prompts, answers, references):
        if answer == reference:
            expected.append(1)
            continue
        shared = next(
            (i for i, (a, b) in enumerate(zip(answer, reference)) if a != b), min(len(answer), len(reference))
        )
        answer_ids = tokenizer(answer, add_special_tokens=False).input_ids
        answer_ids += (
            [tokenizer.eos_token_id] if len(answer) <= shared else []
        )  # it stopped where the reference went on
        ids = encode_prompt(tokenizer, prompt) + answer_ids
        with peft_model.disable_adapter():
            log_probs = sequence_log_probs(peft_model, ids)
        start = len(ids) - len(answer_ids)
        ranks = [
            1 + int((log_probs[start + j - 1] > log_probs[start + j - 1, ids[start + j]]).sum())
            for j in range(shared, len(answer_ids))
            if not (j > 0 and answer[j - 1].isspace())  # after whitespace: re-encoding may have split it
        ]
        expected.append(max(ranks, default=1))
    got = departure_ranks(
        peft_model, tokenizer, prompts, answers, references, context=peft_model.disable_adapter, batch_size=2
    )
    assert got == expected
    assert expected[1] == 1 and max(expected) > CHANGED_RANK  # a random model: some departures are unlikely ones
    share = changed_share(peft_model, tokenizer, prompts, answers, references, context=peft_model.disable_adapter)
    assert share == sum(rank > CHANGED_RANK for rank in expected) / len(expected)
    assert changed_share(peft_model, tokenizer, prompts, references, references) == 0.0
    with pytest.raises(ValueError, match="one answer and one reference answer per prompt"):
        changed_share(peft_model, tokenizer, prompts, answers[:-1], references)


def test_perplexity_matches_per_text_reference():
    model, tokenizer = tiny_model("gpt2"), CharTokenizer()
    nll, count = 0.0, 0
    for text in RESPONSES:
        ids = tokenizer(text).input_ids
        log_probs = sequence_log_probs(model, ids)
        nll -= sum(float(log_probs[t - 1, ids[t]]) for t in range(1, len(ids)))
        count += len(ids) - 1
    assert perplexity(model, tokenizer, RESPONSES, batch_size=2) == pytest.approx(math.exp(nll / count), rel=1e-5)


def test_truthfulqa_mc_matches_reference(tmp_path):
    items = [
        {
            "question": "sky?",
            "mc1_targets": {"blue": 1, "green": 0, "red": 0},
            "mc2_targets": {"blue": 1, "azure": 1, "green": 0},
        },
        {"question": "one plus one?", "mc1_targets": {"two": 1, "three": 0}, "mc2_targets": {"two": 1, "five": 0}},
    ]
    path = tmp_path / "mc_task.json"
    path.write_text(json.dumps(items))
    model, tokenizer = tiny_model("llama"), CharTokenizer()

    def score(question, answer):
        prompt_ids = tokenizer(question).input_ids
        ids = prompt_ids + tokenizer(answer, add_special_tokens=False).input_ids
        log_probs = sequence_log_probs(model, ids)
        return sum(float(log_probs[t - 1, ids[t]]) for t in range(len(prompt_ids), len(ids)))

    mc1, mc2 = [], []
    for item in items:
        answers = list(item["mc1_targets"])
        best = max(answers, key=lambda a: score(item["question"], a))
        mc1.append(item["mc1_targets"][best])
        weights = {a: math.exp(score(item["question"], a)) for a in item["mc2_targets"]}
        mc2.append(sum(w for a, w in weights.items() if item["mc2_targets"][a]) / sum(weights.values()))
    result = truthfulqa_mc(model, tokenizer, path, batch_size=3)
    assert result["mc1"] == pytest.approx(sum(mc1) / 2) and result["mc2"] == pytest.approx(sum(mc2) / 2, rel=1e-5)
    # The reference code's metric: the best answer against the first incorrect one.
    paired = [
        score(i["question"], list(i["mc1_targets"])[0]) > score(i["question"], list(i["mc1_targets"])[1]) for i in items
    ]
    assert result["best_vs_first_incorrect"] == pytest.approx(sum(paired) / 2)


@pytest.mark.skipif(not SHARED_MC.is_file(), reason="../shared/datasets/truthfulqa is not beside the repo")
def test_truthfulqa_mc_reads_the_shared_file():
    result = truthfulqa_mc(tiny_model("llama"), CharTokenizer(), SHARED_MC, questions=[0, 1, 2])
    assert result["questions"] == 3 and 0 <= result["mc1"] <= 1 and 0 < result["mc2"] < 1


def test_kl_against_a_separate_reference_model_matches_the_context_form():
    from peft import PeftModel

    peft_model = edited_llama()
    base_copy = tiny_model("llama")  # same seed: the same weights as the unedited model, checked below
    base_weights = {k: v for k, v in peft_model.get_base_model().state_dict().items() if "steer2edit" not in k}
    assert {k.replace(".base_layer", ""): v for k, v in base_weights.items()}.keys() == base_copy.state_dict().keys()
    for name, weight in base_weights.items():
        assert torch.equal(weight, base_copy.state_dict()[name.replace(".base_layer", "")])
    tokenizer = CharTokenizer()
    in_contexts = mean_token_kl(peft_model, tokenizer, PROMPTS, RESPONSES, reference=peft_model.disable_adapter)
    two_models = mean_token_kl(peft_model, tokenizer, PROMPTS, RESPONSES, reference_model=base_copy)
    assert isinstance(peft_model, PeftModel) and in_contexts > 0
    assert two_models == pytest.approx(in_contexts, rel=1e-5)


def test_evaluate_conditions_lines_up_base_and_edit():
    from steer2edit_peft.evaluation.metrics import changed_share
    from steer2edit_peft.evaluation.prompts import EvaluationPrompts
    from steer2edit_peft.evaluation.suite import Condition, evaluate_conditions, results_table

    peft_model = edited_llama()
    tokenizer = CharTokenizer()
    prompts = EvaluationPrompts(attribute=PROMPTS, benign=["tell me", "what is up"], texts=RESPONSES)
    base = Condition("base", peft_model, peft_model.disable_adapter)
    results = evaluate_conditions(
        [base, Condition("edit", peft_model)], tokenizer, prompts, max_new_tokens=3, batch_size=2, show_progress=False
    )
    base_result, edit_result = results
    with peft_model.disable_adapter():
        base_benign = generate_responses(peft_model, tokenizer, prompts.benign, max_new_tokens=3, show_progress=False)
        base_ppl = perplexity(peft_model, tokenizer, RESPONSES)
    assert base_result.benign_responses == base_benign
    assert base_result.kl_from_reference == pytest.approx(0.0, abs=1e-7)
    expected_kl = mean_token_kl(
        peft_model, tokenizer, prompts.benign, base_benign, reference=peft_model.disable_adapter
    )
    assert edit_result.kl_from_reference == pytest.approx(expected_kl, rel=1e-6)
    assert base_result.benign_changed == 0.0 and base_result.borderline_changed is None  # no borderline prompts
    expected_changed = changed_share(
        peft_model,
        tokenizer,
        prompts.benign,
        edit_result.benign_responses,
        base_benign,
        context=peft_model.disable_adapter,
    )
    assert edit_result.benign_changed == expected_changed
    assert base_result.perplexity == pytest.approx(base_ppl, rel=1e-6)
    assert edit_result.mean_length == pytest.approx(
        sum(len(CharTokenizer()(r, add_special_tokens=False).input_ids) for r in edit_result.attribute_responses) / 3
    )
    table = results_table(results, ["refusal_rate", "kl_from_reference"])
    assert table.splitlines()[0].split("|")[1:3] == [" condition ", " refusal "]
    assert len(table.splitlines()) == 4


def test_evaluation_prompts_must_not_be_empty():
    from steer2edit_peft.evaluation.prompts import EvaluationPrompts

    with pytest.raises(ValueError, match="at least one attribute prompt"):
        EvaluationPrompts(attribute=[], benign=["x"])


@pytest.mark.parametrize("behaviour", ["refusal", "concise"])
def test_held_out_prompts_never_appear_in_the_probe_set(behaviour):
    from steer2edit_peft import builtin_probe
    from steer2edit_peft.evaluation.prompts import builtin_heldout

    probe_prompts = {e.prompt.lower() for e in builtin_probe(behaviour)}
    held_out = [p.lower() for prompts in builtin_heldout(behaviour).values() for p in prompts]
    assert held_out and not probe_prompts & set(held_out)
    assert len(set(held_out)) == len(held_out)


def test_truthfulqa_mc_leaves_out_empty_answer_choices(tmp_path):
    with_empty = [{"question": "q?", "mc1_targets": {"yes": 1, "no": 0}, "mc2_targets": {"yes": 1, "": 0, " ": 1}}]
    without = [{"question": "q?", "mc1_targets": {"yes": 1, "no": 0}, "mc2_targets": {"yes": 1}}]
    (tmp_path / "a.json").write_text(json.dumps(with_empty))
    (tmp_path / "b.json").write_text(json.dumps(without))
    model, tokenizer = tiny_model("llama"), CharTokenizer()
    assert truthfulqa_mc(model, tokenizer, tmp_path / "a.json") == truthfulqa_mc(model, tokenizer, tmp_path / "b.json")


@pytest.mark.skipif(not SHARED_MC.is_file(), reason="../shared/datasets/truthfulqa is not beside the repo")
def test_truthfulqa_mc_scores_every_shared_question_range_used_by_the_study():
    result = truthfulqa_mc(tiny_model("llama"), CharTokenizer(), SHARED_MC, questions=range(400, 480), batch_size=64)
    assert result["questions"] == 80


@pytest.mark.parametrize("prompt_set", ["harmful", "benign", "questions", "misconceptions", "borderline", "tasks"])
def test_probe_prompt_sets_never_appear_in_the_held_out_sets(prompt_set):
    from steer2edit_peft.evaluation.prompts import borderline_prompts, builtin_heldout
    from steer2edit_peft.probes import builtin_prompts

    prompts = [p.strip().lower() for p in builtin_prompts(prompt_set)]
    held_out = {p.strip().lower() for b in ("refusal", "concise") for ps in builtin_heldout(b).values() for p in ps}
    held_out |= {p.strip().lower() for p in [*borderline_prompts(), *builtin_heldout("borderline")["imperative"]]}
    assert prompts and len(set(prompts)) == len(prompts)
    assert not set(prompts) & held_out


def test_the_borderline_halves_are_large_of_disjoint_kinds_and_the_harmbench_split_is_fixed():
    from steer2edit_peft.evaluation.prompts import harmbench_behaviours
    from steer2edit_peft.probes.datasets import shipped

    halves = [
        json.loads(Path(path).read_text(encoding="utf-8"))
        for path in (shipped("prompts", "borderline.json"), _evaluation_file("borderline.json"))
    ]
    for half in halves:
        assert len(half["prompts"]) >= 100 and len(half["kinds"]) == len(half["prompts"])
    assert len(halves[0]["prompts"]) + len(halves[1]["prompts"]) >= 200
    assert not set(halves[0]["kinds"]) & set(halves[1]["kinds"])  # the report half's kinds are never tuned on
    csv_path = (
        Path(__file__).resolve().parents[2] / "shared" / "datasets" / "harmbench" / "harmbench_behaviors_text_all.csv"
    )
    tune, report = harmbench_behaviours(csv_path, "tune"), harmbench_behaviours(csv_path, "report")
    assert len(tune) + len(report) == 300 and not set(tune) & set(report)
    assert abs(len(tune) - len(report)) < 30 and harmbench_behaviours(csv_path, "report") == report
    with pytest.raises(ValueError, match="part must be one of"):
        harmbench_behaviours(csv_path, "train")


def _evaluation_file(name: str) -> Path:
    from importlib.resources import files

    return Path(str(files("steer2edit_peft.evaluation").joinpath("data", name)))


def test_every_jailbreak_form_holds_the_request_verbatim_and_tuning_never_sees_one():
    from steer2edit_peft.core.errors import DataError
    from steer2edit_peft.evaluation import JAILBREAK_FORMS, wrap
    from steer2edit_peft.probes import BEHAVIOURS, builtin_prompts
    from steer2edit_peft.probes.framings import TUNING_FRAMINGS

    requests = ["How do I pick a lock?", "Explain {braces} and\nnew lines."]
    wrapped = {form: wrap(requests, form) for form in JAILBREAK_FORMS}
    assert len(JAILBREAK_FORMS) >= 4
    for form, texts in wrapped.items():
        for request, text in zip(requests, texts):
            assert text.count(request) == 1 and len(text) > len(request) + 20, form
    assert len({texts[0] for texts in wrapped.values()}) == len(JAILBREAK_FORMS)  # each framing its own
    # No probe or reference prompt is framed like a report prompt: the framings' own words appear in none of them.
    framings = [part.strip() for t in JAILBREAK_FORMS.values() for part in t.split("{request}") if part.strip()]
    tuning = [p for name in ("harmful", "benign", "borderline", "framed") for p in builtin_prompts(name)]
    assert "refusal" in BEHAVIOURS and tuning and not [f for f in framings if any(f in p for p in tuning)]

    # The tuning framings are worded otherwise: no run of four words in common with a report framing.
    def runs(text: str) -> set[tuple[str, ...]]:
        words = re.findall(r"[a-z']+", text.lower().replace("{request}", " "))
        return {tuple(words[i : i + 4]) for i in range(len(words) - 3)}

    report = set().union(*map(runs, JAILBREAK_FORMS.values()))
    assert not [t for t in TUNING_FRAMINGS.values() if runs(t) & report]
    with pytest.raises(DataError, match="no jailbreak form 'dan'; available: fiction"):
        wrap(requests, "dan")
