"""Bulk UPDATEs with one value per row, in bounded chunks (reports are applied in batches)."""

from __future__ import annotations

from collections.abc import Iterable

from django.db import models

# Rows per bulk UPDATE: keeps statements (and SQLite's parameter count) bounded.
BULK_CHUNK = 200


def per_row(values: dict[int, object], field: models.Field) -> models.Case:
    """``CASE id WHEN … THEN …``: one value per row in a single UPDATE."""
    return models.Case(
        *(models.When(pk=pk, then=models.Value(value, output_field=field)) for pk, value in values.items()),
        output_field=field,
    )


def chunks(items: list, size: int = BULK_CHUNK) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
