"""RelayFS: a tiered, versioned filesystem for workstations that keep their data on Storj.

``import relayfs`` gives the Python API (``relayfs.open``, see ``relayfs.sdk``); it is loaded
on first use, so the command line does not pay for it.
"""

from typing import Any

__version__ = "0.1.0"

_SDK_NAMES = ("open", "Client", "Put", "Version", "Job", "JobsFailed")
__all__ = ["__version__", *_SDK_NAMES]


def __getattr__(name: str) -> Any:
    if name in _SDK_NAMES:
        from . import sdk

        return getattr(sdk, name)
    raise AttributeError(f"module 'relayfs' has no attribute {name!r}")
