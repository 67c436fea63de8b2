#!/usr/bin/env python
"""Aether's command-line entry point."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aether_site.settings")
    from django.core.management import execute_from_command_line

    from aether_site.cli import run_guarded

    run_guarded(lambda: execute_from_command_line(sys.argv))


if __name__ == "__main__":
    main()
