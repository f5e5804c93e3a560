from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from config import views


class MethodNotAllowedPage:
    """An action's address opened in the browser (a reloaded or bookmarked "delete" or "mark
    done" link) gets a page in the operator layout instead of Django's empty 405, which browsers
    show as a blank screen. Django has no handler405 to set, hence a middleware.

    Only for the empty answers of `require_POST` and the like: the API answers 405 with its own
    JSON error, and htmx requests keep the bare status (htmx shows nothing for it either way).
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if (
            response.status_code != 405
            or response.content
            or request.method not in ("GET", "HEAD")
            or request.path.startswith("/api/")
            or request.headers.get("HX-Request")
        ):
            return response
        page = views.method_not_allowed(request)
        if response.has_header("Allow"):
            page["Allow"] = response["Allow"]
        return page
