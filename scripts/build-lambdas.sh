#!/usr/bin/env bash
# Builds every function under functions/ as a Lambda release zip with cargo-lambda
# (provided.al2023 `bootstrap`), x86_64 by default, ARCH=arm64 as an option.
# Output: target/lambda/<function>/bootstrap.zip, sizes printed. Run through `make build`.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

arch_flag=()
case "${ARCH:-x86_64}" in
  x86_64) ;;
  arm64)
    # cargo-lambda cross-compiles with zig but needs the Rust standard library for the
    # target, which only rustup installs.
    if ! rustup target list --installed 2>/dev/null | grep -qx aarch64-unknown-linux-gnu; then
      echo "build: ARCH=arm64 needs 'rustup target add aarch64-unknown-linux-gnu'" >&2
      exit 1
    fi
    arch_flag=(--arm64) ;;
  *) echo "build: ARCH must be x86_64 or arm64, not ${ARCH}" >&2; exit 1 ;;
esac

packages=()
for manifest in functions/*/Cargo.toml; do
  packages+=(-p "$(basename "$(dirname "$manifest")")")
done
out="$root/target/lambda"
bash "$root/scripts/cargo-lambda.sh" lambda build --release --locked "${arch_flag[@]}" --output-format zip \
  --lambda-dir "$out" "${packages[@]}"

echo "build: ${ARCH:-x86_64} zips in target/lambda/:"
for manifest in functions/*/Cargo.toml; do
  name=$(basename "$(dirname "$manifest")")
  zip="$out/$name/bootstrap.zip"
  [ -f "$zip" ] || { echo "build: $name produced no zip" >&2; exit 1; }
  printf '  %-36s %8s KiB\n' "$name" "$(( $(stat -c %s "$zip") / 1024 ))"
done
