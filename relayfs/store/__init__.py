"""RelayFS storage tiers: L1 (memory), L2 (cache directory) and L3 (object store)."""
