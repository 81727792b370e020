#!/usr/bin/env bash
# Set up everything (see setup.sh) and run the whole test suite against real FUSE mounts
# and a real S3 server process. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e
if [ $status -eq 5 ]; then
    echo "pytest collected no tests: that is a failure here" >&2
    exit 1
fi
exit $status
