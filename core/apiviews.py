"""Base view for API endpoints (kept apart from core.api, which DRF settings import early)."""

from django.utils import translation
from rest_framework.views import APIView


class BaseApiView(APIView):
    """Base for every endpoint: API errors are in English unless the client asks otherwise."""

    def dispatch(self, request, *args, **kwargs):
        # The operator UI defaults to Chinese; integrators' logs are easier to read in English.
        if "HTTP_ACCEPT_LANGUAGE" in request.META:
            return super().dispatch(request, *args, **kwargs)
        with translation.override("en"):
            return super().dispatch(request, *args, **kwargs)
