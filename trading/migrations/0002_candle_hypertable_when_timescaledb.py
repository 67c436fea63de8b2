from django.db import migrations

from trading import storage


def to_hypertable(apps, schema_editor):
    connection = schema_editor.connection
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        if not storage.timescale_installed(cursor) or storage.is_hypertable(cursor):
            return
        for statement in storage.HYPERTABLE_SQL:
            cursor.execute(statement)


class Migration(migrations.Migration):
    dependencies = [("trading", "0001_instruments_candles_feed_status_fee_tiers")]

    # A hypertable stays one: going back leaves the store as it is.
    operations = [migrations.RunPython(to_hypertable, migrations.RunPython.noop, elidable=False)]
