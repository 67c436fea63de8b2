"""manage.py train and manage.py model_champion."""

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from learning.models import ModelVersion


@pytest.fixture
def quick(settings):
    settings.LEARNING_MODEL_KIND = "logistic"


def run(*args):
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_train_registers_prints_every_fold_and_a_summary(market, quick, settings):
    settings.LEARNING_PROMOTION_MARGIN = 1000.0  # nothing can pass: the champion stays as it is (none)
    since = market["start"].date().isoformat()
    out, _ = run("train", "--pair", "BTC/USD", "--since", since, "--timeframe", "60")
    version = ModelVersion.objects.get()
    lines = out.strip().splitlines()
    assert [line.split(":")[0] for line in lines[:-1]] == ["fold 1", "fold 2", "fold 3", "fold 4"]
    assert "vs buy-and-hold" in lines[0]
    assert lines[-1].startswith("train BTC/USD 60m logistic h=24: OOS Sharpe ")
    assert f"registered #{version.pk}; gate: out-of-sample Sharpe" in lines[-1]
    assert "does not beat a flat book (0) by more than the margin 1000.000" in lines[-1]
    assert version.status == "candidate"


def test_train_dry_run_registers_nothing(market, quick):
    out, _ = run("train", "--pair", "ETH/USD", "--dry-run")
    assert out.strip().endswith("dry run, nothing registered")
    assert not ModelVersion.objects.exists()


def test_train_refuses_what_it_cannot_do(market, quick):
    with pytest.raises(CommandError, match=r"DOGE/USD is not in the synced spot USD universe"):
        run("train", "--pair", "DOGE/USD")
    with pytest.raises(CommandError, match=r"several --pair need --scope pooled"):
        run("train", "--pair", "BTC/USD", "--pair", "ETH/USD")
    with pytest.raises(
        CommandError, match=r"BTC/USD: only \d+ closed 60m bars; need at least 500; nothing was"
    ):
        run("train", "--pair", "BTC/USD", "--since", market["end"].date().isoformat())


def test_a_failure_after_registration_says_exactly_what_exists(market, quick, monkeypatch):
    from learning import services
    from learning.errors import ArtifactIntegrityError

    def broken_gate(**kwargs):
        raise ArtifactIntegrityError("model #x: storage went away")

    monkeypatch.setattr(services, "model_gate", broken_gate)
    with pytest.raises(CommandError) as caught:
        run("train", "--pair", "BTC/USD")
    version = ModelVersion.objects.get()
    assert str(caught.value) == (
        f"model #x: storage went away; model #{version.pk} was registered and is a candidate; the "
        "promotion gate did not complete; the champion of BTC/USD 60m is none"
    )
    assert "nothing was registered" not in str(caught.value)


def test_pooled_training_covers_both_pairs(market, quick):
    run("train", "--pair", "BTC/USD", "--pair", "ETH/USD", "--scope", "pooled", "--no-promote")
    version = ModelVersion.objects.get()
    assert (version.scope, version.pairs) == ("pooled", ["BTC/USD", "ETH/USD"])


def test_model_champion_promotes_and_rolls_back_in_a_directors_name(market, quick, firm):
    run("train", "--pair", "BTC/USD", "--no-promote")
    run("train", "--pair", "BTC/USD", "--no-promote", "--horizon", "12")
    first, second = ModelVersion.objects.order_by("pk")
    out, _ = run("model_champion", "promote", str(first.pk), "--by", "alice", "--reason", "baseline")
    assert out.strip() == f"model_champion promote: #{first.pk} is the champion of BTC/USD"
    run("model_champion", "promote", str(second.pk), "--by", "bob", "--reason", "shorter horizon")
    out, _ = run("model_champion", "rollback", "BTC/USD", "--by", "alice", "--reason", "worse")
    assert out.strip() == f"model_champion rollback: #{first.pk} is the champion of BTC/USD"
    with pytest.raises(CommandError, match="Only a director may promote a model"):
        run("model_champion", "promote", str(second.pk), "--by", "carol", "--reason", "mine")
    with pytest.raises(CommandError, match="no model version #999"):
        run("model_champion", "promote", "999", "--by", "alice", "--reason", "x")


