#!/usr/bin/env bash
# Makes sure the system packages tagcache needs are present: redis-server and redis-cli (7.0+)
# to run and test the module, clang/libclang for bindgen when redis-module builds, Node.js/npm
# and a Python 3 with venv for the client packages.
# Installs them with apt-get when run as root; otherwise prints the exact command.
set -euo pipefail

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
# bindgen loads libclang.so / libclang-<version>.so (not libclang-cpp, which images often carry).
if ! compgen -G "/usr/lib/llvm-*/lib/libclang.so*" >/dev/null \
   && ! compgen -G "/usr/lib/*/libclang-[0-9]*.so*" >/dev/null; then
  missing+=(libclang-dev clang)
fi
# The client packages: Node.js with npm, and a Python 3 that can make virtualenvs.
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if ! command -v python3 >/dev/null 2>&1; then
  missing+=(python3 python3-venv)
elif ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  missing+=(python3-venv)
fi
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "tagcache needs: ${missing[*]}" >&2
  echo "install them with:  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "installing ${missing[*]} ..." >&2
export DEBIAN_FRONTEND=noninteractive
# Do not let the package start a system redis-server on 6379 (it would clash with `make run`).
policy=/usr/sbin/policy-rc.d
created_policy=no
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && created_policy=yes
fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
[ "$created_policy" = yes ] && rm -f "$policy"
redis-server --version >&2
