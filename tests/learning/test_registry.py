"""The model registry: atomic registration, hash-checked loading, the promotion gate, manual promotion and
rollback by directors, every change audited."""

import dataclasses
import hashlib

import pytest
from django.core.exceptions import PermissionDenied
from django.db import IntegrityError, transaction

from governance.actors import SystemActor
from governance.models import AuditEvent
from learning import selectors, services
from learning.errors import ArtifactIntegrityError, PromotionRefused
from learning.features import prepare_candles
from learning.models import ModelVersion
from learning.walkforward import build_dataset, fit_final, walk_forward
from tests.learning.conftest import fast_spec
from tests.learning.synthetic import predictable

SYSTEM = SystemActor("learning.tests")


@pytest.fixture(scope="module")
def trained():
    """One real walk-forward and final fit on synthetic candles (no database), shared by the module."""
    prepared = prepare_candles(predictable(1600, seed=21), pair="BTC/USD", timeframe=60, min_bars=500)
    dataset = build_dataset([prepared], btc=prepared, spec=fast_spec())
    model, start, end = fit_final(dataset, fast_spec())
    return walk_forward(dataset, fast_spec()), model, start, end


def register(trained, *, score: float, scope="BTC/USD", previous=None, horizon=None) -> ModelVersion:
    result, model, start, end = trained
    oos = {**result.oos, "strategy": {**result.oos["strategy"], "sharpe": score}}
    spec = result.spec if horizon is None else dataclasses.replace(result.spec, horizon=horizon)
    result = dataclasses.replace(result, oos=oos, previous=previous, spec=spec)
    model = dataclasses.replace(model, meta={**model.meta, "variant": score}, horizon=spec.horizon)
    return services.model_register(
        actor=SYSTEM, scope=scope, model=model, result=result, training_start=start, training_end=end
    )


def audit(action):
    return list(AuditEvent.objects.filter(action=action).order_by("seq"))


pytestmark = pytest.mark.django_db


def test_registration_stores_the_artifact_its_hash_and_an_audit_event(trained, artifact_root):
    version = register(trained, score=0.5)
    data = (artifact_root / version.artifact.name).read_bytes()
    assert hashlib.sha256(data).hexdigest() == version.artifact_sha256
    assert version.status == ModelVersion.Status.CANDIDATE
    assert version.data_sha256 == trained[0].data_sha256
    assert len(version.data_sha256) == 64
    assert version.trained_by == "system:learning.tests"
    assert version.metrics["score"] == 0.5
    assert len(version.metrics["folds"]) == 3
    (event,) = audit("learning.model_registered")
    assert event.details["artifact_sha256"] == version.artifact_sha256
    assert event.target_id == str(version.pk)
    loaded = selectors.model_load(version)
    assert loaded.features == trained[1].features


def test_a_run_killed_while_registering_leaves_no_row_no_file_and_the_champion_serving(
    trained, artifact_root, monkeypatch
):
    champion = register(trained, score=0.5)
    services.model_promote(actor=SYSTEM, version=champion, reason="first", decision=_passing())
    files_before = sorted(artifact_root.rglob("*.joblib"))

    def killed(**kwargs):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(services, "audit_record", killed)
    with pytest.raises(KeyboardInterrupt):
        register(trained, score=9.0)
    assert ModelVersion.objects.count() == 1
    assert sorted(artifact_root.rglob("*.joblib")) == files_before  # the new file was removed again
    assert selectors.champion_for(scope="BTC/USD", timeframe=60).pk == champion.pk


def _passing():
    from learning.gate import GateDecision

    return GateDecision(True, 1.0, None, 0.1, "no champion", "test")


def test_a_tampered_artifact_is_refused_and_the_champion_keeps_serving(trained, market, artifact_root):
    champion = register(trained, score=0.5)
    services.model_promote(actor=SYSTEM, version=champion, reason="first", decision=_passing())
    candidate = register(trained, score=2.0)
    path = artifact_root / candidate.artifact.name
    path.write_bytes(path.read_bytes()[:-1] + b"\x00")

    with pytest.raises(
        ArtifactIntegrityError, match=rf"model #{candidate.pk} .*does not match the registered"
    ):
        selectors.model_load(candidate)
    with pytest.raises(ArtifactIntegrityError):
        services.model_gate(actor=SYSTEM, version=candidate)
    champion.refresh_from_db()
    assert champion.status == ModelVersion.Status.CHAMPION
    assert ModelVersion.objects.get(pk=candidate.pk).status == ModelVersion.Status.CANDIDATE
    signal = selectors.signal_for(instrument=market["btc"], timeframe=60, as_of=_now(market))
    assert (signal.status, signal.model_version_id) == ("ok", champion.pk)


