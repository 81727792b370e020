"""RelayFS: a tiered, versioned filesystem for workstations that keep their data on Storj."""

__version__ = "0.1.0"
