from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True)
class OutboundMessage:
    delivery_id: int
    idempotency_key: str
    contact_id: int
    recipient: dict[str, Any]
    payload: dict[str, Any]


@dataclass(frozen=True)
class SendResult:
    ok: bool
    provider_message_id: str = ""
    error_code: str = ""
    error_message: str = ""
    # Transient failures (timeouts, 5xx, rate limits) may be tried again; the rest are final.
    retryable: bool = False


class ChannelAdapter:
    """Talks to one provider. `send` must not raise for provider errors: it returns a result."""

    kind: ClassVar[str]
    # True when the provider dedupes by our idempotency key, so re-sending after a crash is safe.
    supports_idempotency: ClassVar[bool] = False

    def __init__(self, config: dict[str, Any]):
        self.config = config

    @classmethod
    def validate_config(cls, config: dict[str, Any]) -> None:
        """Raise ValidationFailed when the configuration cannot work."""

    def send(self, message: OutboundMessage) -> SendResult:
        raise NotImplementedError
