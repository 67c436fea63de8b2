"""What the hedge commands share: finding the account and the acting director (as the risk commands do)."""

from __future__ import annotations

from risk.management.commands._shared import (
    REFUSED,
    USAGE,
    account_from,
    add_account_and_director,
    director_from,
    refused,
)

__all__ = ["REFUSED", "USAGE", "account_from", "add_account_and_director", "director_from", "refused"]
