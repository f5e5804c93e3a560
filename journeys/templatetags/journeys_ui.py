from django import template
from django.utils.translation import gettext as _

register = template.Library()


@register.filter
def wait_duration(seconds: int | None) -> str:
    """Seconds as the largest sensible units, e.g. "2 天 3 小时" / "2 d 3 h"."""
    seconds = int(seconds or 0)
    if seconds == 0:
        return _("no wait")
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = []
    for amount, unit in (
        (days, _("%(n)s d")),
        (hours, _("%(n)s h")),
        (minutes, _("%(n)s min")),
        (secs, _("%(n)s s")),
    ):
        if amount:
            parts.append(unit % {"n": amount})
    return " ".join(parts[:2])
