#!/usr/bin/env bash
# Type-checks the dashboard JSON against Grafana's published schema: the `Dashboard` type of
# the npm package @grafana/schema, compiled with tsc in strict mode (an object literal with a
# misspelt or unknown field, a wrong type or a missing required field fails).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
npm_dir=$root/.tools/npm
if [[ ! -x $npm_dir/node_modules/.bin/tsc || ! -d $npm_dir/node_modules/@grafana/schema ]]; then
  mkdir -p "$npm_dir"
  (cd "$npm_dir" && { [[ -f package.json ]] || npm init -y >/dev/null; } \
    && npm install --silent --no-audit --no-fund @grafana/schema typescript >/dev/null)
fi
work=$(mktemp -d "$npm_dir/check-XXXXXX")
trap 'rm -rf "$work"' EXIT
# The schema types two fields as TypeScript string enums, which a JSON string literal cannot
# satisfy however right it is: their values are written as the enums' members.
{
  echo "import { FieldColorModeId, ThresholdsMode, type Dashboard } from '@grafana/schema';"
  printf 'export const dashboard: Dashboard = '
  sed -e 's/"mode": "absolute"/"mode": ThresholdsMode.Absolute/' \
      -e 's/"mode": "percentage"/"mode": ThresholdsMode.Percentage/' \
      -e 's/"mode": "thresholds"/"mode": FieldColorModeId.Thresholds/' \
      "$root/deploy/grafana/dashboards/agentfleet.json"
  echo ';'
} > "$work/dashboard.ts"
"$npm_dir/node_modules/.bin/tsc" --noEmit --strict --skipLibCheck false --moduleResolution bundler \
  --module esnext --target es2020 "$work/dashboard.ts"
echo "dashboard: type-checks against @grafana/schema $(node -p "require('$npm_dir/node_modules/@grafana/schema/package.json').version")"
