"""The key-selectivity diagnostic, on a model whose two input classes are separable by construction."""

from __future__ import annotations

import random
from itertools import product

import pytest
import torch
from peft import get_peft_model
from tiny_models import CharTokenizer
from torch import nn

from steer2edit_peft import Steer2EditConfig
from steer2edit_peft.evaluation.selectivity import auroc, key_selectivity


def slow_auroc(positive: list[float], negative: list[float]) -> float:
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in product(positive, negative))
    return wins / (len(positive) * len(negative))


def test_auroc_matches_the_pairwise_count():
    generator = torch.Generator().manual_seed(0)
    positive, negative = torch.randn(17, generator=generator) + 0.5, torch.randn(23, generator=generator)
    negative[:4] = positive[:4]  # ties count half
    assert auroc(positive, negative) == pytest.approx(slow_auroc(positive.tolist(), negative.tolist()))
    assert auroc(torch.tensor([2.0, 3.0]), torch.tensor([0.0, 1.0])) == 1.0
    assert auroc(torch.tensor([1.0]), torch.tensor([1.0])) == 0.5


class RunningMeanModel(nn.Module):
    """o_proj reads the running mean of the token embeddings: its input at the last token is known exactly."""

    def __init__(self, embeddings: torch.Tensor) -> None:
        super().__init__()
        self.embed = nn.Embedding.from_pretrained(embeddings)
        self.o_proj = nn.Linear(embeddings.shape[1], 3, bias=False)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed

    def forward(self, input_ids, attention_mask, position_ids=None):
        mask = attention_mask[..., None].float()
        running = (self.embed(input_ids) * mask).cumsum(1) / mask.cumsum(1).clamp_min(1)
        return self.o_proj(running)


def test_key_selectivity_separates_what_the_key_reads_and_nothing_else():
    tokenizer = CharTokenizer()
    embeddings = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))  # two heads of two dimensions
    act, leave = tokenizer("a").input_ids[-1], tokenizer("b").input_ids[-1]
    embeddings[act, 0], embeddings[leave, 0] = 6.0, -6.0  # head 0's first dimension tells the classes apart
    model = RunningMeanModel(embeddings)
    config = Steer2EditConfig(
        target_modules=["o_proj"], attention_modules=["o_proj"], head_dim=2, edited_components={"o_proj": [[0, 1]]}
    )
    peft_model = get_peft_model(model, config)
    layer = peft_model.base_model.model.o_proj
    with torch.no_grad():
        layer.steer2edit_u["default"].copy_(torch.tensor([[1.0, 0.0, 0.0]]))
        layer.steer2edit_k["default"].copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))  # head 1 reads noise
        layer.steer2edit_lambda["default"].copy_(torch.tensor([0.5, -2.0]))
    rng = random.Random(0)
    filler = "cdefghijkl"

    def prompts(marker: str) -> list[str]:
        return ["".join(rng.choice(filler) for _ in range(rng.randint(3, 8))) + marker * 3 for _ in range(20)]

    harmful, safe = prompts("a"), prompts("b")
    result = key_selectivity(peft_model, tokenizer, harmful, safe, batch_size=7)
    by_head = {h.component: h for h in result.heads}
    assert by_head[0].auroc == 1.0 and by_head[0].mean_firing_positive > 0 > by_head[0].mean_firing_negative

    def firing(prompt: str, head: int, key: list[float], magnitude: float) -> float:  # by hand, one prompt at a time
        ids = tokenizer(prompt).input_ids
        mean = embeddings[ids].mean(0)[2 * head : 2 * head + 2]
        return magnitude * float(mean @ torch.tensor(key))

    for head, key, magnitude in ((0, [1.0, 0.0], 0.5), (1, [0.0, 1.0], -2.0)):
        expected = slow_auroc(
            [firing(p, head, key, magnitude) for p in harmful], [firing(p, head, key, magnitude) for p in safe]
        )
        assert by_head[head].auroc == pytest.approx(expected)
    assert 0.2 < by_head[1].auroc < 0.8  # a key on noise cannot tell the classes apart
    # The module adds u times both heads' firing together.
    both = [(0, [1.0, 0.0], 0.5), (1, [0.0, 1.0], -2.0)]
    expected = slow_auroc(
        [sum(firing(p, *head) for head in both) for p in harmful],
        [sum(firing(p, *head) for head in both) for p in safe],
    )
    [module] = result.modules
    assert module.module.endswith("o_proj") and module.components == 2
    assert module.auroc == pytest.approx(expected)
    assert "mean AUROC" in result.to_table() and "o_proj" in result.to_table()
