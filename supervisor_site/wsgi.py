"""WSGI entry point for every role (``gunicorn supervisor_site.wsgi``)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "supervisor_site.settings")

from supervisor_site.client_input import GuardedInputApplication  # noqa: E402  (after the settings name)

# A body the client cannot deliver is a 400 in every role, never a 500 (client_input.py).
application = GuardedInputApplication(get_wsgi_application())
