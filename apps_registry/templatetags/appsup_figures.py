"""``{% app_figures app as figures %}``: the context of the app page's Figures block
(``apps_registry.admin.figures``), so that the page includes it with one line."""

from __future__ import annotations

from django import template

from apps_registry.admin import figures
from apps_registry.models import Application

register = template.Library()


@register.simple_tag
def app_figures(app: Application | None) -> dict:
    return figures.context(app)
