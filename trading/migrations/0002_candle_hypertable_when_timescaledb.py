from django.db import migrations

from trading import storage


def to_hypertable(apps, schema_editor):
    storage.ensure_hypertable(schema_editor.connection)


class Migration(migrations.Migration):
    dependencies = [("trading", "0001_instruments_candles_feed_status_fee_tiers")]

    # A hypertable stays one: going back leaves the store as it is.
    operations = [migrations.RunPython(to_hypertable, migrations.RunPython.noop, elidable=False)]
