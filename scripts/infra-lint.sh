#!/usr/bin/env bash
# Lints the Terraform module in infra/: (a) formatting, with HashiCorp's own formatter
# (hclwrite.Format, as `terraform fmt` runs it) from @cdktf/hcl-tools (npm, pinned), and
# `terraform fmt -check` too when terraform is on PATH; (b) checkov (PyPI, pinned); (c)
# `terraform validate` when terraform is on PATH and its providers can be fetched.
# Tools install into .cache/ on first use. Run through `make lint`.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${SWITCHYARD_CACHE:-$root/.cache}
HCL_TOOLS_VERSION=0.21.0
CHECKOV_VERSION=3.3.30

hcl_prefix="$cache/hcl-tools-$HCL_TOOLS_VERSION"
if [ ! -f "$hcl_prefix/node_modules/@cdktf/hcl-tools/package.json" ]; then
  echo "infra-lint: installing @cdktf/hcl-tools $HCL_TOOLS_VERSION" >&2
  mkdir -p "$hcl_prefix"
  npm install --silent --no-audit --no-fund --prefix "$hcl_prefix" "@cdktf/hcl-tools@$HCL_TOOLS_VERSION" >/dev/null
fi

checkov_venv="$cache/checkov-$CHECKOV_VERSION"
if [ ! -x "$checkov_venv/bin/checkov" ]; then
  echo "infra-lint: installing checkov $CHECKOV_VERSION" >&2
  rm -rf "$checkov_venv"
  python3 -m venv "$checkov_venv"
  "$checkov_venv/bin/pip" install --quiet --disable-pip-version-check "checkov==$CHECKOV_VERSION"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
status=0

# (a) Formatting: each file against its formatted self.
mapfile -t files < <(cd "$root" && find infra -name '*.tf' -not -path '*/.terraform/*' | sort)
NODE_PATH="$hcl_prefix/node_modules" node - "$root" "$work" "${files[@]}" <<'JS'
const fs = require('fs');
const path = require('path');
const { format } = require('@cdktf/hcl-tools');
const [root, out, ...files] = process.argv.slice(2);
(async () => {
  for (const file of files) {
    const formatted = await format(fs.readFileSync(path.join(root, file), 'utf8'));
    const target = path.join(out, 'formatted', file);
    fs.mkdirSync(path.dirname(target), { recursive: true });
    fs.writeFileSync(target, formatted);
  }
})().catch((e) => { console.error(e); process.exit(2); });
JS
unformatted=()
for file in "${files[@]}"; do
  if ! diff -u --label "$file" --label "$file (formatted)" "$root/$file" "$work/formatted/$file" >"$work/diff" ; then
    unformatted+=("$file")
    cat "$work/diff" >&2
  fi
done
if [ ${#unformatted[@]} -gt 0 ]; then
  echo "infra-lint: not formatted (terraform fmt style): ${unformatted[*]}" >&2
  status=1
else
  echo "infra-lint: ${#files[@]} files formatted"
fi

have_terraform=false
if command -v terraform >/dev/null 2>&1; then
  have_terraform=true
  export CHECKPOINT_DISABLE=1
  # A CLI configuration that is named but absent only earns a warning on every command.
  if [ -n "${TF_CLI_CONFIG_FILE:-}" ] && [ ! -e "$TF_CLI_CONFIG_FILE" ]; then
    unset TF_CLI_CONFIG_FILE
  fi
  if terraform -chdir="$root" fmt -check -recursive -diff infra >&2; then
    echo "infra-lint: terraform fmt -check: clean"
  else
    echo "infra-lint: terraform fmt -check: not clean" >&2
    status=1
  fi
fi

# (b) checkov: every finding fails; a skipped check is justified on its resource.
if "$checkov_venv/bin/checkov" -d "$root/infra" --framework terraform --compact --quiet --skip-download >"$work/checkov" 2>&1; then
  echo "infra-lint: checkov: passed"
else
  cat "$work/checkov" >&2
  echo "infra-lint: checkov: FAILED" >&2
  status=1
fi

# (c) terraform validate, in a scratch data dir so infra/ stays clean.
if ! $have_terraform; then
  echo "infra-lint: terraform validate skipped: no terraform on PATH"
else
  # init writes a dependency lock file next to the module; one it created is removed again.
  lock="$root/infra/.terraform.lock.hcl"
  [ -e "$lock" ] && had_lock=true || had_lock=false
  if ! TF_DATA_DIR="$work/tf" timeout 120 terraform -chdir="$root/infra" init -backend=false -input=false -no-color >"$work/init" 2>&1; then
    reason=$(grep -m1 -E 'could not connect|Failed|Error' "$work/init" | sed 's/^[│ ]*//' || true)
    echo "infra-lint: terraform validate skipped: terraform init -backend=false could not fetch the providers (${reason:-see its output})"
  elif TF_DATA_DIR="$work/tf" terraform -chdir="$root/infra" validate -no-color; then
    echo "infra-lint: terraform validate: valid"
  else
    status=1
  fi
  $had_lock || rm -f "$lock"
fi
exit $status
