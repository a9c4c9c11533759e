"""Extraction and solving against slow per-sample / per-component references; steering; bad input."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st
from reference import assert_close_relative
from tiny_models import CharTokenizer, tiny_model

from steer2edit_peft import (
    ContrastiveDataset,
    DataError,
    Steer2EditConfig,
    Steer2EditError,
    SteeringVectors,
    edit_model,
    elastic_net_magnitude,
    extract_steering_vectors,
    steer,
)
from steer2edit_peft.core.architectures import decoder_model
from steer2edit_peft.core.settings import DEFAULTS
from steer2edit_peft.extraction.extract import edited_modules
from steer2edit_peft.solver.scores import solve_edit
from steer2edit_peft.tuner import Steer2EditLayer


def ragged_dataset(count: int = 5) -> ContrastiveDataset:
    records = []
    for i in range(count):
        records.append({"prompt": "q" * (2 + i), "positive": "yes" + "!" * (i % 3), "negative": "no thanks" + "." * i})
    return ContrastiveDataset.from_records(records, description="ragged test pairs")


def averaged_positions(prompt_length: int, response_length: int, positions: str) -> range:
    """The token positions an extraction averages over, spelled out."""
    if positions == "response":
        return range(prompt_length, prompt_length + response_length)
    if positions == "predicting":  # the positions whose next token is a response token
        return range(prompt_length - 1, prompt_length + response_length - 1)
    if positions == "after-decision":  # those, less the last prompt token
        return range(prompt_length, prompt_length + response_length - 1)
    return range(prompt_length - 1, prompt_length)  # decision: the last prompt token


def reference_means(
    model, tokenizer, dataset, config=None, positions="predicting", reference=None, input_positions=None
) -> dict[str, dict[str, torch.Tensor]]:
    """Batch size 1, no padding, float64 sums over the averaged positions, one example at a time; with reference
    data, the second moments of its inputs to attention modules too, one outer product at a time."""
    config = config if config is not None else Steer2EditConfig(rho_attn=1.0, rho_mlp=1.0)
    modules = edited_modules(model, config)
    sums: dict[str, dict[str, torch.Tensor]] = {}
    counts: dict[str, int] = {}
    examples = [(e.prompt, e.response, "pos" if e.positive else "neg") for e in dataset]
    examples += [(p, r, "ref") for p, r in zip(*reference)] if reference else []
    captured: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    handles = [
        module.register_forward_hook(lambda m, a, o, name=name: captured.__setitem__(name, (a[0][0], o[0])))
        for name, module in modules.items()
    ]
    with torch.no_grad():
        for prompt, response, suffix in examples:
            prompt_ids = tokenizer(prompt).input_ids
            response_ids = tokenizer(response, add_special_tokens=False).input_ids
            model(torch.tensor([prompt_ids + response_ids]))
            windows = {"post": positions, "pre": input_positions or positions}
            for statistic, window in windows.items():
                if statistic == "post" and suffix == "ref":
                    continue
                averaged = averaged_positions(len(prompt_ids), len(response_ids), window)
                key = f"{statistic}_{suffix}"
                counts[key] = counts.get(key, 0) + len(averaged)
                for name, (pre, post) in captured.items():
                    for t in averaged:
                        entry = sums.setdefault(name, {})
                        entry[key] = entry.get(key, 0) + (pre if statistic == "pre" else post)[t].double()
            if suffix != "ref":
                continue
            moment_windows = {"ref_decision_moment": windows["pre"], "ref_answer_moment": "after-decision"}
            for key, window in moment_windows.items():
                averaged = averaged_positions(len(prompt_ids), len(response_ids), window)
                counts[key] = counts.get(key, 0) + len(averaged)
                for name, (pre, _) in captured.items():
                    if not config.is_attention_module(name):
                        continue
                    size = pre.shape[-1]
                    total = sums[name].get(key, torch.zeros(size, size, dtype=torch.float64))
                    for t in averaged:
                        total += torch.outer(pre[t].double(), pre[t].double())
                    sums[name][key] = total
    for handle in handles:
        handle.remove()
    return {name: {k: v / counts[k] for k, v in entry.items()} for name, entry in sums.items()}


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen3"])
@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize(
    "positions, input_positions",
    [("predicting", None), ("response", None), ("decision", None), ("predicting", "decision")],
)
def test_extraction_matches_per_sample_reference(arch, padding_side, positions, input_positions):
    model, tokenizer, dataset = tiny_model(arch), CharTokenizer(), ragged_dataset()
    reference = (["benign one", "ok?"], ["fine", "sure thing"])
    vectors = extract_steering_vectors(
        model,
        tokenizer,
        dataset,
        batch_size=3,
        padding_side=padding_side,
        positions=positions,
        input_positions=input_positions,
        reference=reference,
        show_progress=False,
    )
    expected = reference_means(
        model, tokenizer, dataset, positions=positions, reference=reference, input_positions=input_positions
    )
    assert vectors.modules == list(expected)
    assert vectors.ref_answer_moment and set(vectors.ref_answer_moment) == set(vectors.ref_decision_moment)
    for name, entry in expected.items():
        assert ("ref_answer_moment" in entry) == (name in vectors.ref_answer_moment)
        for key, value in entry.items():
            assert_close_relative(getattr(vectors, key)[name], value)
        if positions == "decision":  # both classes share each prompt, so its last token: no direction at all
            assert vectors.direction(name).abs().max() < 1e-6
        else:
            assert_close_relative(vectors.direction(name), entry["post_pos"] - entry["post_neg"])


def test_extraction_counts_one_position_per_response_token():
    vectors = extract_steering_vectors(tiny_model("llama"), CharTokenizer(), ragged_dataset(3), show_progress=False)
    assert vectors.token_counts == {"positive": 3 + 4 + 5, "negative": 9 + 10 + 11}
    assert vectors.example_counts == {"positive": 3, "negative": 3}


def test_extraction_in_bfloat16_accumulates_in_float32():
    model = tiny_model("llama", dtype=torch.bfloat16)
    vectors = extract_steering_vectors(model, CharTokenizer(), ragged_dataset(), show_progress=False)
    assert all(v.dtype == torch.float32 for v in vectors.post_pos.values())


def test_extraction_on_a_model_with_an_adapter_records_what_it_computes():
    torch.manual_seed(0)
    from peft import get_peft_model

    peft_model = get_peft_model(tiny_model("llama"), Steer2EditConfig(init_weights=False))
    tokenizer, dataset = CharTokenizer(), ragged_dataset()
    edited = extract_steering_vectors(peft_model, tokenizer, dataset, show_progress=False)
    expected = reference_means(peft_model, tokenizer, dataset)
    with peft_model.disable_adapter():
        plain = extract_steering_vectors(peft_model, tokenizer, dataset, show_progress=False)
    name = "model.layers.1.mlp.down_proj"
    assert_close_relative(edited.post_pos[name], expected[name]["post_pos"])
    assert not torch.allclose(edited.post_pos[name], plain.post_pos[name])


# --- solver against per-component loops -----------------------------------------------------------


def reference_solve(weight, x, v, rho, alpha, head_dim=None):
    """Per head (or neuron), written out: g, lambda, k. Returns {component: (lambda, k)} for lambda != 0."""
    v_hat = v / v.norm()
    result = {}
    components = weight.shape[1] // (head_dim or 1)
    for j in range(components):
        if head_dim:
            block = weight[:, j * head_dim : (j + 1) * head_dim]
            contribution = block @ x[j * head_dim : (j + 1) * head_dim]
            key = block.T @ v_hat
        else:
            contribution = weight[:, j] * x[j]
            key = torch.sign(weight[:, j] @ v_hat).reshape(1)
        if contribution.norm() == 0 or key.norm() == 0:
            continue
        g = F.cosine_similarity(v_hat, contribution, dim=0).item()
        magnitude = (1 if g > 0 else -1) * max(abs(g) - rho * alpha, 0.0) / (rho * (1 - alpha))
        if magnitude != 0:
            result[j] = (magnitude, key / key.norm() if head_dim else key)
    return result


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen3"])
def test_solver_matches_per_component_reference(arch):
    model = tiny_model(arch)
    vectors = extract_steering_vectors(model, CharTokenizer(), ragged_dataset(), show_progress=False)
    config = Steer2EditConfig(rho_attn=0.3, rho_mlp=0.2, alpha=0.5)
    edits = solve_edit(model, vectors, config)
    modules = edited_modules(model, config)
    for edit in edits:
        weight = modules[edit.module].weight.detach().double()
        weight = weight.T if arch == "gpt2" else weight
        expected = reference_solve(
            weight,
            vectors.pre_mean(edit.module).double(),
            vectors.direction(edit.module).double(),
            config.rho_attn if edit.is_attention else config.rho_mlp,
            config.alpha,
            config.head_dim if edit.is_attention else None,
        )
        assert edit.indices.tolist() == sorted(expected)
        for position, index in enumerate(edit.indices.tolist()):
            magnitude, key = expected[index]
            assert edit.magnitudes[position].item() == pytest.approx(magnitude, rel=1e-5, abs=1e-6)
            torch.testing.assert_close(edit.input_directions[position].double(), key, rtol=1e-5, atol=1e-6)
    assert sum(e.indices.numel() for e in edits) > 0


def test_edit_model_writes_the_solved_factors_and_round_trips(tmp_path):
    model = tiny_model("llama")
    vectors = extract_steering_vectors(model, CharTokenizer(), ragged_dataset(), show_progress=False)
    peft_model = edit_model(model, vectors, Steer2EditConfig(rho_attn=0.3, rho_mlp=0.2), behaviour="yes-saying")
    report = peft_model.edit_reports["default"]
    assert report.edited_heads + report.edited_neurons > 0
    assert "total:" in report.to_table()
    peft_model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["behaviour"] == "yes-saying" and config["probe_data"] == "ragged test pairs"
    layers = [m for m in peft_model.modules() if isinstance(m, Steer2EditLayer)]
    for layer in layers:
        if layer.steer2edit_indices["default"].numel():
            assert torch.isclose(layer.steer2edit_u["default"].norm(), torch.tensor(1.0))


def test_edit_model_adds_a_second_edit_to_a_peft_model():
    model = tiny_model("llama")
    vectors = extract_steering_vectors(model, CharTokenizer(), ragged_dataset(), show_progress=False)
    peft_model = edit_model(model, vectors, Steer2EditConfig(rho_attn=0.3, rho_mlp=0.2))
    edit_model(peft_model, vectors, Steer2EditConfig(rho_attn=0.5, rho_mlp=0.3), adapter_name="milder")
    assert set(peft_model.peft_config) == {"default", "milder"}
    assert set(peft_model.edit_reports) == {"default", "milder"}


# --- properties -------------------------------------------------------------------------------------

scores = st.lists(st.floats(-1, 1, allow_nan=False), min_size=1, max_size=20)


@given(scores, st.floats(0.01, 5), st.floats(0, 0.99))
@example([5e-324, -1e-310], 5.0, 0.0)  # subnormal scores over a large rho: the quotient underflows to 0
def test_lambda_is_zero_exactly_when_score_is_within_threshold(values, rho, alpha):
    g = torch.tensor(values, dtype=torch.float64)
    magnitudes = elastic_net_magnitude(g, rho, alpha)
    assert torch.equal(magnitudes == 0, g.abs() <= rho * alpha)
    assert torch.all(torch.sign(magnitudes[magnitudes != 0]) == torch.sign(g[magnitudes != 0]))


@settings(max_examples=15, deadline=None)
@given(st.floats(0.01, 100))
def test_scaling_the_steering_vector_changes_nothing(scale):
    model = tiny_model("llama")
    vectors = extract_steering_vectors(model, CharTokenizer(), ragged_dataset(3), show_progress=False)
    scaled = SteeringVectors.from_directions(
        {m: scale * v for m, v in vectors.directions.items()}, {m: vectors.pre_mean(m) for m in vectors.modules}
    )
    config = Steer2EditConfig(rho_attn=0.3, rho_mlp=0.2)
    for a, b in zip(solve_edit(model, vectors, config), solve_edit(model, scaled, config)):
        assert torch.equal(a.indices, b.indices)
        torch.testing.assert_close(a.magnitudes, b.magnitudes, rtol=1e-4, atol=1e-6)


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 10_000))
def test_each_edit_moves_its_component_output_along_v(seed):
    # For every key direction: at the mean probe input, lambda and k . x share the sign of g, so every edited
    # component (lambda > 0 or lambda < 0) adds a positive multiple of v_hat. Checked by hand, one component
    # at a time, with the edit's dense weight change applied to the mean input. Selective keys are one key over
    # the module's edited heads together, so there the module's whole change is checked.
    from steer2edit_peft.core.settings import KEY_DIRECTIONS, SELECTIVE_THRESHOLD
    from steer2edit_peft.solver.scores import solve_module

    torch.manual_seed(seed)
    weight, x, v, reference = torch.randn(12, 16), torch.randn(16), torch.randn(12), torch.randn(16)
    spread = torch.randn(2, 16, 8)  # the reference's inputs (4 heads of 4), 8 samples each, at prompts and answers
    decision_moment, answer_moment = (spread @ spread.transpose(-1, -2) / 8).unbind(0)
    decision_moment = decision_moment + torch.outer(reference, reference)
    vectors = SteeringVectors(
        post_pos={"m": v},
        post_neg={"m": torch.zeros(12)},
        pre_pos={"m": x},
        pre_neg={"m": x},
        pre_ref={"m": reference},
        ref_decision_moment={"m": decision_moment},
        ref_answer_moment={"m": answer_moment},
    )
    v_hat = v / v.norm()
    cases = [(True, 4, key) for key in KEY_DIRECTIONS] + [(False, 1, "weight")]
    for is_attention, size, key_direction in cases:
        edit = solve_module(
            "m", weight, vectors, is_attention, rho=0.05, alpha=0.5, head_dim=size, key_direction=key_direction
        )
        assert edit.indices.numel() > 0
        deltas = []
        for position, index in enumerate(edit.indices.tolist()):
            delta = torch.zeros(12, 16)
            for offset in range(size):
                column = index * size + offset
                for row in range(12):
                    delta[row, column] = (
                        edit.magnitudes[position] * edit.input_directions[position][offset] * v_hat[row]
                    )
            deltas.append(delta)
        for delta in [sum(deltas)] if key_direction == "selective" else deltas:
            change = delta @ x
            assert change @ v_hat > 0, key_direction
            torch.testing.assert_close(change / change.norm(), v_hat)
            if key_direction == "contrast":
                # These keys stay silent on the mean reference input, whatever the head's sign.
                assert float((delta @ reference).norm()) < 1e-4 * float(reference.norm()) * float(delta.norm())
            if key_direction == "selective":
                # These push away from v on the mean reference input, by SELECTIVE_THRESHOLD times their push.
                away, push = delta @ reference, delta @ (x - reference)
                assert push @ v_hat > 0
                torch.testing.assert_close(away, -SELECTIVE_THRESHOLD * push, rtol=1e-3, atol=1e-4 * float(push.norm()))


def slow_selective_key(probe, reference, answers, weight, ridge, threshold):
    """One head, float64 numpy, from the samples themselves: S = A + weight C + ridge * mean eigenvalue * I; the key
    of least cost k^T S k with push k . d = 1 (d = mean probe - mean reference) and k . r = -threshold on the mean
    reference r, from the Lagrange conditions of that problem solved as one linear system."""
    import numpy as np

    probe, reference, answers = (np.asarray(t, dtype=np.float64) for t in (probe, reference, answers))
    r = reference.mean(0)
    d = probe.mean(0) - r
    cost = answers.T @ answers / len(answers) + weight * np.cov(reference.T, bias=True)
    cost = cost + ridge * np.trace(cost) / len(d) * np.eye(len(d))
    n = len(d)
    system = np.zeros((n + 2, n + 2))  # [2S, -d, -r; d^T, 0, 0; r^T, 0, 0] [k; a; b] = [0; 1; -threshold]
    system[:n, :n] = 2 * cost
    system[:n, n], system[:n, n + 1] = -d, -r
    system[n, :n], system[n + 1, :n] = d, r
    key = np.linalg.solve(system, np.concatenate([np.zeros(n), [1.0, -threshold]]))[:n]
    return key, (key @ d) / np.sqrt((key @ d) ** 2 + key @ cost @ key), cost, d


def random_samples(generator, width, mixing):
    """Probe inputs around 1, and reference inputs at prompts and along answers (twice as spread) through mixing."""
    probe = torch.randn(20, width, generator=generator) + 1.0
    reference = torch.randn(30, width, generator=generator) @ mixing
    answers = torch.randn(40, width, generator=generator) @ mixing * 2.0
    return probe, reference, answers


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 10_000))
def test_selective_keys_match_a_slow_computation_from_samples(seed):
    from steer2edit_peft.core.settings import SELECTIVE_DECISION_WEIGHT, SELECTIVE_RIDGE, SELECTIVE_THRESHOLD
    from steer2edit_peft.solver.scores import selective_keys

    generator = torch.Generator().manual_seed(seed)
    heads, head_dim = 3, 5
    probe, reference, answers = random_samples(generator, heads * head_dim, torch.eye(heads * head_dim) * 0.5)

    def moment(samples):  # [in, in], one outer product at a time
        total = torch.zeros(heads * head_dim, heads * head_dim)
        for row in samples:
            total += torch.outer(row, row)
        return total / len(samples)

    keys, scores = selective_keys(probe.mean(0), reference.mean(0), moment(reference), moment(answers), head_dim)
    for h in range(heads):
        block = slice(h * head_dim, (h + 1) * head_dim)
        key, score, cost, d = slow_selective_key(
            probe[:, block],
            reference[:, block],
            answers[:, block],
            SELECTIVE_DECISION_WEIGHT,
            SELECTIVE_RIDGE,
            SELECTIVE_THRESHOLD,
        )
        # The same direction (the keys are unnormalized: scale is the calibration's business).
        assert_close_relative(keys[h] / (keys[h].double() @ torch.tensor(d)), torch.tensor(key), 1e-4)
        assert abs(float(scores[h]) - score) < 1e-5
        # It beats any other key under the same constraint on (k . d)^2 / k^T S k.
        cost, d, r = torch.tensor(cost), torch.tensor(d), reference[:, block].double().mean(0)
        best = torch.tensor(key)
        others = torch.randn(200, head_dim, generator=generator, dtype=torch.float64)
        off = (others @ r + SELECTIVE_THRESHOLD * others @ d) / (r @ r + SELECTIVE_THRESHOLD * r @ d)
        others = others - torch.outer(off, r)  # moved along r onto the constraint
        ratios = (others @ d) ** 2 / torch.einsum("ki,ij,kj->k", others, cost, others)
        assert float((best @ d) ** 2 / (best @ cost @ best)) >= float(ratios.max()) * (1 - 1e-9)
    # Scaling every input scales the keys' inverse but leaves the scores as they are.
    _, scaled = selective_keys(
        3 * probe.mean(0), 3 * reference.mean(0), 9 * moment(reference), 9 * moment(answers), head_dim
    )
    torch.testing.assert_close(scaled, scores, rtol=1e-5, atol=1e-6)


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 10_000))
def test_the_joint_selective_key_matches_a_slow_computation_over_the_chosen_heads(seed):
    # The chosen heads' inputs side by side are one input: the slow per-head key of that input, split into head
    # blocks, is the joint key; lambda_j = c |K_j| with c keeping the module's push at the probe's mean input.
    import numpy as np

    from steer2edit_peft.core.settings import SELECTIVE_DECISION_WEIGHT, SELECTIVE_RIDGE, SELECTIVE_THRESHOLD
    from steer2edit_peft.solver.scores import joint_selective_key, selective_keys

    generator = torch.Generator().manual_seed(seed)
    heads, head_dim = 4, 3
    mixing = torch.randn(heads * head_dim, heads * head_dim, generator=generator) / 3  # heads that co-vary
    probe, reference, answers = random_samples(generator, heads * head_dim, mixing)
    probe, reference, answers = probe.double(), reference.double(), answers.double()  # float64 end to end
    moments = [(samples.T @ samples / len(samples)) for samples in (reference, answers)]
    keys, _ = selective_keys(probe.mean(0), reference.mean(0), *moments, head_dim)
    chosen = torch.tensor([0, 2, 3])
    magnitudes = torch.rand(3, generator=generator) + 0.5
    directions = keys[chosen] / keys[chosen].norm(dim=-1, keepdim=True)
    joint_directions, joint_magnitudes = joint_selective_key(
        probe.mean(0), reference.mean(0), *moments, head_dim, chosen, magnitudes, directions
    )
    columns = [h * head_dim + i for h in chosen.tolist() for i in range(head_dim)]
    key, *_ = slow_selective_key(
        probe[:, columns],
        reference[:, columns],
        answers[:, columns],
        SELECTIVE_DECISION_WEIGHT,
        SELECTIVE_RIDGE,
        SELECTIVE_THRESHOLD,
    )
    d = (probe.mean(0) - reference.mean(0))[columns].double().numpy()
    push = sum(
        float(m) * float(k.double().numpy() @ d[3 * j : 3 * j + 3])
        for j, (m, k) in enumerate(zip(magnitudes, directions))
    )
    expected = push / (key @ d) * key
    got = (joint_magnitudes[:, None] * joint_directions).reshape(-1).double().numpy()
    assert np.allclose(got, expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())
    assert np.allclose(np.linalg.norm(joint_directions.numpy(), axis=-1), 1.0, atol=1e-5)
    # One chosen head: the joint key is that head's own key, with its own lambda.
    one_direction, one_magnitude = joint_selective_key(
        probe.mean(0), reference.mean(0), *moments, head_dim, chosen[:1], magnitudes[:1], directions[:1]
    )
    torch.testing.assert_close(one_direction, directions[:1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(one_magnitude, magnitudes[:1], rtol=1e-4, atol=1e-6)


def test_selective_keys_need_the_reference_moments():
    vectors = SteeringVectors.from_directions({"m": torch.randn(8)}, {"m": torch.randn(8)})
    vectors.pre_ref["m"] = torch.randn(8)
    from steer2edit_peft.solver.scores import solve_module

    with pytest.raises(Steer2EditError, match="m: these steering vectors carry no second moments"):
        solve_module("m", torch.randn(8, 8), vectors, True, 0.1, 0.5, 4, key_direction="selective")


@pytest.mark.parametrize("family, rho", [("rho_attn", 0.0), ("rho_mlp", -1.0), ("rho_attn", None)])
def test_rho_switches_a_family_off_in_the_solver(family, rho):
    model = tiny_model("llama")
    vectors = extract_steering_vectors(model, CharTokenizer(), ragged_dataset(3), show_progress=False)
    edits = solve_edit(model, vectors, Steer2EditConfig(**{family: rho}))
    assert all(e.is_attention == (family == "rho_mlp") for e in edits)


def test_zero_steering_vector_is_skipped_not_nan():
    weight, x = torch.randn(8, 8), torch.randn(8)
    vectors = SteeringVectors.from_directions({"m": torch.zeros(8)}, {"m": x})
    from steer2edit_peft.solver.scores import solve_module

    edit = solve_module("m", weight, vectors, True, rho=0.01, alpha=0.0, head_dim=4)
    assert edit.indices.numel() == 0 and torch.isnan(edit.scores).all()


# --- steering baseline --------------------------------------------------------------------------------


def test_steer_adds_strength_times_v_and_removes_hooks_on_error():
    model = tiny_model("llama")
    vectors = extract_steering_vectors(model, CharTokenizer(), ragged_dataset(3), show_progress=False)
    name = "model.layers.0.mlp.down_proj"
    module = decoder_model(model).get_submodule(name)
    x = torch.randn(1, 3, module.in_features)
    with steer(model, vectors, 2.5, modules=[name]):
        torch.testing.assert_close(module(x), F.linear(x, module.weight) + 2.5 * vectors.direction(name))
    with pytest.raises(RuntimeError), steer(model, vectors, 1.0):
        raise RuntimeError("boom")
    assert not any(m._forward_hooks for m in model.modules())


# --- bad input -------------------------------------------------------------------------------------


def test_empty_dataset_is_refused():
    with pytest.raises(DataError, match="empty"):
        ContrastiveDataset.from_records([])


def test_one_class_missing_is_refused():
    with pytest.raises(DataError, match="no negative examples"):
        ContrastiveDataset.from_records([{"prompt": "a", "response": "b", "label": 1}])


def test_malformed_record_is_refused():
    with pytest.raises(DataError, match="record 0: needs either"):
        ContrastiveDataset.from_records([{"question": "a"}])


def test_response_that_tokenises_to_nothing_is_refused():
    class EmptyResponses(CharTokenizer):
        def __call__(self, text, add_special_tokens=True):
            encoding = super().__call__(text, add_special_tokens)
            encoding.input_ids = encoding.input_ids if add_special_tokens else []
            return encoding

    with pytest.raises(DataError, match="example 0: the response .* tokenises to nothing"):
        extract_steering_vectors(tiny_model("llama"), EmptyResponses(), ragged_dataset(), show_progress=False)


def test_prompt_longer_than_context_is_refused():
    model = tiny_model("llama", max_position_embeddings=8)
    with pytest.raises(DataError, match="longer than the model's context of 8"):
        extract_steering_vectors(model, CharTokenizer(), ragged_dataset(), show_progress=False)


def test_vectors_from_another_model_are_refused():
    vectors = extract_steering_vectors(tiny_model("llama"), CharTokenizer(), ragged_dataset(3), show_progress=False)
    with pytest.raises(Steer2EditError, match="extracted on a different model.*hidden_size"):
        edit_model(tiny_model("llama", hidden_size=48), vectors)


def test_alpha_outside_range_is_refused():
    with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\)"):
        elastic_net_magnitude(torch.zeros(3), 1.0, 1.0)


# --- data loading and vectors I/O -------------------------------------------------------------------


def test_dataset_from_jsonl_csv_lists_and_datasets(tmp_path):
    (tmp_path / "d.jsonl").write_text(
        '{"prompt": "p", "response": "r", "label": "positive"}\n{"prompt": "p", "response": "s", "label": 0}\n'
    )
    (tmp_path / "d.csv").write_text("prompt,positive,negative\np,good,bad\n")
    assert ContrastiveDataset.from_file(tmp_path / "d.jsonl").num_positive == 1
    assert len(ContrastiveDataset.from_file(tmp_path / "d.csv")) == 2
    assert ContrastiveDataset.from_lists(["a"], ["b"], ["c"], ["d"]).num_negative == 1
    datasets = pytest.importorskip("datasets")
    hf = datasets.Dataset.from_list([{"prompt": "p", "positive": "x", "negative": "y"}])
    assert len(ContrastiveDataset.from_hf(hf)) == 2


def test_chat_template_is_used_with_a_system_prompt():
    from steer2edit_peft.core.tokens import encode_prompt

    class Templated(CharTokenizer):
        chat_template = "x"

        def apply_chat_template(self, messages, add_generation_prompt, tokenize):
            text = "|".join(f"{m['role']}:{m['content']}" for m in messages) + (
                "|assistant:" if add_generation_prompt else ""
            )
            return self(text).input_ids

    ids = encode_prompt(Templated(), "hi", system_prompt="be kind")
    assert ids == Templated()("system:be kind|user:hi|assistant:").input_ids


def test_vectors_save_load_and_similarity(tmp_path):
    vectors = extract_steering_vectors(
        tiny_model("gpt2"), CharTokenizer(), ragged_dataset(), reference=(["ok"], ["fine"]), show_progress=False
    )
    loaded = SteeringVectors.load(vectors.save(tmp_path))
    assert loaded.modules == vectors.modules and loaded.token_counts == vectors.token_counts
    for name in vectors.modules:
        assert torch.equal(loaded.direction(name), vectors.direction(name))
    assert vectors.pre_ref and all(torch.equal(loaded.pre_ref[m], t) for m, t in vectors.pre_ref.items())
    for statistic in ("ref_decision_moment", "ref_answer_moment"):
        saved = getattr(vectors, statistic)
        assert saved and all(torch.equal(getattr(loaded, statistic)[m], t) for m, t in saved.items())
    assert all(abs(s - 1) < 1e-6 for s in loaded.cosine_similarity(vectors).values())


def test_vectors_with_per_head_moments_are_refused_naming_the_file(tmp_path):
    # An earlier version stored each head's block [heads, head_dim, head_dim]; a joint key needs the whole matrix.
    from safetensors.torch import load_file, save_file

    vectors = extract_steering_vectors(
        tiny_model("llama"), CharTokenizer(), ragged_dataset(), reference=(["ok"], ["fine"]), show_progress=False
    )
    folder = vectors.save(tmp_path / "vectors")
    tensors = load_file(folder / "steering_vectors.safetensors")
    name = next(key for key in tensors if key.endswith("::ref_answer_moment"))
    size = tensors[name].shape[0]
    tensors[name] = torch.zeros(size // 4, 4, 4)
    save_file(tensors, folder / "steering_vectors.safetensors")
    with pytest.raises(Steer2EditError, match=r"steering_vectors.safetensors: .*per-head moments .* extract"):
        SteeringVectors.load(folder)


def test_vectors_with_nan_are_refused():
    with pytest.raises(Steer2EditError, match="NaN"):
        SteeringVectors.from_directions({"m": torch.tensor([1.0, float("nan")])})


# --- adapters and device maps ----------------------------------------------------------------------


def lora_model(arch: str = "llama"):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    config = LoraConfig(target_modules=["down_proj", "o_proj"], r=4, init_lora_weights=False)
    return get_peft_model(tiny_model(arch), config)


def test_extraction_on_a_lora_model_records_the_lora_outputs():
    model, tokenizer, dataset = lora_model(), CharTokenizer(), ragged_dataset()
    vectors = extract_steering_vectors(model, tokenizer, dataset, show_progress=False)
    expected = reference_means(model, tokenizer, dataset)
    for name, entry in expected.items():
        assert_close_relative(vectors.post_pos[name], entry["post_pos"])
    with model.disable_adapter():
        plain = extract_steering_vectors(model, tokenizer, dataset, show_progress=False)
    assert not torch.allclose(vectors.post_neg[name], plain.post_neg[name])


def test_solver_uses_the_effective_weights_of_a_lora_model():
    model = lora_model()
    vectors = extract_steering_vectors(model, CharTokenizer(), ragged_dataset(), show_progress=False)
    config = Steer2EditConfig(rho_attn=0.3, rho_mlp=0.2)
    on_lora = solve_edit(model, vectors, config)
    merged = model.merge_and_unload()
    on_merged = solve_edit(merged, vectors, Steer2EditConfig(rho_attn=0.3, rho_mlp=0.2))
    for a, b in zip(on_lora, on_merged):
        assert torch.equal(a.indices, b.indices)
        torch.testing.assert_close(a.magnitudes, b.magnitudes, rtol=1e-5, atol=1e-6)


def test_extraction_on_a_model_dispatched_over_devices(tmp_path):
    from tiny_models import offloaded_llama

    offloaded = offloaded_llama(tmp_path)
    tokenizer, dataset = CharTokenizer(), ragged_dataset()
    vectors = extract_steering_vectors(offloaded, tokenizer, dataset, show_progress=False)
    expected = reference_means(tiny_model("llama"), tokenizer, dataset, input_positions=DEFAULTS.input_positions)
    for name, entry in expected.items():
        assert_close_relative(vectors.pre_neg[name], entry["pre_neg"])
        assert_close_relative(vectors.post_pos[name], entry["post_pos"])


def test_a_reference_batch_with_one_token_answers_adds_nothing_to_the_answer_moments():
    # A one-token answer has no answer position past its first token: its batch adds nothing there.
    model = tiny_model("llama")
    together = extract_steering_vectors(
        model, CharTokenizer(), ragged_dataset(), reference=(["ok", "hi"], ["fine", "y"]), batch_size=1,
        show_progress=False,
    )  # fmt: skip
    alone = extract_steering_vectors(
        model, CharTokenizer(), ragged_dataset(), reference=(["ok"], ["fine"]), batch_size=1, show_progress=False
    )
    assert alone.ref_answer_moment.keys() == together.ref_answer_moment.keys()
    for module, moment in alone.ref_answer_moment.items():
        torch.testing.assert_close(together.ref_answer_moment[module], moment)
