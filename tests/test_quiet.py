"""The library's own PEFT calls stay quiet without touching the warning filters a user set."""

from __future__ import annotations

import warnings

from peft import get_peft_model
from tiny_models import CharTokenizer, ragged_probe, tiny_model

from steer2edit_peft import Steer2EditConfig, edit_model, extract_steering_vectors
from steer2edit_peft.export.hub import load_edit

CONFIG = Steer2EditConfig(rho_attn=0.05, rho_mlp=0.05, alpha=0.5)


def deprecations(call) -> list[str]:
    """The FutureWarnings ``call()`` raises with every warning shown; it must leave the warning filters as it found them."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        filters = list(warnings.filters)
        call()
        assert warnings.filters == filters, "the library changed the caller's warning filters"
    return [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]


def test_editing_and_loading_raise_no_peft_deprecation_and_leave_the_user_filters_alone(tmp_path):
    vectors = extract_steering_vectors(tiny_model("llama"), CharTokenizer(), ragged_probe(), show_progress=False)
    assert deprecations(lambda: edit_model(tiny_model("llama"), vectors, CONFIG).save_pretrained(tmp_path)) == []
    assert deprecations(lambda: load_edit(tiny_model("llama"), str(tmp_path))) == []
    # A user's own call into PEFT still warns where this transformers deprecates the probe: nothing here is global.
    deprecated = deprecations(lambda: tiny_model("llama").is_gradient_checkpointing)
    shown = deprecations(lambda: get_peft_model(tiny_model("llama"), Steer2EditConfig(target_modules=["o_proj"])))
    assert bool(shown) == bool(deprecated)
