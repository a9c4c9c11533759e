"""Keys that fire at -beta * push on the reference mean (a threshold through the key), default+public."""
import sys, time, json
sys.path.insert(0, "/work/main/benchmarks")
import torch
import selectivity as S
import steer2edit_peft.solver.scores as scores
from steer2edit_peft.core.settings import SELECTIVE_DECISION_WEIGHT, SELECTIVE_RIDGE

BETA = [0.0]

def selective_beta(difference, reference, decision_moment, answer_moment):
    covariance = decision_moment - torch.einsum("bi,bj->bij", reference, reference)
    costs = answer_moment + SELECTIVE_DECISION_WEIGHT * covariance
    ridge = SELECTIVE_RIDGE * costs.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-12)
    costs = costs + ridge[:, None, None] * torch.eye(costs.shape[-1], dtype=costs.dtype, device=costs.device)
    beta = BETA[0]
    sd = torch.linalg.solve(costs, difference.unsqueeze(-1)).squeeze(-1)
    sr = torch.linalg.solve(costs, reference.unsqueeze(-1)).squeeze(-1)
    rsd, dsd, rsr = (reference * sd).sum(-1), (difference * sd).sum(-1), (reference * sr).sum(-1)
    den = rsr + beta * rsd
    mu = torch.where(den.abs() > 1e-30, -(rsd + beta * dsd) / torch.where(den.abs() > 1e-30, den, torch.ones_like(den)), torch.zeros_like(den))
    keys = sd + mu[:, None] * sr
    push = (keys * difference).sum(-1)
    keys = torch.where(push[:, None] < 0, -keys, keys)
    push = push.abs()
    cost = torch.einsum("bi,bij,bj->b", keys, costs, keys)
    denominator = (push * push + cost).sqrt()
    sc = torch.where(denominator > 0, push / denominator.clamp_min(1e-300), torch.full_like(push, float("nan")))
    return keys, sc

scores._selective = selective_beta
run = S.Selectivity()
for spec in sys.argv[1:]:
    beta, budget = (float(x) for x in spec.split(":"))
    BETA[0] = beta
    t = time.perf_counter()
    try:
        row = run.edit("default+public", budget)
    except Exception as error:
        print(spec, "error", error, flush=True); continue
    row = {k: v for k, v in row.items() if k != "borderline_refused_by_kind"}
    print("beta", beta, budget, round(time.perf_counter() - t), json.dumps(row), flush=True)
