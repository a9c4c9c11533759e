"""The peers a refusal edit is compared with, as context managers on a plain model (weights restored on exit).

rank_one_injection: every matrix that writes to the residual stream (each layer's attention and MLP output
projection) gets ``W <- W + a v_hat v_hat^T W``, with v_hat that module's own steering direction: its output's
component along v_hat is amplified by (1 + a) on every input, the weight-edit analogue of steering every layer
(rank-one safety injection, arXiv 2508.20766, reads one residual direction; here each module's own).
"""

from __future__ import annotations

from typing import Any

import torch
from common import written

from steer2edit_peft.extraction.extract import edited_modules
from steer2edit_peft.solver.scores import effective_weight


def rank_one_injection(model: Any, vectors: Any, amount: float) -> Any:
    modules = edited_modules(model)
    values = []
    with torch.no_grad():
        for name, module in modules.items():
            if name not in vectors.post_pos:
                continue
            direction = vectors.direction(name)
            if not direction.norm() > 0:
                continue
            v_hat = (direction / direction.norm()).to(module.weight.device)
            weight = effective_weight(module)  # [out, in], float32
            delta = amount * torch.outer(v_hat, v_hat @ weight)
            layout = delta if module.weight.shape == delta.shape else delta.T  # Conv1D stores [in, out]
            values.append((module.weight, module.weight + layout.to(module.weight.dtype)))
    return written(values)
