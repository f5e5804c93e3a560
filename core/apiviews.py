"""Base view for API endpoints (kept apart from core.api, which DRF settings import early)."""

from django.utils import translation
from rest_framework.views import APIView

from core.api import api_language


class BaseApiView(APIView):
    """Base for every endpoint: answers in the client's language (see api_language), and
    names it in `Content-Language`."""

    def dispatch(self, request, *args, **kwargs):
        with translation.override(api_language(request)):
            return super().dispatch(request, *args, **kwargs)

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        # Set while the answer's language is active: LocaleMiddleware would name the
        # operator UI's language, which it activates again once the view has returned.
        response["Content-Language"] = translation.get_language()
        return response
