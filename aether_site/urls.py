from django.contrib import admin
from django.urls import path

from aether_site import health

admin.site.site_header = "Aether"
admin.site.site_title = "Aether admin"
admin.site.index_title = "Accounts, audit and operations"
admin.site.site_url = None  # the admin is the site; there is no public front page to link to

urlpatterns = [
    # Also answered by ProbeMiddleware; routed here so reverse() and the URL map name them.
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", health.metrics, name="metrics"),
    path("admin/", admin.site.urls),
]
