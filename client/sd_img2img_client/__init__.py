"""Client for the Stable Diffusion img2img service: sync and async HTTP clients, webhook verification,
and a direct-to-Triton mode. It imports nothing from the server."""

from .client import AsyncImg2ImgClient, Img2ImgClient
from .models import (
    Img2ImgError,
    Img2ImgRequest,
    Img2ImgResult,
    Progress,
    RunAccepted,
    RunEvent,
    RunStatus,
    format_duration,
    parse_duration,
)
from .webhooks import WebhookVerificationError, verify_webhook

__all__ = [
    "AsyncImg2ImgClient",
    "Img2ImgClient",
    "Img2ImgError",
    "Img2ImgRequest",
    "Img2ImgResult",
    "RunAccepted",
    "Progress",
    "RunEvent",
    "RunStatus",
    "WebhookVerificationError",
    "format_duration",
    "parse_duration",
    "verify_webhook",
]
