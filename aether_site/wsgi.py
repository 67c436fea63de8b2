import os

from django.core.wsgi import get_wsgi_application

from aether_site.cli import load_settings

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aether_site.settings")
load_settings()
application = get_wsgi_application()
