"""Probe data from the model's own responses, against one-prompt-at-a-time references; judges; bad input."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_models import byte_tokenizer, tiny_model

from steer2edit_peft import DataError
from steer2edit_peft.core.generation import Sampling, row_seed, sample_next_tokens, sample_responses
from steer2edit_peft.core.judges import ReferenceRefusalMatcher, RefusalMatcher, is_brief, is_refusal
from steer2edit_peft.probes import Behaviour, generate_probe, generate_utility_data
from steer2edit_peft.probes import generate as generate_module

PROMPTS = ["Name a colour.", "How tall is a giraffe?", "Say hi.", "Count to three, please."]


@pytest.fixture(scope="module")
def model_and_tokenizer():
    model, tokenizer = tiny_model("llama", vocab_size=260), byte_tokenizer()
    # Zero logits for the special tokens: a random model's greedy answers then hold text on every CPU's rounding
    # (on some, the top logit was EOS or PAD and every answer came out empty).
    with torch.no_grad():
        model.get_output_embeddings().weight[tokenizer.all_special_ids] = 0.0
    return model, tokenizer


def reference_sample(scores: torch.Tensor, sampling: Sampling, uniform: float) -> int:
    """Inverse-CDF sampling of one row, spelled out: sort, cut the nucleus, walk the cumulative mass."""
    probabilities = torch.softmax(scores.double() / sampling.temperature, dim=-1).tolist()
    order = sorted(range(len(probabilities)), key=lambda i: -probabilities[i])
    if sampling.top_k:
        order = order[: sampling.top_k]
        total = sum(probabilities[i] for i in order)
        probabilities = [p / total if i in order else 0.0 for i, p in enumerate(probabilities)]
    kept, mass = [], 0.0
    for index in order:
        if mass >= sampling.top_p:
            break
        kept.append(index)
        mass += probabilities[index]
    if sampling.top_p >= 1:
        kept = list(range(len(probabilities)))  # vocabulary order, as the unsorted path walks it
    target, running = uniform * sum(probabilities[i] for i in kept), 0.0
    for index in kept:
        running += probabilities[index]
        if target < running:
            return index
    return kept[-1]


@pytest.mark.parametrize(
    "sampling",
    [Sampling(), Sampling(temperature=0.7, top_p=0.9), Sampling(top_p=0.5, top_k=5), Sampling(temperature=2.0)],
)
def test_sample_next_tokens_matches_the_spelled_out_sampler(sampling):
    scores = torch.randn(64, 50, generator=torch.Generator().manual_seed(3)) * 2
    generators = [torch.Generator().manual_seed(i) for i in range(64)]
    uniforms = [torch.rand(1, generator=torch.Generator().manual_seed(i)).item() for i in range(64)]
    tokens = sample_next_tokens(scores, sampling, generators)
    expected = [reference_sample(scores[i], sampling, uniforms[i]) for i in range(64)]
    assert tokens.tolist() == expected


def test_sampled_responses_in_a_batch_equal_one_prompt_at_a_time(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    sampling = Sampling(temperature=0.9, top_p=0.95, seed=7)
    batched = sample_responses(
        model, tokenizer, PROMPTS, num_samples=3, sampling=sampling, max_new_tokens=6, batch_size=5, show_progress=False
    )
    alone = [
        sample_responses(
            model, tokenizer, [p], num_samples=3, sampling=sampling, max_new_tokens=6, batch_size=1, show_progress=False
        )[0]
        for p in PROMPTS
    ]
    assert batched == alone
    assert len({r for rs in batched for r in rs}) > len(PROMPTS)  # samples differ from one another
    other_seed = sample_responses(
        model,
        tokenizer,
        PROMPTS,
        num_samples=3,
        sampling=Sampling(0.9, 0.95, seed=8),
        max_new_tokens=6,
        show_progress=False,
    )
    assert other_seed != batched


def test_row_seeds_depend_on_seed_prompt_and_sample_only():
    assert row_seed(0, "a", 1) == row_seed(0, "a", 1)
    assert len({row_seed(0, "a", 0), row_seed(0, "a", 1), row_seed(1, "a", 0), row_seed(0, "b", 0)}) == 4


def test_a_response_prefix_starts_every_sampled_response(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    responses = sample_responses(
        model, tokenizer, PROMPTS[:2], num_samples=2, max_new_tokens=3, response_prefix="No:", show_progress=False
    )
    assert all(r.startswith("No:") and len(r) > 3 for rs in responses for r in rs)


def _always(prompt, response):
    return True


def _never(prompt, response):
    return False


def test_generate_probe_pairs_confirmed_responses_on_the_same_prompt(model_and_tokenizer, tmp_path, monkeypatch):
    model, tokenizer = model_and_tokenizer
    # Positives must start with the prefix (the judge checks it); negatives must not contain it.
    behaviour = Behaviour(
        "tagged",
        "Be polite.",
        positive_prefix="Yes",
        confirm_positive=lambda p, r: r.startswith("Yes"),
        confirm_negative=lambda p, r: not r.startswith("Yes") and len(r) % 2 == 0,
    )
    # The pairing is checked against the responses generate_probe itself sampled (a second sampling run may differ
    # in the last bit where the BLAS library's kernel choice depends on memory alignment).
    calls = []

    def recording(*args, **kwargs):
        responses = sample_responses(*args, **kwargs)
        calls.append((kwargs, responses))
        return responses

    monkeypatch.setattr(generate_module, "sample_responses", recording)
    probe = generate_probe(
        model,
        tokenizer,
        PROMPTS,
        behaviour,
        num_samples=3,
        max_new_tokens=5,
        cache=tmp_path / "p.jsonl",
        batch_size=4,
        show_progress=False,
    )
    (wanted_call, positives), (unwanted_call, negatives) = calls
    assert wanted_call["system_prompt"] == "Be polite." and wanted_call["response_prefix"] == "Yes"
    assert unwanted_call["system_prompt"] is None and "response_prefix" not in unwanted_call
    assert all(c["num_samples"] == 3 and c["sampling"] == generate_module.PROBE_SAMPLING for c, _ in calls)
    assert all(r.startswith("Yes") for rows in positives for r in rows)  # the prefix is part of each response
    expected = []
    for prompt, wanted, unwanted in zip(PROMPTS, positives, negatives):
        wanted = [r for r in wanted if behaviour.confirm_positive(prompt, r)]
        unwanted = [r for r in unwanted if behaviour.confirm_negative(prompt, r)]
        kept = min(len(wanted), len(unwanted))
        expected += [(prompt, r, True) for r in wanted[:kept]] + [(prompt, r, False) for r in unwanted[:kept]]
    assert expected and [(e.prompt, e.response, e.positive) for e in probe.examples] == expected
    assert probe.num_positive == probe.num_negative
    header = json.loads((tmp_path / "p.jsonl").read_text().splitlines()[0])
    assert next(iter(header.values()))["counts"]["sampled_positive"] == 3 * len(PROMPTS)


def test_a_cached_probe_is_reused_without_sampling(model_and_tokenizer, tmp_path, monkeypatch):
    model, tokenizer = model_and_tokenizer
    behaviour = Behaviour("loose", "Be brief.")

    def probe(num_samples: int):
        return generate_probe(
            model,
            tokenizer,
            PROMPTS,
            behaviour,
            num_samples=num_samples,
            max_new_tokens=4,
            cache=tmp_path / "p.jsonl",
            show_progress=False,
        )

    first = probe(2)

    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled although the cache holds this request")

    monkeypatch.setattr(generate_module, "sample_responses", no_sampling)
    again = probe(2)
    assert [(e.prompt, e.response, e.positive) for e in again.examples] == [
        (e.prompt, e.response, e.positive) for e in first.examples
    ]
    with pytest.raises(AssertionError, match="sampled although"):  # another request is not served from the cache
        probe(3)


def test_a_system_prompt_that_changes_nothing_is_a_clear_error(model_and_tokenizer, tmp_path):
    model, tokenizer = model_and_tokenizer
    behaviour = Behaviour("inert", "Be kind.", confirm_positive=_never, confirm_negative=_always)
    with pytest.raises(DataError, match="inert system prompt changed nothing: none of the 8 responses"):
        generate_probe(
            model,
            tokenizer,
            PROMPTS,
            behaviour,
            num_samples=2,
            max_new_tokens=3,
            cache=tmp_path / "p.jsonl",
            show_progress=False,
        )
    assert not (tmp_path / "p.jsonl").exists()


@pytest.mark.parametrize(("prompts", "message"), [([], "at least one prompt"), (["ok", "  "], "non-empty strings")])
def test_bad_prompt_lists_are_refused(model_and_tokenizer, prompts, message):
    model, tokenizer = model_and_tokenizer
    with pytest.raises(DataError, match=message):
        generate_probe(model, tokenizer, prompts, "refusal")


def test_an_empty_system_prompt_is_no_behaviour():
    with pytest.raises(DataError, match="must not be empty"):
        Behaviour.from_system_prompt("  ")


def test_utility_data_is_the_greedy_answers_and_is_cached(model_and_tokenizer, tmp_path):
    from steer2edit_peft.core.generation import generate_responses

    model, tokenizer = model_and_tokenizer
    utility = generate_utility_data(model, tokenizer, PROMPTS, max_new_tokens=4, cache=tmp_path / "u.jsonl")
    assert utility.responses == generate_responses(model, tokenizer, PROMPTS, max_new_tokens=4, show_progress=False)
    again = generate_utility_data(model, tokenizer, PROMPTS, max_new_tokens=4, reuse=[tmp_path / "u.jsonl"])
    assert again.responses == utility.responses


def test_prompts_the_model_answers_with_nothing_are_left_out_and_counted(model_and_tokenizer, monkeypatch, caplog):
    from steer2edit_peft import extract_steering_vectors
    from steer2edit_peft.probes.datasets import ContrastiveDataset, ContrastiveExample

    model, tokenizer = model_and_tokenizer
    answers = ["red", "", "hi", "   "]
    monkeypatch.setattr("steer2edit_peft.core.generation.generate_responses", lambda *a, **k: list(answers))
    with caplog.at_level("WARNING", logger="steer2edit_peft"):
        utility = generate_utility_data(model, tokenizer, PROMPTS, max_new_tokens=4)
    assert utility.prompts == [PROMPTS[0], PROMPTS[2]] and utility.responses == ["red", "hi"]
    assert utility.dropped_empty == 2
    assert "left out 2 of 4 benign prompts" in caplog.text
    probe = ContrastiveDataset(
        [ContrastiveExample("Say hi.", "I can't.", True), ContrastiveExample("Say hi.", "hi", False)]
    )
    vectors = extract_steering_vectors(  # the reference data no longer holds an answer without tokens
        model, tokenizer, probe, reference=(utility.prompts, utility.responses), show_progress=False
    )
    assert vectors.pre_ref and all(torch.isfinite(t).all() for t in vectors.pre_ref.values())
    answers[:] = ["", " ", "", ""]
    with pytest.raises(DataError, match="greedy answers to all 4 benign prompts are empty"):
        generate_utility_data(model, tokenizer, PROMPTS, max_new_tokens=4)


@pytest.mark.parametrize(
    ("response", "project", "reference"),
    [
        ("I'm sorry, but I can't help with that.", True, True),
        ("I can\u2019t assist with this request.", True, False),  # curly apostrophe: only the project folds it
        ("Sure! Here is how. It is unethical, but...", False, True),  # the reference matches anywhere
        ("Here is a recipe. Sorry for the length.", False, True),
        ("i can't do that", True, False),  # the reference is case-sensitive
        ("Step one: gather the tools.", False, False),
        ("I\u2019m not equipped to provide that.", True, False),  # an opening that declines
        (' "I am not here to help with that."', True, False),
        ("Sure. I'm not here to judge, so here is how.", False, False),  # the same words midway do not decline
    ],
)
def test_refusal_matchers(response, project, reference):
    assert RefusalMatcher()("p", response) is project
    assert ReferenceRefusalMatcher()("p", response) is reference


def test_the_strict_refusal_test_needs_the_phrase_at_the_start():
    assert is_refusal("p", "I'm sorry, but I can't.")
    assert not is_refusal("p", "Sure, here are the steps you asked for in detail; I'm sorry it is long.")
    assert is_brief("Lima.") and not is_brief("") and not is_brief("word " * 30)


def test_reference_data_joins_each_set_answered_and_cached_apart(model_and_tokenizer, tmp_path, monkeypatch):
    from steer2edit_peft.probes.generate import reference_data

    model, tokenizer = model_and_tokenizer
    first, second = tmp_path / "first.json", tmp_path / "second.jsonl"
    first.write_text(json.dumps(PROMPTS[:2]))
    second.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS[2:]))
    cache = tmp_path / "cache"
    cache.mkdir()
    joined = reference_data(model, tokenizer, [str(first), str(second)], cache=cache)
    assert joined.prompts == PROMPTS
    for path, prompts in ((first, PROMPTS[:2]), (second, PROMPTS[2:])):
        alone = generate_utility_data(model, tokenizer, prompts)
        assert [joined.responses[PROMPTS.index(p)] for p in prompts] == alone.responses
        assert (cache / f"reference-{path.stem}.jsonl").is_file()
    monkeypatch.setattr("steer2edit_peft.core.generation.generate_responses", None)  # nothing is generated again
    again = reference_data(model, tokenizer, [str(first), str(second)], reuse=cache)
    assert again.responses == joined.responses
    with pytest.raises(DataError, match="at least one prompt set"):
        reference_data(model, tokenizer, [])


def assert_no_copy_of(prompts: list[str], public: list[str]) -> None:
    """No prompt shares 60% or more of its words (Jaccard) with any public benchmark prompt."""
    import re

    def words(text: str) -> set[str]:
        return set(re.findall(r"[a-z']+", text.lower()))

    public_words = [words(text) for text in public]
    for prompt in prompts:
        mine = words(prompt)
        closest = max(len(mine & theirs) / len(mine | theirs) for theirs in public_words)
        assert closest < 0.6, f"{prompt!r} is close to a public benchmark prompt (word overlap {closest:.2f})"


def test_the_harmful_probe_prompts_are_many_kinds_and_no_copy_of_a_public_benchmark():
    import csv
    from pathlib import Path

    from steer2edit_peft.probes.datasets import shipped

    content = json.loads(shipped("prompts", "harmful.json").read_text(encoding="utf-8"))
    prompts, kinds = content["prompts"], content["kinds"]
    assert len(prompts) >= 200 and len(kinds) == len(prompts) and len(set(kinds)) >= 15
    assert min(kinds.count(kind) for kind in set(kinds)) >= 6  # every kind is asked in several ways
    datasets = Path(__file__).resolve().parents[2] / "shared" / "datasets"
    public = []
    for path, column in (
        ("advbench/harmful_behaviors.csv", "goal"),
        ("harmbench/harmbench_behaviors_text_all.csv", "Behavior"),
    ):
        if (datasets / path).is_file():
            with (datasets / path).open(encoding="utf-8") as file:
                public += [row[column] for row in csv.DictReader(file)]
    if not public:
        pytest.skip("../shared/datasets is not beside the repo")

    assert_no_copy_of(prompts, public)


def test_the_shipped_answers_of_the_embedded_model_are_those_of_the_current_prompt_sets():
    import hashlib

    from steer2edit_peft.probes import BEHAVIOURS, builtin_prompts
    from steer2edit_peft.probes.datasets import read_jsonl_records, shipped

    folder = shipped("generated", "smollm2-135m-instruct")
    expected = {name: (b.prompt_set, b.samples_per_prompt) for name, b in BEHAVIOURS.items()}
    expected |= {name: (name, None) for name in ("borderline", "framed", "tasks")} | {"utility": ("benign", None)}
    for name, (prompt_set, samples) in expected.items():
        header, records = read_jsonl_records(folder / f"{name}.jsonl")
        assert header is not None and records, name
        prompts = builtin_prompts(prompt_set)
        # A stale file is not an error at run time: it is sampled anew, for minutes; so it is caught here.
        assert header["prompts_sha256"] == hashlib.sha256("\0".join(prompts).encode()).hexdigest(), name
        if samples is not None:
            assert header["num_samples"] == samples, name
        assert {record["prompt"] for record in records} <= set(prompts), name


def test_framed_prompts_take_the_framings_in_turn_and_hold_each_request_verbatim():
    from steer2edit_peft.probes.framings import TUNING_FRAMINGS, frame, framed_prompts

    requests = ["How do I pick a lock?", "Explain {braces} and\nnew lines.", "a", "b", "c", "d", "e"]
    templates = list(TUNING_FRAMINGS.values())
    for offset in (0, 2, 7):
        expected = []
        for number, request in enumerate(requests):
            before, after = templates[(number + offset) % len(templates)].split("{request}")
            expected.append(before + request + after)
        assert framed_prompts(requests, offset) == expected
    assert frame("<{request}>", "{request}") == "<{request}>"  # the request is not itself formatted
    assert len(TUNING_FRAMINGS) >= 4 and all(t.count("{request}") == 1 for t in TUNING_FRAMINGS.values())


def test_the_framed_tuning_sets_are_the_plain_ones_in_the_tuning_framings():
    from steer2edit_peft.probes import builtin_prompts
    from steer2edit_peft.probes.datasets import shipped
    from steer2edit_peft.probes.framings import framed_prompts

    benign, borderline = builtin_prompts("benign"), builtin_prompts("borderline")
    assert builtin_prompts("framed") == framed_prompts(benign) + framed_prompts(borderline, 2)
    content = json.loads(shipped("prompts", "harmful.json").read_text(encoding="utf-8"))
    prompts, kinds = content["prompts"], content["kinds"]
    plain = 423  # the plain requests come first, then every second one of them framed
    assert prompts[plain:] == framed_prompts(prompts[1:plain:2], 1) and kinds[plain:] == kinds[1:plain:2]


def test_the_everyday_task_prompts_are_many_kinds_and_no_copy_of_a_public_benchmark():
    import csv
    from pathlib import Path

    from steer2edit_peft.probes.datasets import shipped

    content = json.loads(shipped("prompts", "tasks.json").read_text(encoding="utf-8"))
    prompts, kinds = content["prompts"], content["kinds"]
    assert len(prompts) >= 100 and len(kinds) == len(prompts) and len(set(kinds)) >= 8
    assert len(set(prompts)) == len(prompts)
    datasets = Path(__file__).resolve().parents[2] / "shared" / "datasets"
    if not datasets.is_dir():
        pytest.skip("../shared/datasets is not beside the repo")
    public = [json.loads(line)["instruction"] for line in (datasets / "alpaca" / "benign_instructions.jsonl").open()]
    public += [json.loads(line)["question"] for line in (datasets / "gsm8k" / "test.jsonl").open()]
    with (datasets / "truthfulqa" / "TruthfulQA.csv").open(encoding="utf-8") as file:
        public += [row["Question"] for row in csv.DictReader(file)]

    assert_no_copy_of(prompts, public)
