"""The formulas: component scores g, elastic-net magnitudes lambda, keys k, and the rank-1 factors of each module."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from transformers.pytorch_utils import Conv1D

from ..core.architectures import decoder_model, model_signature
from ..core.errors import Steer2EditError
from ..core.experts import down_columns, is_fused_experts
from ..core.settings import SELECTIVE_DECISION_WEIGHT, SELECTIVE_RIDGE, SELECTIVE_THRESHOLD
from ..extraction.extract import edited_modules
from ..extraction.vectors import SteeringVectors
from ..tuner import Steer2EditConfig


@dataclass
class ModuleEdit:
    """The solved edit of one module: ``delta W = sum_c lambda_c u k_c^T`` on component c's columns."""

    module: str
    is_attention: bool
    direction: torch.Tensor  # [out] unit steering direction u = v_hat
    scores: torch.Tensor  # [components] alignment g (selective keys: their selectivity score); NaN where undefined
    indices: torch.Tensor  # [edited] component indices
    input_directions: torch.Tensor  # [edited, component_size] k_hat (heads) or sign(w.v_hat) (neurons)
    magnitudes: torch.Tensor  # [edited] lambda


def elastic_net_magnitude(scores: torch.Tensor, rho: float, alpha: float) -> torch.Tensor:
    """lambda = sign(g) * max(|g| - rho*alpha, 0) / (rho*(1 - alpha)); undefined (NaN) scores give 0."""
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"alpha must lie in [0, 1), got {alpha}")
    if rho <= 0:
        raise ValueError(f"rho must be positive, got {rho}")
    threshold = rho * alpha
    shrunk = (scores.abs() - threshold) / (rho * (1.0 - alpha))
    # Survival is decided by the comparison, not by the quotient: a subnormal score over a large rho would
    # underflow to 0 and silently drop a component that passes the threshold.
    kept = torch.where(shrunk > 0, shrunk, torch.finfo(scores.dtype).tiny)
    return torch.where(scores.abs() > threshold, torch.sign(scores) * kept, torch.zeros_like(scores))


