"""Who did something: a signed-in user, or a named part of the platform acting on its own."""

from __future__ import annotations

import re
from dataclasses import dataclass

_COMPONENT = re.compile(r"^[a-z][a-z0-9_.-]{1,99}$")


@dataclass(frozen=True, slots=True)
class SystemActor:
    """A named platform component (``bootstrap_accounts``, ``strategy_cycle``, …) acting without a user."""

    name: str

    def __post_init__(self) -> None:
        if not _COMPONENT.match(self.name):
            raise ValueError(f"system actor name {self.name!r} must be a lower-case identifier")

    @property
    def label(self) -> str:
        return f"system:{self.name}"


def actor_label(actor) -> str:
    if isinstance(actor, SystemActor):
        return actor.label
    if getattr(actor, "pk", None) is None:
        raise TypeError("actor must be a saved user or a SystemActor")
    return f"user:{actor.get_username()}"


def actor_user(actor):
    return None if isinstance(actor, SystemActor) else actor
