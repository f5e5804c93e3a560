from channels.adapters.base import ChannelAdapter, OutboundMessage, SendResult
from channels.adapters.console import ConsoleAdapter
from channels.adapters.webhook import WebhookAdapter

ADAPTERS: dict[str, type[ChannelAdapter]] = {
    ConsoleAdapter.kind: ConsoleAdapter,
    WebhookAdapter.kind: WebhookAdapter,
}


def adapter_for(kind: str, config: dict) -> ChannelAdapter:
    return ADAPTERS[kind](config)


__all__ = ["ADAPTERS", "ChannelAdapter", "OutboundMessage", "SendResult", "adapter_for"]
