"""WSGI entry point for every role (``gunicorn supervisor_site.wsgi``)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "supervisor_site.settings")

application = get_wsgi_application()
