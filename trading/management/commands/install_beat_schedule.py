"""Write the platform's periodic tasks (aether_site/beat.py) into django-celery-beat's tables."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from aether_site.beat import install, schedule


class Command(BaseCommand):
    help = "Create or update every periodic task beat runs (see aether_site/beat.py); safe to re-run."

    def handle(self, *args, **options) -> None:
        entries = schedule()
        created, updated = install(entries)
        for entry in entries:
            when = f"every {entry.every_seconds} s" if entry.every_seconds else f"cron {entry.crontab}"
            self.stdout.write(f"  {entry.name}: {entry.task}{list(entry.args)} {when} on {entry.queue}")
        self.stdout.write(
            self.style.SUCCESS(
                f"install_beat_schedule: {len(entries)} tasks, {created} created, {updated} updated"
            )
        )