def test_a_tampered_champion_keeps_serving_from_memory_and_a_fresh_process_says_why(
    trained, market, artifact_root
):
    champion = register(trained, score=0.5)
    services.model_promote(actor=SYSTEM, version=champion, reason="first", decision=_passing())
    as_of = _now(market)
    assert selectors.signal_for(instrument=market["btc"], timeframe=60, as_of=as_of).ok
    (artifact_root / champion.artifact.name).write_bytes(b"not a model")
    assert selectors.signal_for(instrument=market["btc"], timeframe=60, as_of=as_of).ok  # verified copy
    selectors.model_cache_clear()  # a new worker process
    signal = selectors.signal_for(instrument=market["btc"], timeframe=60, as_of=as_of)
    assert signal.status == "artifact_invalid"
    assert signal.probability is None
    assert "does not match the registered" in signal.message


def _now(market):
    import datetime

    return market["end"].to_pydatetime() + datetime.timedelta(hours=1, minutes=5)


@pytest.mark.parametrize(("score", "promoted"), [(1.05, False), (1.10, False), (1.5, True)])
def test_gate_promotes_only_a_candidate_that_beats_the_champion_by_the_margin(
    trained, settings, score, promoted
):
    settings.LEARNING_PROMOTION_MARGIN = 0.10
    champion = register(trained, score=1.0)
    services.model_promote(actor=SYSTEM, version=champion, reason="first", decision=_passing())
    candidate = register(trained, score=score)

    decision = services.model_gate(actor=SYSTEM, version=candidate)

    candidate.refresh_from_db()
    champion.refresh_from_db()
    assert decision.promote is promoted
    assert candidate.gate["promote"] is promoted
    if promoted:
        assert (candidate.status, champion.status) == ("champion", "retired")
        (event,) = [e for e in audit("learning.model_promoted") if e.target_id == str(candidate.pk)]
        assert event.details["champion_before"] == champion.pk
        assert event.details["champion_after"] == candidate.pk
        assert event.details["manual"] is False
    else:
        assert (candidate.status, champion.status) == ("candidate", "champion")
        (event,) = audit("learning.model_gate_declined")
        assert "does not beat the champion's 1.000" in event.details["reason"]


def head_to_head(version_id, *, candidate, champion, bars=720):
    return {
        "version_id": version_id,
        "comparable_bars": bars,
        "candidate": {"strategy": {"sharpe": candidate}},
        "champion": {"strategy": {"sharpe": champion}},
    }


def test_the_gate_uses_a_head_to_head_only_against_the_champion_still_in_place(trained, firm, settings):
    settings.LEARNING_PROMOTION_MARGIN = 0.10
    first = register(trained, score=0.5)
    services.model_promote(actor=SYSTEM, version=first, reason="first", decision=_passing())
    # The candidate's walk-forward beat `first` head-to-head; then a director crowned a stronger model.
    candidate = register(trained, score=0.3, previous=head_to_head(first.pk, candidate=0.9, champion=0.2))
    stronger = register(trained, score=2.0)
    services.model_promote(actor=firm.owner, version=stronger, reason="better")

    decision = services.model_gate(actor=SYSTEM, version=candidate)

    assert decision.promote is False
    assert selectors.champion_for(scope="BTC/USD", timeframe=60).pk == stronger.pk
    assert (decision.basis, decision.champion_id) == ("recorded scores", stronger.pk)
    assert f"#{first.pk} then, #{stronger.pk} now" in decision.reason
    assert selectors.champion_for(scope="BTC/USD", timeframe=60).pk == stronger.pk
    candidate.refresh_from_db()
    assert (candidate.status, candidate.gate["basis"]) == ("candidate", "recorded scores")


def test_an_automatic_promotion_is_re_gated_under_the_lock_against_the_champion_in_place(
    trained, firm, settings
):
    settings.LEARNING_PROMOTION_MARGIN = 0.10
    first = register(trained, score=0.5)
    services.model_promote(actor=SYSTEM, version=first, reason="first", decision=_passing())
    candidate = register(trained, score=3.0, previous=head_to_head(first.pk, candidate=0.9, champion=0.2))
    from learning.gate import GateDecision

    passing = GateDecision(True, 0.9, 0.2, 0.10, "head-to-head", "beats the first head-to-head")
    # The gate passed against `first`; before the swap a director crowned a model with another horizon.
    other = register(trained, score=0.1, horizon=12)
    services.model_promote(actor=firm.owner, version=other, reason="shorter horizon")

    with pytest.raises(PromotionRefused, match="automatic promotion refused: the champion changed since"):
        services.model_promote(actor=SYSTEM, version=candidate, reason="gate", decision=passing)

    assert selectors.champion_for(scope="BTC/USD", timeframe=60).pk == other.pk
    candidate.refresh_from_db()
    assert candidate.status == "candidate"
    assert candidate.gate["promote"] is False
    assert "horizon 24 vs the champion's 12" in candidate.gate["reason"]
    (event,) = [e for e in audit("learning.model_gate_declined") if e.target_id == str(candidate.pk)]
    assert event.details["champion_id"] == other.pk
    assert not [e for e in audit("learning.model_promoted") if e.target_id == str(candidate.pk)]


