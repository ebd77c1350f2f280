"""SHIM (issue 15 wave 2 removes it): old import path of dlfp.io.download."""

from dlfp.io.download import (  # noqa: F401
    DownloadError,
    DriveQuotaError,
    RetryPolicy,
    TooLargeError,
    UntrustedURLError,
    download,
    part_path,
    probe_size,
)
