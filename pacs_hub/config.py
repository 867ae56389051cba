"""One settings object for the whole hub, read from ``PACS_HUB_*`` variables.

Built once in the entry point (:mod:`pacs_hub.cli`) and passed down; no module
reads the environment on its own.
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class DuplicatePolicy(StrEnum):
    """What to do when a SOP Instance UID arrives again with different bytes."""

    KEEP_FIRST = "keep-first"
    """Keep the stored object; answer the sender with failure 0xA900 and a comment."""
    REPLACE = "replace"
    """Index the new object in place of the old one (the old blob stays on disk)."""


def bundled_viewer_dir() -> Path | None:
    """The OHIF build fetched next to the package (``viewers/ohif/dist``), when present."""
    candidate = Path(__file__).resolve().parents[1] / "viewers" / "ohif" / "dist"
    return candidate if candidate.is_dir() else None


def _or_one_per_core(count: int) -> int:
    """``count`` when positive, else the number of cores this process may run on."""
    return count if count > 0 else max(1, len(os.sched_getaffinity(0)))


class Settings(BaseSettings):
    """Every setting of the hub, with laptop defaults (embedded SQLite, local folder)."""

    model_config = SettingsConfigDict(env_prefix="PACS_HUB_", extra="ignore")

    data_dir: Path = Field(default=Path("data"), description="Blobs, SQLite index, temp files")
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the index; default: SQLite file in the data folder",
    )
    ae_title: str = Field(default="PACS_HUB", max_length=16)
    host: str = "127.0.0.1"
    dicom_port: int = Field(default=11112, ge=1, le=65535)
    http_port: int = Field(default=8042, ge=1, le=65535)
    gateway_processes: int = Field(
        default=0,
        description="DICOM gateway processes accepting on one listening socket; 0 = one per core",
    )
    http_processes: int = Field(
        default=0,
        description="HTTP server processes accepting on one listening socket; 0 = one per core",
    )
    port_release_wait: float = Field(
        default=20.0,
        ge=0,
        description="Seconds serve waits for a DICOM or HTTP port held by another process,"
        " or a data folder held by another hub's processes (a hub stopped just before),"
        " before it refuses to start",
    )
    max_pdu_size: int = Field(default=262144, description="Maximum PDU length we receive")
    duplicate_policy: DuplicatePolicy = DuplicatePolicy.KEEP_FIRST
    network_timeout: float = 60.0
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    qido_max_limit: int = Field(
        default=5000, ge=1, description="Most QIDO-RS results in one page; a larger limit is a 400"
    )
    stow_max_bytes: int = Field(
        default=8 * 1024**3, ge=1, description="Largest STOW-RS request body accepted (413 above)"
    )
    # Regional interconnection (issue 5).
    unknown_callers: str = Field(
        default="refuse",
        pattern="^(refuse|accept)$",
        description="Associations from AE titles that are not registered nodes: refuse or"
        " accept (accept for the embedded demo)",
    )
    health_check_interval: float = Field(
        default=60.0, ge=0, description="Seconds between C-ECHOs to each PACS node; 0 = off"
    )
    federated_ae_title: str = Field(
        default="PACS_HUB_FED", max_length=16, description="AE title answering federated C-FIND"
    )
    federated_timeout: float = Field(
        default=5.0, gt=0, description="Seconds a federated query waits for each remote PACS"
    )
    pull_associations: int = Field(
        default=4,
        ge=1,
        le=16,
        description="Retrieve: C-MOVE associations one pull of a large study uses at once",
    )
    regional_issuer: str = Field(
        default="PACS_HUB_REGION", max_length=64, description="Issuer of regional patient IDs"
    )
    routing_max_attempts: int = Field(default=8, ge=1, description="Tries before 'failed'")
    routing_retry_base: float = Field(
        default=5.0, gt=0, description="First retry delay in seconds (doubles each time)"
    )
    prefetch_enabled: bool = Field(default=True, description="Fetch priors on a new study")
    prefetch_modalities: str = Field(
        default="", description="Modalities of priors to fetch (comma list); '' = any"
    )
    prefetch_max_age_days: int = Field(
        default=1825, ge=0, description="Fetch priors at most this old (days)"
    )
    # Trust (issue 4): authentication, access policy, audit.
    auth_required: bool = Field(
        default=True,
        description="Every HTTP and DICOM access needs an authenticated caller and passes the"
        " access policy; false only for tests and demos of other features",
    )
    oidc_discovery_url: str = Field(
        default="", description="External OpenID provider (e.g. Pro Sante Connect) discovery URL"
    )
    oidc_audience: str = Field(default="pacs-hub", description="Expected 'aud' of bearer tokens")
    oidc_required_acr: str = Field(
        default="", description="Minimum 'acr' of external tokens (eidas1 for Pro Sante Connect)"
    )
    oidc_claims: str = Field(
        default="standard",
        pattern="^(standard|prosanteconnect)$",
        description="How external claims map to users: standard or prosanteconnect",
    )
    token_lifetime: int = Field(default=3600, ge=60, description="Embedded issuer token life (s)")
    break_glass_roles: str = Field(
        default="radiologist,referring-doctor",
        description="Roles allowed emergency (break-glass) access, with a mandatory reason",
    )
    share_max_days: int = Field(default=90, ge=1, description="Longest share link life (days)")
    audit_retention_days: int = Field(
        default=183, ge=183, description="Audit trail kept at least this long (6 months minimum)"
    )
    audit_syslog_url: str = Field(
        default="", description="tls://host:port of an audit repository (RFC 5425), '' = none"
    )
    audit_syslog_ca: str = Field(default="", description="CA file for the audit repository's TLS")
    dicom_tls_cert: str = Field(
        default="", description="PEM certificate of the DICOM port (TLS when set, with the key)"
    )
    dicom_tls_key: str = Field(default="", description="PEM private key of the DICOM port")
    dicom_tls_ca: str = Field(
        default="", description="CA file checking DICOM client certificates ('' = none asked)"
    )
    # Backup target for hospitals (issue 6): backfill, RPO, restore.
    backup_rate_limit: float = Field(
        default=0.0, ge=0, description="Backfill: most instances pulled per second; 0 = no limit"
    )
    backup_associations: int = Field(
        default=2, ge=1, le=16, description="Backfill: studies pulled at once from one PACS"
    )
    backup_restore_associations: int = Field(
        default=4, ge=1, le=32, description="Restore: parallel associations to the PACS"
    )
    backup_window_days: int = Field(
        default=365, ge=1, description="Backfill and reconciliation: days per C-FIND window"
    )
    backup_since: str = Field(
        default="19900101", pattern=r"^\d{8}$", description="Oldest Study Date walked (YYYYMMDD)"
    )
    backup_rpo_alert_minutes: float = Field(
        default=60.0, gt=0, description="RPO above which an establishment is in alert"
    )
    metrics_token: str = Field(
        default="",
        description="Bearer token of the Prometheus scraper on GET /metrics"
        " (without it: regional administrators only)",
    )
    integrity_rate: float = Field(
        default=10.0,
        ge=0,
        description="MB/s the integrity sweep reads stored instances back at, at most; 0 = off",
    )
    integrity_cycle_days: float = Field(
        default=30.0,
        ge=0,
        description="Days from the start of one integrity sweep of the archive to the next",
    )
    retention_years: int = Field(
        default=20,
        ge=1,
        le=200,
        description="Years records are kept after the patient's last contact (CSP R. 1112-7),"
        " for establishments without a period of their own",
    )
    cold_after_days: int = Field(
        default=0,
        ge=0,
        description="Days without a new instance after which the hub moves a study to the"
        " cold tier (lossless compression); 0 = never",
    )
    tier_sweep_hours: float = Field(
        default=24.0,
        ge=0,
        description="Hours between the hub's passes moving studies to the cold tier",
    )
    cold_cache_mb: int = Field(
        default=2048,
        ge=0,
        description="Most MB of decompressed cold instances kept for their readers",
    )
    retention_sweep_hours: float = Field(
        default=24.0,
        ge=0,
        description="Hours between counts of the studies whose retention ended; 0 = off",
    )
    backup_interval: float = Field(
        default=5.0, ge=0, description="Seconds between turns of the backfill task; 0 = off"
    )
    backup_undated: bool = Field(
        default=True,
        description="Backfill and reconciliation: also find the studies without Study Date"
        " (one C-FIND over the PACS's whole archive, keeping those with an empty date)",
    )
    backup_commitment_timeout: float = Field(
        default=300.0,
        ge=0,
        description="Restore: seconds to wait for the PACS's storage commitment reports;"
        " 0 = do not ask for storage commitment",
    )
    # Post-processing jobs (issue 7): Celery broker, queues, rules.
    broker_url: str = Field(
        default="",
        description="Celery broker of the processing jobs; '' = a SQLite file in the data folder"
        " (kombu's SQLAlchemy transport, no server); production: redis://host:6379/0",
    )
    result_backend: str = Field(
        default="",
        description="Celery result backend (job state, progress); '' = a SQLite file in the data"
        " folder; production: redis://host:6379/1",
    )
    embedded_worker: bool = Field(
        default=True, description="serve starts a Celery worker on the cpu, gpu and io queues"
    )
    processing_queue: str = Field(
        default="gpu", pattern="^(cpu|gpu)$", description="Queue of post-processing jobs"
    )
    processing_auto_min_slices: int = Field(
        default=0,
        ge=0,
        description="A new CT series with more slices than this gets processing_auto_pipeline;"
        " 0 = off (the default: results add series to the archive, e.g. 100)",
    )
    processing_auto_pipeline: str = Field(
        default="mpr,mip", description="Steps run automatically on a new large CT series"
    )
    processing_interval: float = Field(
        default=5.0, ge=0, description="Seconds between turns of the processing rules; 0 = off"
    )
    processing_settle_seconds: float = Field(
        default=10.0, ge=0, description="A study is processed once unchanged for this long"
    )
    processing_stale_after: float = Field(
        default=60.0, gt=0, description="A running job silent this long (s) is run again"
    )
    log_level: str = "INFO"
    viewer_dir: Path | None = Field(
        default_factory=bundled_viewer_dir,
        description="OHIF's static build served at /; default: viewers/ohif/dist when fetched",
    )

    @property
    def index_url(self) -> str:
        """The index's SQLAlchemy URL (SQLite in the data folder unless configured)."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'index.sqlite3').resolve()}"

    @property
    def effective_gateway_processes(self) -> int:
        """Number of gateway processes to start: the setting, or one per core."""
        return _or_one_per_core(self.gateway_processes)

    @property
    def effective_http_processes(self) -> int:
        """Number of HTTP server processes to start: the setting, or one per core."""
        return _or_one_per_core(self.http_processes)
