#!/usr/bin/env python3
"""RelayFS's benchmark: every system side by side on one shaped S3 link, one table.

    scripts/bench.py                       # the full run (about 1.5 h on 2 cores, most of it
                                           # the 10,000-file set-ups of W7)
    scripts/bench.py --quick               # small sizes, one run each: proves it works
    scripts/bench.py --only W1,W3 --systems relayfs,native --json figures.json

Run it with the Python that has RelayFS and its test extras installed (moto[server],
boto3), as root (FUSE mounts, drop_caches, apt-get for the peers it lacks). The code is
in scripts/relaybench/; ``--help`` lists every flag.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from relaybench.cli import entry  # noqa: E402

if __name__ == "__main__":
    entry()