def _cosine_to(direction: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """cos(direction, each row of vectors); NaN where a row (or the direction) is zero."""
    norms = vectors.norm(dim=-1) * direction.norm()
    scores = (vectors @ direction) / norms
    return torch.where(norms > 0, scores, torch.full_like(scores, float("nan")))


def head_scores(
    weight: torch.Tensor, mean_input: torch.Tensor, direction: torch.Tensor, head_dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per head j: g_j = cos(v_hat, W_j x_j) and k_j = W_j^T v_hat. weight is [out, heads*head_dim]."""
    out_features, in_features = weight.shape
    heads = in_features // head_dim
    blocks = weight.view(out_features, heads, head_dim)  # [out, heads, head_dim]
    head_outputs = torch.einsum("ohd,hd->ho", blocks, mean_input.view(heads, head_dim))  # [heads, out]
    keys = torch.einsum("ohd,o->hd", blocks, direction)  # [heads, head_dim]
    return _cosine_to(direction, head_outputs), keys


def contrast_keys(probe_input: torch.Tensor, reference_input: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Per head j: k_j = d_j - (d_j . r_j / |r_j|^2) r_j with d_j = x_j - r_j, unnormalized [heads, head_dim].

    x_j is the head's mean input on the probe, r_j on the reference data: k_j . r_j = 0, so the edit adds
    nothing on the average reference input and grows as the input moves towards the probe's.
    """
    probe, reference = probe_input.view(-1, head_dim), reference_input.view(-1, head_dim)
    return _orthogonal_to(reference, probe - reference)


def _orthogonal_to(reference: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """Each row of ``vectors`` less its part along the same row of ``reference`` (unchanged where that is zero)."""
    norms = (reference * reference).sum(-1, keepdim=True)
    along = torch.where(norms > 0, (vectors * reference).sum(-1, keepdim=True) / norms.clamp_min(1e-30), 0.0)
    return vectors - along * reference


def _head_blocks(moment: torch.Tensor, head_dim: int) -> torch.Tensor:
    """The diagonal blocks [heads, head_dim, head_dim] of a module's input moment [in, in]: each head's own."""
    heads = moment.shape[0] // head_dim
    return moment.view(heads, head_dim, heads, head_dim).diagonal(dim1=0, dim2=2).permute(2, 0, 1)


def _selective(
    difference: torch.Tensor,
    reference: torch.Tensor,
    decision_moment: torch.Tensor,
    answer_moment: torch.Tensor,
    threshold: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row b: k_b = S_b^-1 (d_b + mu_b r_b), signed so k_b . d_b >= 0, and its score (float64).

    S_b = A_b + w (D_b - r_b r_b^T) + ridge, the ridge SELECTIVE_RIDGE times its mean eigenvalue; shapes [b, n] and
    [b, n, n]. mu_b sets k_b . r_b = -t (k_b . d_b), t = ``threshold`` (None: SELECTIVE_THRESHOLD, read at each
    call); so k_b is, up to scale, the key of least cost k^T S_b k for its push k . d_b under that constraint. The
    score (k . d) / sqrt((k . d)^2 + k^T S k) lies in [0, 1); NaN where the inputs are all zero.
    """
    covariance = decision_moment - torch.einsum("bi,bj->bij", reference, reference)
    costs = answer_moment + SELECTIVE_DECISION_WEIGHT * covariance
    ridge = SELECTIVE_RIDGE * costs.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-12)
    costs = costs + ridge[:, None, None] * torch.eye(costs.shape[-1], dtype=costs.dtype, device=costs.device)
    solved = torch.linalg.solve(costs, torch.stack([difference, reference], -1))
    along_difference, along_reference = solved[..., 0], solved[..., 1]
    rd = (reference * along_difference).sum(-1)  # r^T S^-1 d = d^T S^-1 r
    dd = (difference * along_difference).sum(-1)
    rr = (reference * along_reference).sum(-1)
    # (k . r) + t (k . d) = 0 for k = S^-1 (d + mu r); no constraint where r is zero (rr = 0)
    t = SELECTIVE_THRESHOLD if threshold is None else threshold
    denominator = rr + t * rd
    defined = denominator != 0
    mu = torch.where(defined, -(rd + t * dd) / denominator.where(defined, 1.0), 0.0)
    keys = along_difference + mu[:, None] * along_reference
    push = (keys * difference).sum(-1)
    keys = torch.where(push[:, None] < 0, -keys, keys)
    push = push.abs()
    cost = torch.einsum("bi,bij,bj->b", keys, costs, keys)
    denominator = (push * push + cost).sqrt()
    scores = torch.where(denominator > 0, push / denominator.clamp_min(1e-300), torch.full_like(push, float("nan")))
    return keys, scores


def selective_keys(
    probe_input: torch.Tensor,
    reference_input: torch.Tensor,
    decision_moment: torch.Tensor,
    answer_moment: torch.Tensor,
    head_dim: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per head j: the key k_j that best tells probe prompts from reference ones for what it costs, and its score.

    With d_j = x_j - r_j (probe minus reference mean input at the decision token), C_j the reference's covariance
    there and A_j the reference's second moment along its answers (the head's blocks of the module's [in, in]
    moments): S_j = A_j + w C_j, made positive definite by a ridge of SELECTIVE_RIDGE times its mean eigenvalue;
    k_j maximises (k . d)^2 / k^T S k, the push on probe prompts per unit of firing on reference prompts
    (w = SELECTIVE_DECISION_WEIGHT, over-refusal) and along reference answers (KL), among keys that fire at
    -SELECTIVE_THRESHOLD times their push on the mean reference input r_j: k_j = S_j^-1 (d_j + mu_j r_j), signed so
    that k_j . d_j >= 0. The score (k . d) / sqrt((k . d)^2 + k^T S k) lies in [0, 1) and grows with
    that ratio. Returns keys [heads, head_dim] (unnormalized) and scores [heads]; a head whose inputs are all zero
    gets a zero key and a NaN score.
    """
    probe, reference = probe_input.view(-1, head_dim).double(), reference_input.view(-1, head_dim).double()
    keys, scores = _selective(
        probe - reference,
        reference,
        _head_blocks(decision_moment.double(), head_dim),
        _head_blocks(answer_moment.double(), head_dim),
    )
    return keys.to(probe_input.dtype), scores.to(probe_input.dtype)


def joint_selective_key(
    probe_input: torch.Tensor,
    reference_input: torch.Tensor,
    decision_moment: torch.Tensor,
    answer_moment: torch.Tensor,
    head_dim: int,
    heads: torch.Tensor,
    magnitudes: torch.Tensor,
    input_directions: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One selective key over the chosen heads' inputs together, split back into per-head k_hat and lambda.

    A module's edit is rank one, ``y += u (x . k)`` with k the chosen heads' lambda_j k_hat_j side by side, so the
    heads need not be solved one at a time: S^-1 d over their joint input also weighs what one head's input says
    about another's (the blocks between heads), and fires less on the reference for the same push. The module's
    push at the probe's mean input, sum_j lambda_j (k_hat_j . d_j), is kept, so calibration starts where it did.
    Returns input directions [heads, head_dim] and magnitudes [heads]; the per-head ones if the joint key has no push.
    """
    columns = (heads[:, None] * head_dim + torch.arange(head_dim, device=heads.device)).reshape(-1)
    probe, reference = probe_input.double()[columns], reference_input.double()[columns]
    difference = probe - reference
    key, _ = _selective(
        difference[None],
        reference[None],
        decision_moment.double()[columns][:, columns][None],
        answer_moment.double()[columns][:, columns][None],
    )
    key = key[0]
    push = (magnitudes.double()[:, None] * input_directions.double() * difference.view(-1, head_dim)).sum()
    joint_push = key @ difference
    if not joint_push > 0:
        return input_directions, magnitudes
    blocks = key.view(-1, head_dim)
    norms = blocks.norm(dim=-1)
    directions = torch.where(norms[:, None] > 0, blocks / norms.clamp_min(1e-300)[:, None], torch.zeros_like(blocks))
    return directions.to(input_directions.dtype), (push / joint_push * norms).to(magnitudes.dtype)


def neuron_scores(
    weight: torch.Tensor, mean_input: torch.Tensor, direction: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per neuron n: g_n = cos(v_hat, w_n x_n) = sign(x_n) cos(v_hat, w_n), and w_n . v_hat. weight is [out, in]."""
    dots = weight.T @ direction  # [in]
    norms = weight.norm(dim=0) * direction.norm() * mean_input.abs()
    scores = torch.where(norms > 0, mean_input * dots / norms, torch.full_like(dots, float("nan")))
    return scores, dots


def effective_weight(module: Any) -> torch.Tensor:
    """The weight the module really applies, [out, in], float32: base plus unmerged active adapters."""
    from accelerate.utils import align_module_device

    base: Any = module.get_base_layer() if isinstance(module, BaseTunerLayer) else module
    if is_fused_experts(base):
        weight = down_columns(base).float()  # [hidden, experts * neurons]
    else:
        with align_module_device(base, torch.device("cpu") if base.weight.device.type == "meta" else None):
            weight = base.weight.detach().to(torch.float32, copy=True)  # offloaded weights are brought in, then copied
    if isinstance(module, BaseTunerLayer):
        for adapter_name in module.active_adapters:
            if adapter_name in module.merged_adapters or not hasattr(module, "get_delta_weight"):
                continue
            if adapter_name in module._get_available_adapters():
                delta = module.get_delta_weight(adapter_name).detach().float().to(weight.device)
                if delta.shape != weight.shape:
                    raise Steer2EditError(
                        f"{type(module).__name__} on a fused-experts module: solve the edit before adding that adapter"
                    )
                weight = weight + delta
    return weight.T if isinstance(base, Conv1D) else weight


def solve_module(
    name: str,
    weight: torch.Tensor,
    vectors: SteeringVectors,
    is_attention: bool,
    rho: float,
    alpha: float,
    head_dim: int,
    key_direction: str = "weight",
) -> ModuleEdit:
    """Scores, elastic-net magnitudes and rank-1 factors for every head (or neuron) of one module."""
    device = weight.device
    steering = vectors.direction(name).to(device)
    mean_input = vectors.pre_mean(name).to(device)
    if steering.shape[0] != weight.shape[0] or mean_input.shape[0] != weight.shape[1]:
        raise Steer2EditError(
            f"{name}: steering vectors of size {steering.shape[0]} / inputs of size {mean_input.shape[0]} do not fit "
            f"a weight of shape {tuple(weight.shape)}; were they extracted on another model?"
        )
    norm = steering.norm()
    if not norm > 0:  # the probe's two sides wrote the same mean output here: no direction to edit towards
        return _no_edit(name, is_attention, weight.shape[1] // head_dim, head_dim, steering)
    direction = steering / norm
    if is_attention:
        if key_direction == "selective":  # heads are scored by their key, not by g
            decision_moment, answer_moment = vectors.reference_moments(name)
            reference = vectors.reference_mean(name).to(device)
            inputs = (mean_input, reference, decision_moment.to(device), answer_moment.to(device))
            keys, scores = selective_keys(*inputs, head_dim)
        else:
            scores, keys = head_scores(weight, mean_input, direction, head_dim)
        if key_direction == "contrast":
            # k . x >= 0 at the mean probe input by construction; a head with g < 0 (lambda < 0) takes -k, so
            # lambda (k . x) >= 0 there and every edited head pushes towards v, as the paper's keys do.
            keys = contrast_keys(mean_input, vectors.reference_mean(name).to(device), head_dim)
            keys = keys * torch.where(scores < 0, -1.0, 1.0).to(keys.dtype)[:, None]
        key_norms = keys.norm(dim=-1, keepdim=True)
        input_directions = torch.where(key_norms > 0, keys / key_norms.clamp_min(1e-30), torch.zeros_like(keys))
        defined = key_norms.squeeze(-1) > 0
    else:
        scores, dots = neuron_scores(weight, mean_input, direction)
        input_directions = torch.sign(dots)[:, None]
        defined = dots != 0
    magnitudes = elastic_net_magnitude(scores, rho, alpha)
    selected = torch.nonzero((magnitudes != 0) & defined).squeeze(-1)
    chosen_directions, chosen_magnitudes = input_directions[selected], magnitudes[selected]
    if is_attention and key_direction == "selective" and selected.numel() > 1:
        chosen_directions, chosen_magnitudes = joint_selective_key(
            *inputs, head_dim, selected, chosen_magnitudes, chosen_directions
        )
    return ModuleEdit(
        module=name,
        is_attention=is_attention,
        direction=direction.cpu(),
        scores=scores.cpu(),
        indices=selected.cpu(),
        input_directions=chosen_directions.cpu(),
        magnitudes=chosen_magnitudes.cpu(),
    )


def _no_edit(name: str, is_attention: bool, count: int, size: int, steering: torch.Tensor) -> ModuleEdit:
    """A module that keeps no component; its scores g are undefined (NaN)."""
    return ModuleEdit(
        module=name,
        is_attention=is_attention,
        direction=steering.cpu(),
        scores=torch.full((count,), float("nan")),
        indices=torch.zeros(0, dtype=torch.long),
        input_directions=torch.zeros(0, size),
        magnitudes=torch.zeros(0),
    )


def check_vectors_fit(model: nn.Module, vectors: SteeringVectors) -> None:
    """Refuse vectors extracted on a model of another shape."""
    config = getattr(decoder_model(model), "config", None)
    if config is None or not vectors.model_signature:
        return
    signature = model_signature(config)
    mismatched = {
        k: (v, signature[k]) for k, v in vectors.model_signature.items() if k in signature and signature[k] != v
    }
    if mismatched:
        details = ", ".join(f"{k}: vectors {a!r} vs model {b!r}" for k, (a, b) in mismatched.items())
        raise Steer2EditError(f"these steering vectors were extracted on a different model ({details})")


@torch.no_grad()
def solve_edit(model: nn.Module, vectors: SteeringVectors, config: Steer2EditConfig) -> list[ModuleEdit]:
    """Solve every targeted module of ``model`` (config resolved in place); no module is changed."""
    check_vectors_fit(model, vectors)
    modules = edited_modules(model, config)
    missing = [name for name in modules if name not in vectors.post_pos]
    if missing:
        raise Steer2EditError(f"the steering vectors lack {len(missing)} edited module(s), e.g. {missing[0]}")
    if modules and not any(bool(vectors.direction(name).any()) for name in modules):
        raise Steer2EditError(
            f"the steering direction is zero at all {len(modules)} edited modules: the probe's wanted and unwanted "
            "responses gave the same mean outputs (the same responses on both sides?), so there is nothing to edit "
            "towards"
        )
    edits = []
    for name, module in modules.items():
        is_attention = config.is_attention_module(name)
        rho = config.rho_attn if is_attention else config.rho_mlp
        assert rho is not None
        edits.append(
            solve_module(
                name,
                effective_weight(module),
                vectors,
                is_attention,
                rho,
                config.alpha,
                config.component_size(name),
                config.key_direction,
            )
        )
    return edits
