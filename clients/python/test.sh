#!/usr/bin/env bash
# The Python package's tests, as `make test` should run them: creates clients/python/.venv when
# missing, installs the package with its [test] extra, runs pytest against real redis-servers
# the tests start themselves (module from $TAGCACHE_MODULE, default target/debug/libtagcache.so).
# Extra arguments go to pytest (e.g. ./test.sh -k cluster -x).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${TAGCACHE_PY_VENV:-$here/.venv}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv" || {
        echo "python3 -m venv failed: on Debian/Ubuntu install python3-venv (apt-get install -y python3-venv)" >&2
        exit 1
    }
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$here[test]"
export TAGCACHE_MODULE="${TAGCACHE_MODULE:-$(cd "$here/../.." && pwd)/target/debug/libtagcache.so}"
exec "$venv/bin/python" -m pytest "$here" -q -p no:cacheprovider "$@"