@pytest.mark.parametrize(("margin", "replaced"), [(0.10, True), (100.0, False)])
def test_a_tampered_champion_does_not_block_retraining_and_must_be_beaten_by_a_flat_books_margin(
    market, firm, artifact_root, settings, margin, replaced
):
    settings.LEARNING_PROMOTION_MARGIN = margin
    broken = services.model_train(
        actor=SYSTEM, instruments=[market["btc"]], timeframe=60, spec=fast_spec(), promote=False
    ).version
    services.model_promote(actor=firm.owner, version=broken, reason="baseline")
    (artifact_root / broken.artifact.name).write_bytes(b"tampered")
    selectors.model_cache_clear()  # a fresh worker: the champion can no longer be loaded

    outcome = services.model_train(actor=SYSTEM, instruments=[market["btc"]], timeframe=60, spec=fast_spec())

    previous = outcome.version.metrics["previous"]
    assert previous["version_id"] == broken.pk
    assert previous["comparable_bars"] == 0
    assert "does not match the registered" in previous["unavailable"]
    registered = AuditEvent.objects.get(action="learning.model_registered", target_id=str(outcome.version.pk))
    assert registered.details["compared_with"]["version_id"] == broken.pk
    assert "does not match the registered" in registered.details["compared_with"]["unavailable"]
    assert outcome.result.score > 1.0  # the planted momentum: far above a flat book
    assert (outcome.decision.basis, outcome.decision.champion_score) == ("champion unavailable", None)
    assert f"champion #{broken.pk} was unavailable" in outcome.decision.reason
    assert "only by beating a flat book by the margin" in outcome.decision.reason
    assert outcome.decision.promote is replaced
    champion = selectors.champion_for(scope="BTC/USD", timeframe=60)
    assert champion.pk == (outcome.version.pk if replaced else broken.pk)


def test_the_first_model_must_beat_a_flat_book(trained, settings):
    settings.LEARNING_PROMOTION_MARGIN = 0.10
    loser = register(trained, score=-0.3)
    assert services.model_gate(actor=SYSTEM, version=loser).promote is False
    assert selectors.champion_for(scope="BTC/USD", timeframe=60) is None


def test_the_database_holds_at_most_one_champion_per_scope(trained):
    first = register(trained, score=1.0)
    services.model_promote(actor=SYSTEM, version=first, reason="first", decision=_passing())
    second = register(trained, score=1.0)
    second.status = ModelVersion.Status.CHAMPION
    with pytest.raises(IntegrityError), transaction.atomic():
        second.save()


def test_directors_promote_and_roll_back_by_hand_with_before_and_after(trained, firm):
    first = register(trained, score=1.0)
    services.model_promote(actor=SYSTEM, version=first, reason="first", decision=_passing())
    second = register(trained, score=0.2)  # would fail the gate: a director may still choose it

    services.model_promote(actor=firm.owner, version=second, reason="prefer the newer data")
    (event,) = [e for e in audit("learning.model_promoted") if e.actor == "user:alice"]
    assert (event.details["champion_before"], event.details["champion_after"]) == (first.pk, second.pk)
    assert event.details["manual"] is True
    assert event.details["gate"]["promote"] is False
    assert event.details["reason"] == "prefer the newer data"

    restored = services.model_rollback(
        actor=firm.director, scope="BTC/USD", timeframe=60, reason="worse live"
    )
    assert restored.pk == first.pk
    (event,) = audit("learning.model_rolled_back")
    assert (event.details["champion_before"], event.details["champion_after"]) == (second.pk, first.pk)
    assert event.actor == "user:bob"
    assert ModelVersion.objects.get(pk=second.pk).status == "retired"
    assert first.history.count() >= 3  # created, promoted, retired, restored: history kept


@pytest.mark.parametrize("who", ["viewer", "outsider"])
def test_viewers_and_outsiders_may_not_promote_or_roll_back(trained, firm, who):
    version = register(trained, score=1.0)
    user = getattr(firm, who)
    with pytest.raises(PermissionDenied):
        services.model_promote(actor=user, version=version, reason="mine")
    with pytest.raises(PermissionDenied):
        services.model_rollback(actor=user, scope="BTC/USD", timeframe=60, reason="mine")
    assert ModelVersion.objects.get(pk=version.pk).status == "candidate"


def test_the_platform_promotes_only_through_a_passing_gate_and_never_rolls_back(trained):
    version = register(trained, score=1.0)
    with pytest.raises(PromotionRefused, match="needs a passing gate"):
        services.model_promote(actor=SYSTEM, version=version, reason="why not")
    with pytest.raises(PromotionRefused, match="director's decision"):
        services.model_rollback(actor=SYSTEM, scope="BTC/USD", timeframe=60, reason="x")


def test_rollback_needs_an_earlier_champion(trained, firm):
    with pytest.raises(PromotionRefused, match="no champion to roll back"):
        services.model_rollback(actor=firm.owner, scope="BTC/USD", timeframe=60, reason="x")
    only = register(trained, score=1.0)
    services.model_promote(actor=firm.owner, version=only, reason="first")
    with pytest.raises(PromotionRefused, match="no earlier champion"):
        services.model_rollback(actor=firm.owner, scope="BTC/USD", timeframe=60, reason="x")
