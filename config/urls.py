from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularRedocView, SpectacularSwaggerView

from config import meta_views, views

# Error pages in the operator layout (500 keeps Django's view: its template needs no database);
# under /api/ the 404 and 500 answer the API's JSON error instead.
handler403 = views.permission_denied
handler404 = views.page_not_found
handler500 = views.server_error

api_v1 = [
    path("", include("contacts.api_urls")),
    path("", include("segments.api_urls")),
    # Last: any other path (an unknown one, or an id that is not a number) is the API's JSON
    # 404, with DEBUG on too.
    re_path(r"", views.api_not_found, name="api-not-found"),
]

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("healthz", views.healthz, name="healthz"),
    path("favicon.ico", meta_views.favicon, name="favicon"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("i18n/", include("django.conf.urls.i18n")),
    path("contacts/import/", include("contacts.import_urls")),
    path("contacts/", include("contacts.urls")),
    path("segments/", include("segments.urls")),
    path("journeys/", include("journeys.urls")),
    path("membership/", include("membership.urls")),
    path("channels/", include("channels.urls")),
    path("admin/", admin.site.urls),
    path("api/v1/", include(api_v1)),
    path("api/schema/", meta_views.ApiSchemaView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="api-schema"), name="api-redoc"),
]
