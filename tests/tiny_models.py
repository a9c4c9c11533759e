"""Tiny random decoder models, one per supported architecture, built from configs (no downloads)."""

from __future__ import annotations

import torch
import transformers
from transformers import AutoModelForCausalLM

VOCAB = 97

_DECODER = dict(hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4)

# name -> (config class, kwargs). Several use head_dim != hidden/heads and grouped-query attention.
TINY_CONFIGS: dict[str, tuple[str, dict]] = {
    "llama": ("LlamaConfig", {**_DECODER, "num_key_value_heads": 2}),
    "mistral": ("MistralConfig", {**_DECODER, "num_key_value_heads": 2, "head_dim": 12}),
    "qwen2": ("Qwen2Config", {**_DECODER, "num_key_value_heads": 1}),
    "qwen3": ("Qwen3Config", {**_DECODER, "num_key_value_heads": 2, "head_dim": 16}),
    "gemma2": ("Gemma2Config", {**_DECODER, "num_key_value_heads": 2, "head_dim": 16}),
    "gemma3_text": ("Gemma3TextConfig", {**_DECODER, "num_key_value_heads": 1, "head_dim": 16}),
    "phi3": ("Phi3Config", {**_DECODER, "num_key_value_heads": 4, "pad_token_id": 0}),
    "gpt2": ("GPT2Config", {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_inner": 40}),
    "gpt_neox": ("GPTNeoXConfig", dict(_DECODER)),
}
ARCHITECTURES = list(TINY_CONFIGS)


def tiny_config(name: str, **overrides):
    class_name, kwargs = TINY_CONFIGS[name]
    config_class = getattr(transformers, class_name)
    return config_class(**{"vocab_size": VOCAB, **kwargs, **overrides})


def tiny_model(name: str, seed: int = 0, dtype: torch.dtype = torch.float32, **overrides):
    """A tiny random causal LM of the given architecture, in eval mode (dropout off)."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(name, **overrides), dtype=dtype)
    return model.eval()


def sample_input(batch: int = 2, length: int = 7, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, length), generator=generator)


class CharTokenizer:
    """A deterministic character tokenizer with a BOS token and no chat template."""

    bos_token_id, pad_token_id, eos_token_id = 1, 0, 2
    chat_template = None

    def __call__(self, text, add_special_tokens=True):
        ids = [3 + (ord(ch) % (VOCAB - 3)) for ch in text]
        return type("Encoding", (), {"input_ids": ([self.bos_token_id] if add_special_tokens else []) + ids})()

    def decode(self, ids, skip_special_tokens=False):
        special = {self.bos_token_id, self.pad_token_id, self.eos_token_id} if skip_special_tokens else set()
        return "".join(chr(ord("!") + int(i)) for i in ids if int(i) not in special)


CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def ragged_probe():
    """Four contrastive pairs of uneven lengths, for tests that need some steering vectors, not particular ones."""
    from steer2edit_peft.probes.datasets import ContrastiveDataset

    records = [
        {"prompt": "q" * (2 + i), "positive": "yes" * (1 + i % 2), "negative": "no thanks" + "." * i} for i in range(4)
    ]
    return ContrastiveDataset.from_records(records)


def byte_tokenizer():
    """A real (fast, saveable) byte-level tokenizer with a chat template: 256 byte tokens + 3 specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
    # sorted: alphabet() comes out of a hash set, in another order in every process, which made every test on
    # this tokenizer see other token ids, hence other activations, from run to run.
    vocab.update({symbol: 3 + i for i, symbol in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))})
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def save_tiny_checkpoint(folder, name: str = "llama", seed: int = 0, **overrides):
    """A tiny random model plus the byte tokenizer saved as a transformers folder (loadable by path)."""
    model = tiny_model(name, seed=seed, vocab_size=260, **overrides)
    model.save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    return folder


def offloaded_llama(folder):
    """A tiny Llama saved to ``folder`` and loaded back with layer 1 offloaded to disk by accelerate."""
    tiny_model("llama").save_pretrained(folder / "model")
    device_map = {
        "model.embed_tokens": "cpu",
        "model.layers.0": "cpu",
        "model.layers.1": "disk",
        "model.norm": "cpu",
        "model.rotary_emb": "cpu",
        "lm_head": "cpu",
    }
    return AutoModelForCausalLM.from_pretrained(
        folder / "model", device_map=device_map, offload_folder=folder / "offload"
    )
