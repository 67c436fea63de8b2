from django.db import migrations

from governance import triggers


def install(apps, schema_editor):
    with schema_editor.connection.cursor() as cursor:
        triggers.install(cursor, schema_editor.connection.vendor)


def uninstall(apps, schema_editor):
    with schema_editor.connection.cursor() as cursor:
        triggers.uninstall(cursor, schema_editor.connection.vendor)


class Migration(migrations.Migration):
    dependencies = [("governance", "0001_audit_event")]

    operations = [migrations.RunPython(install, uninstall, elidable=False)]
