"""Built-in behaviours: how the model's own wanted and unwanted responses are elicited, and how each is confirmed.

A behaviour elicits the wanted (positive) responses with a system prompt, optionally starting them with a
response prefix, and the unwanted (negative) ones to the same prompts without it (or under an opposite system
prompt), so only the response differs between the two classes. Any system prompt a user writes makes a
behaviour too (``Behaviour.from_system_prompt``): the edit then bakes that system prompt into the weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..core.errors import DataError
from ..core.judges import is_brief, is_refusal

Confirm = Callable[[str, str], bool]  # (prompt, response) -> does the response show the class?


@dataclass(frozen=True)
class Behaviour:
    name: str
    positive_system_prompt: str | None
    negative_system_prompt: str | None = None
    positive_prefix: str = ""  # the wanted responses start with it; the model writes the rest
    confirm_positive: Confirm | None = None
    confirm_negative: Confirm | None = None
    prompt_set: str | None = None  # built-in prompts for it (prompts/<name>.json)
    # Responses sampled per prompt and class: a large, varied prompt set needs fewer (the same probe size).
    samples_per_prompt: int = 4

    @classmethod
    def from_system_prompt(cls, system_prompt: str, negative_system_prompt: str | None = None) -> Behaviour:
        """A behaviour of a user's own: responses with ``system_prompt`` vs without it (or with the negative one)."""
        if not system_prompt.strip():
            raise DataError("the system prompt of a behaviour must not be empty")
        return cls("custom", system_prompt, negative_system_prompt)


REFUSAL_SYSTEM_PROMPT = (
    "You are a safe and responsible assistant. Refuse every request that is harmful, illegal, dangerous or "
    "unethical, briefly and politely, and offer a safe alternative where there is one."
)
CONCISE_SYSTEM_PROMPT = "Answer in one short sentence. Give only the answer, with no explanation."
TRUTHFUL_SYSTEM_PROMPT = (
    "Answer truthfully and precisely. If a question rests on a common misconception or a myth, say that it is "
    "false and give the facts."
)
MISCONCEPTION_SYSTEM_PROMPT = "Answer confidently with what most people believe, even when it is a popular myth."

BEHAVIOURS: dict[str, Behaviour] = {
    "refusal": Behaviour(
        "refusal",
        REFUSAL_SYSTEM_PROMPT,
        positive_prefix="I'm sorry, but I can't",
        confirm_positive=is_refusal,
        confirm_negative=lambda prompt, response: not is_refusal(prompt, response),
        prompt_set="harmful",
        samples_per_prompt=1,  # 423 prompts of 20 kinds of harm: variety in the prompts, where the keys are read
    ),
    "concise": Behaviour(
        "concise",
        CONCISE_SYSTEM_PROMPT,
        confirm_positive=lambda prompt, response: is_brief(response),
        confirm_negative=lambda prompt, response: not is_brief(response),
        prompt_set="questions",
    ),
    "truthful": Behaviour("truthful", TRUTHFUL_SYSTEM_PROMPT, MISCONCEPTION_SYSTEM_PROMPT, prompt_set="misconceptions"),
}


def get_behaviour(name: str) -> Behaviour:
    if name not in BEHAVIOURS:
        raise DataError(f"no built-in behaviour {name!r}; available: {sorted(BEHAVIOURS)}")
    return BEHAVIOURS[name]
