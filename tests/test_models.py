"""Which dtype models load in: "auto" is bfloat16 only where the hardware computes in it natively."""

from __future__ import annotations

import pytest
import torch

from steer2edit_peft.cli.main import build_parser
from steer2edit_peft.core.errors import Steer2EditError
from steer2edit_peft.core.models import dtype_name, fast_dtype, resolve_dtype


@pytest.mark.parametrize(
    "avx512_bf16, amx, expected",
    [(False, False, torch.float32), (True, False, torch.bfloat16), (False, True, torch.bfloat16)],
)
def test_auto_is_bfloat16_only_on_a_cpu_that_computes_in_it(monkeypatch, avx512_bf16, amx, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert fast_dtype() == resolve_dtype("auto") == expected
    assert dtype_name("auto") == str(expected).split(".")[1]


@pytest.mark.parametrize("bf16, expected", [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_on_a_gpu_follows_its_bfloat16_support(monkeypatch, bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16)
    assert fast_dtype() == expected


def test_named_dtypes_resolve_to_themselves_and_a_wrong_name_is_one_clear_error():
    assert [resolve_dtype(name) for name in ("bfloat16", "float32", "float16")] == [
        torch.bfloat16,
        torch.float32,
        torch.float16,
    ]
    assert resolve_dtype(torch.float64) == torch.float64
    with pytest.raises(Steer2EditError, match="unknown dtype 'float8'"):
        resolve_dtype("float8")


def test_the_cli_loads_and_merges_in_auto_unless_told():
    parser = build_parser()
    assert parser.parse_args(["edit", "--probe", "refusal", "--output", "out"]).dtype == "auto"
    assert parser.parse_args(["edit", "--probe", "refusal", "--output", "o", "--dtype", "bfloat16"]).dtype == "bfloat16"
    assert parser.parse_args(["merge", "adapter", "--output", "out"]).dtype == "auto"
