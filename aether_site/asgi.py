import os

from django.core.asgi import get_asgi_application

from aether_site.cli import load_settings

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aether_site.settings")
load_settings()
application = get_asgi_application()
