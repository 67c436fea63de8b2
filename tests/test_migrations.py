"""Migrations have descriptive names and a way back (STYLE: migrations)."""

import re

from django.db.migrations.loader import MigrationLoader

PROJECT_APPS = {"accounts", "governance", "trading", "risk", "hedging", "learning", "reporting"}
AUTO_NAME = re.compile(r"^\d{4}_(auto_\d{8}_\d{4}|initial)$")


def project_migrations():
    loader = MigrationLoader(None, ignore_no_migrations=True)
    return [m for (app, _), m in loader.disk_migrations.items() if app in PROJECT_APPS]


def test_project_apps_have_migrations():
    assert {m.app_label for m in project_migrations()} >= {"accounts", "governance"}


def test_migration_names_are_descriptive():
    generic = sorted(f"{m.app_label}.{m.name}" for m in project_migrations() if AUTO_NAME.match(m.name))
    assert generic == [], "rename these migrations to say what they do"


def test_data_migrations_can_be_reversed():
    from django.db.migrations.operations import RunPython, RunSQL

    irreversible = [
        f"{m.app_label}.{m.name}"
        for m in project_migrations()
        for op in m.operations
        if isinstance(op, RunPython | RunSQL) and not op.reversible
    ]
    assert irreversible == []
