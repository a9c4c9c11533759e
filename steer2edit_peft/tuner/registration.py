"""Teach PEFT the STEER2EDIT method: a PeftType member plus PEFT's own registration."""

from __future__ import annotations

from peft.utils import PeftType

PEFT_TYPE_NAME = "STEER2EDIT"


def add_peft_type_member() -> PeftType:
    """Add ``PeftType.STEER2EDIT`` to PEFT's enum (idempotent); enums cannot be extended otherwise."""
    existing = PeftType.__members__.get(PEFT_TYPE_NAME)
    if existing is not None:
        return existing
    member = str.__new__(PeftType, PEFT_TYPE_NAME)
    member._name_ = PEFT_TYPE_NAME
    member._value_ = PEFT_TYPE_NAME
    member.__objclass__ = PeftType  # type: ignore[attr-defined]
    member._sort_order_ = len(PeftType._member_names_)  # type: ignore[attr-defined]
    PeftType._member_map_[PEFT_TYPE_NAME] = member
    PeftType._value2member_map_[PEFT_TYPE_NAME] = member
    PeftType._member_names_.append(PEFT_TYPE_NAME)  # type: ignore[attr-defined]
    type.__setattr__(PeftType, PEFT_TYPE_NAME, member)
    return member


def register() -> None:
    """Register Steer2Edit with PEFT once; later calls (or a second import) do nothing."""
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
    from peft.utils import register_peft_method

    from . import integration, stacking

    integration.install()
    peft_type = add_peft_type_member()
    if peft_type not in PEFT_TYPE_TO_TUNER_MAPPING:
        from . import Steer2EditConfig, Steer2EditModel

        register_peft_method(
            name=PEFT_TYPE_NAME.lower(), config_cls=Steer2EditConfig, model_cls=Steer2EditModel, prefix="steer2edit_"
        )
    stacking.install()
