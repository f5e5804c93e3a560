import hashlib
import hmac
import json
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlparse

from django.conf import settings

from channels.adapters.base import ChannelAdapter, OutboundMessage, SendResult
from core.errors import ValidationFailed

SIGNATURE_HEADER = "X-Scrm-Signature"
TIMESTAMP_HEADER = "X-Scrm-Timestamp"
TIMEOUT_SECONDS = 10


def sign(*, secret: str, timestamp: str, body: bytes) -> str:
    """`sha256=<hex>` of HMAC-SHA256 over `<timestamp>.<body>`; the receiver recomputes it."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class WebhookAdapter(ChannelAdapter):
    """POSTs each message as JSON to the brand's endpoint, signed with a shared secret."""

    kind = "webhook"
    # Every request carries Idempotency-Key, so receivers can drop a re-send after a crash.
    supports_idempotency = True

    @classmethod
    def validate_config(cls, config: dict[str, Any]) -> None:
        url = config.get("url", "")
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValidationFailed("A webhook channel needs an http(s) URL.", code="invalid_config")
        if not (config.get("secret") or settings.WEBHOOK_DEFAULT_SECRET):
            raise ValidationFailed(
                "A webhook channel needs a signing secret.", code="invalid_config"
            )

    def send(self, message: OutboundMessage) -> SendResult:
        secret = self.config.get("secret") or settings.WEBHOOK_DEFAULT_SECRET
        body = json.dumps(
            {
                "delivery_id": message.delivery_id,
                "idempotency_key": message.idempotency_key,
                "contact_id": message.contact_id,
                "recipient": message.recipient,
                "message": message.payload,
            },
            ensure_ascii=False,
            sort_keys=True,
        ).encode()
        timestamp = str(int(time.time()))
        request = urllib.request.Request(
            self.config["url"],
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json; charset=utf-8",
                "User-Agent": "scrm-webhook/1",
                "Idempotency-Key": message.idempotency_key,
                TIMESTAMP_HEADER: timestamp,
                SIGNATURE_HEADER: sign(secret=secret, timestamp=timestamp, body=body),
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
                reply = response.read(64 * 1024)
                status = response.status
        except urllib.error.HTTPError as exc:
            retryable = exc.code >= 500 or exc.code == 429
            return SendResult(
                ok=False,
                error_code=f"http_{exc.code}",
                error_message=exc.reason if isinstance(exc.reason, str) else str(exc.reason),
                retryable=retryable,
            )
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            return SendResult(
                ok=False, error_code="network", error_message=str(exc)[:500], retryable=True
            )
        provider_id = ""
        try:
            provider_id = str(json.loads(reply or b"{}").get("id", ""))
        except (ValueError, AttributeError):
            provider_id = ""
        return SendResult(ok=200 <= status < 300, provider_message_id=provider_id[:200])
