"""The hash chain's rules, without a database."""

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from governance.chain import GENESIS_HASH, ChainRecord, canonical_details, compute_hash, verify_chain


def make_chain(length: int) -> list[ChainRecord]:
    records, prev = [], GENESIS_HASH
    start = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
    for seq in range(1, length + 1):
        record = ChainRecord(
            seq=seq,
            created_at=start + timedelta(seconds=seq),
            actor="system:test",
            actor_user_id=None,
            account_id=1,
            action="test.event",
            target_type="accounts.account",
            target_id="1",
            details_json=canonical_details({"n": seq}),
            prev_hash=prev,
        )
        record = replace(record, hash=compute_hash(record))
        records.append(record)
        prev = record.hash
    return records


def test_intact_chain_verifies():
    assert verify_chain(make_chain(5)) is None
    assert verify_chain([]) is None


def test_hash_is_sha256_hex_and_covers_prev_hash():
    record = make_chain(1)[0]
    assert len(record.hash) == 64
    assert int(record.hash, 16) >= 0
    assert compute_hash(replace(record, prev_hash="f" * 64)) != record.hash


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("action", "test.forged"),
        ("actor", "user:mallory"),
        ("account_id", 2),
        ("details_json", '{"n":999}'),
        ("target_id", "2"),
        ("created_at", datetime(2020, 1, 1, tzinfo=UTC)),
    ],
)
def test_an_edited_field_breaks_the_chain_at_that_event(field, value):
    chain = make_chain(5)
    chain[2] = replace(chain[2], **{field: value})
    broken = verify_chain(chain)
    assert broken is not None
    assert broken.seq == 3
    assert "altered" in broken.reason


def test_a_rehashed_edit_breaks_the_next_link():
    chain = make_chain(5)
    forged = replace(chain[1], action="test.forged")
    chain[1] = replace(forged, hash=compute_hash(forged))
    broken = verify_chain(chain)
    assert broken.seq == 3
    assert "prev_hash" in broken.reason


def test_a_deleted_event_is_found():
    chain = make_chain(5)
    del chain[1]
    broken = verify_chain(chain)
    assert broken.seq == 3
    assert "missing" in broken.reason


def test_canonical_details_are_stable_and_exact():
    assert canonical_details({"b": 1, "a": Decimal("0.10")}) == '{"a":"0.10","b":1}'
    assert canonical_details(None) == "{}"


@pytest.mark.parametrize("bad", [{"x": float("nan")}, {"x": float("inf")}])
def test_canonical_details_refuse_non_finite_numbers(bad):
    with pytest.raises(ValueError, match="finite"):
        canonical_details(bad)


def test_canonical_details_refuse_unserialisable_values():
    with pytest.raises(TypeError, match="set"):
        canonical_details({"x": {1, 2}})
