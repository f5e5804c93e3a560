import json
import logging

from channels.adapters.base import ChannelAdapter, OutboundMessage, SendResult

logger = logging.getLogger("scrm.channels.console")


class ConsoleAdapter(ChannelAdapter):
    """Writes the message to the log: for local development and demos."""

    kind = "console"
    supports_idempotency = True

    def send(self, message: OutboundMessage) -> SendResult:
        logger.info(
            "deliver %s to contact %s: %s",
            message.idempotency_key,
            message.contact_id,
            json.dumps(message.payload, ensure_ascii=False),
        )
        return SendResult(ok=True, provider_message_id=f"console-{message.delivery_id}")
