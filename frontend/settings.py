"""Every frontend setting, from ``SD_*`` environment variables (see docs/settings.md).

Built once in ``main()`` and passed to ``create_app``; nothing reads the environment at import time.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SD_", frozen=True, extra="ignore")

    # Serving
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Path("data")
    playground: bool = True  # the web page at / and /playground (static; every call it makes needs a key)
    # The run store: sqlite:///path (default: runs.sqlite3 in data_dir), or postgresql://user:pw@host/db
    # for several replicas. The engine is the scheme.
    database_url: str = ""
    database_pool_size: int = Field(default=10, ge=1)  # connections per replica (PostgreSQL)
    lease_s: float = Field(default=30.0, gt=0)  # how long a replica's claim on a run or a delivery lasts unrenewed
    lease_poll_s: float = Field(default=2.0, gt=0)  # how often a replica renews its leases and looks for lapsed ones
    # How long a run's own write (its record, its start, its outcome) is tried again while the database
    # cannot be reached, before the run is handed back for any replica to take over.
    store_retry_s: float = Field(default=10.0, ge=0)
    # Retention: results (and so webhook payloads) go after result_ttl_s, run records after run_ttl_s.
    result_ttl_s: float = Field(default=3600.0, gt=0)
    run_ttl_s: float = Field(default=7 * 24 * 3600.0, gt=0)
    retention_interval_s: float = Field(default=60.0, gt=0)
    # Run control: how long an Idempotency-Key is remembered (per API key); per-key fairness (in the run store,
    # so it holds across replicas).
    idempotency_ttl_s: float = Field(default=24 * 3600.0, ge=3600)
    max_runs_in_flight_per_key: int = Field(default=64, ge=0)  # 0: no cap
    # Off by default: the in-flight cap is what keeps one key from filling the model's queue.
    rate_per_key_per_s: float = Field(default=0.0, ge=0)  # token bucket refill; 0: no rate limit
    rate_burst_per_key: int = Field(default=100, ge=1)
    events_poll_s: float = Field(default=0.25, gt=0)  # how often GET /runs/{id}/events looks at the run
    events_keepalive_s: float = Field(default=15.0, gt=0)  # a comment line this often keeps proxies open
    progress_poll_s: float = Field(default=0.25, gt=0)  # how often the replica running a run asks for its progress
    progress_store_s: float = Field(default=1.0, gt=0)  # at most one progress write per run this often
    log_level: str = "INFO"
    shutdown_timeout_s: float = 60.0

    # Auth: several keys at once, for rotation. Compared in constant time.
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)

    # Triton: one pod (host:port), several (host:port,host:port), or a headless Service (dns:///name:port)
    triton_url: str = "127.0.0.1:8001"  # gRPC
    fleet_resolve_s: float = Field(default=5.0, gt=0)  # how often dns:/// is resolved again (pods join, leave)
    pod_check_s: float = Field(default=1.0, gt=0)  # how often a pod out of placement is probed to bring it back
    pod_max_rows: int = Field(default=32, ge=1)  # UNet rows a pod runs at once (its max_rows_in_flight)
    pod_placement: Literal["fewest_forwards", "round_robin"] = "fewest_forwards"  # round_robin: to compare
    triton_model: str = "sd_img2img"
    triton_progress_model: str = "sd_img2img_progress"
    triton_timeout_s: float = 300.0
    readyz_cache_s: float = 2.0  # a dead stub shows within about this plus one canary (1 s)
    canary_timeout_s: float = 10.0  # how long /readyz waits for its canary; no answer yet = busy, not dead
    readyz_stall_s: float = 600.0  # a canary unanswered this long makes the replica unready

    # Request bounds
    max_body_bytes: int = 20 * 1024 * 1024
    max_image_bytes: int = 15 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    # Inputs larger than this are resized to fit. 0: follow the served model (its card's max_image_side:
    # 2048 for SDXL), or 1024 while it has not said.
    max_image_side: int = Field(default=0, ge=0)
    max_prompt_chars: int = 2000
    max_inference_steps: int = 150
    max_guidance_scale: float = 30.0
    max_images_per_prompt: int = 4
    png_compress_level: int = Field(default=1, ge=0, le=9)
    jpeg_quality: int = Field(default=90, ge=1, le=100)
    webp_quality: int = Field(default=90, ge=1, le=100)

    # file_url fetching
    fetch_connect_timeout_s: float = 5.0
    fetch_total_timeout_s: float = 20.0
    fetch_max_redirects: int = 3
    # CIDRs that file_url and webhooks may reach although they are not public (tests: 127.0.0.1/32).
    allow_private_networks: Annotated[list[Network], NoDecode] = Field(default_factory=list)

    # Webhooks (Standard Webhooks signing)
    webhook_secret: SecretStr | None = None  # "whsec_" + base64; generated for the dev stack
    webhook_timeout_s: float = 20.0
    webhook_max_attempts: int = 10
    webhook_retry_base_s: float = 5.0
    webhook_retry_max_s: float = 6 * 3600.0
    webhook_poll_s: float = 1.0

    # An accepted webhook run that finds Triton full or down retries for this long before failing.
    async_retry_window_s: float = 600.0
    async_retry_interval_s: float = 2.0

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @field_validator("allow_private_networks", mode="before")
    @classmethod
    def _split_networks(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list):
            return [ipaddress.ip_network(item, strict=False) for item in value]
        return value

    @property
    def store_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'runs.sqlite3'}"
