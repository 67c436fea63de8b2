"""Who may do what to an account's rows: one table, shared by querysets, selectors, services and admin."""

from django.db import models


class Role(models.TextChoices):
    DIRECTOR = "director", "Director"
    VIEWER = "viewer", "Viewer"


# Directors administer the accounts they belong to; viewers only read.
ROLES_FOR_ACTION: dict[str, frozenset[str]] = {
    "view": frozenset({Role.DIRECTOR, Role.VIEWER}),
    "add": frozenset({Role.DIRECTOR}),
    "change": frozenset({Role.DIRECTOR}),
    "delete": frozenset({Role.DIRECTOR}),
}


def roles_for(action: str) -> frozenset[str]:
    try:
        return ROLES_FOR_ACTION[action]
    except KeyError:
        raise ValueError(
            f"unknown action {action!r}; expected one of {', '.join(ROLES_FOR_ACTION)}"
        ) from None