def test_model_champion_help_says_who_takes_responsibility_and_where_the_authenticated_path_is():
    from learning.management.commands.model_champion import Command

    text = " ".join(Command().create_parser("manage.py", "model_champion").format_help().split())
    assert "--by names the director who takes responsibility" in text
    assert "does not authenticate" in text
    assert "admin" in text


def write_kraken_file(path, frame):
    seconds = frame.index.as_unit("s").asi8
    rows = frame[["open", "high", "low", "close", "volume"]].itertuples(index=False)
    lines = [f"{t},{o},{h},{lo},{c},{v},1\n" for t, (o, h, lo, c, v) in zip(seconds, rows, strict=True)]
    path.write_text("".join(lines))
    return str(path)


def test_walk_forward_report_uses_the_span_both_files_cover_and_says_which(tmp_path):
    import pandas as pd

    from tests.learning.synthetic import START, candles, predictable

    # BTC ends 300 bars before ETH does (as Kraken's files do); ETH starts 300 bars after BTC.
    btc = write_kraken_file(tmp_path / "btc.csv", predictable(2000, seed=3) * 300)
    eth = write_kraken_file(
        tmp_path / "eth.csv", candles(2000, seed=4, start=START + pd.Timedelta(hours=300))
    )
    output = tmp_path / "report.md"
    out, _ = run(
        "walk_forward_report", "--btc-file", btc, "--eth-file", eth, "--years", "0.19",
        "--kind", "logistic", "--output", str(output),
    )  # fmt: skip
    # Common span: START+300h → START+1999h; the last 0.19 years (69 days = 1,656 h) of it.
    first = START + pd.Timedelta(hours=1999 - 1656 + 1)
    last = START + pd.Timedelta(hours=1999)
    span = f"{first:%Y-%m-%d %H:%M} → {last:%Y-%m-%d %H:%M} UTC"
    assert out.splitlines()[0] == f"walk_forward_report: span used {span}"
    text = output.read_text()
    assert f"Span used: {span}" in text
    for pair in ("BTC/USD", "ETH/USD"):
        assert f"- {pair}: 1,656 bars, {span};" in text
    assert "`uv run python manage.py walk_forward_report --years 0.19`" in text


def test_walk_forward_report_writes_the_figures_it_computed(tmp_path):
    from tests.learning.synthetic import candles, predictable

    files = {}
    for name, frame in (("btc.csv", predictable(1600, seed=3) * 300), ("eth.csv", candles(1600, seed=4))):
        seconds = frame.index.as_unit("s").asi8
        rows = frame[["open", "high", "low", "close", "volume"]].itertuples(index=False)
        lines = [f"{t},{o},{h},{lo},{c},{v},1\n" for t, (o, h, lo, c, v) in zip(seconds, rows, strict=True)]
        (tmp_path / name).write_text("".join(lines))
        files[name] = str(tmp_path / name)
    output = tmp_path / "report.md"
    out, _ = run(
        "walk_forward_report", "--btc-file", files["btc.csv"], "--eth-file", files["eth.csv"],
        "--kind", "logistic", "--output", str(output),
    )  # fmt: skip
    text = output.read_text()
    assert out.splitlines()[-1].startswith(f"walk_forward_report: {output} (2 runs; best OOS Sharpe ")
    # The purge as the code makes it: the last training bar 25 bars before the fold (24 in between).
    assert "each fold's last training bar opens 25 bars before the fold's first bar" in text
    assert "so 24 bars lie between them" in text
    assert "| BTC/USD | logistic | " in text
    assert "| ETH/USD | logistic | " in text
    assert "### BTC/USD — logistic" in text
    assert text.count("| **all OOS** | all folds |") == 2
    assert "| BTC/USD | " in text.split("## Regimes")[1]
    with pytest.raises(CommandError, match=r"missing\.csv: not found"):
        run("walk_forward_report", "--btc-file", str(tmp_path / "missing.csv"), "--output", str(output))
