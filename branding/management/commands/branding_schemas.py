"""`manage.py branding_schemas [--write | --check]`: the JSON Schemas of the branding contracts."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from branding.schemas import SCHEMA_DIR, generated_schemas, render, write_schemas


class Command(BaseCommand):
    help = "Write (--write) or check (--check, the default) branding/schemas/*.json against the typed models."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--write", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["write"]:
            for path in write_schemas():
                self.stdout.write(f"wrote {path}")
            return
        stale = [name for name, schema in generated_schemas().items()
                 if not (SCHEMA_DIR / name).exists() or (SCHEMA_DIR / name).read_text() != render(schema)]
        if stale:
            raise CommandError(f"stale schemas (run with --write): {', '.join(stale)}")
        self.stdout.write("schemas up to date")
