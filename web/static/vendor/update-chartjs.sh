#!/usr/bin/env bash
# Vendors Chart.js (the npm package chart.js) into web/static/vendor/: its UMD build
# (dist/chart.umd.js, served as /static/vendor/chart.umd.js to the insights page) and
# its LICENSE. The committed files are what the app serves: CI and a deploy need no npm.
#
#   make vendor-chartjs                      # the version below
#   make vendor-chartjs CHARTJS_VERSION=4.7.0
#
# Then update the version in web/static/vendor/README.md, open /insights/ and run
# tests/test_insights_browser.py.
set -euo pipefail
version="${1:?usage: update-chartjs.sh VERSION}"
here="$(cd "$(dirname "$0")" && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "chart.js@$version" >/dev/null)
tar -xzf "$tmp"/chart.js-"$version".tgz -C "$tmp"
cp "$tmp/package/dist/chart.umd.js" "$here/chart.umd.js"
cp "$tmp/package/LICENSE.md" "$here/chart.js.LICENSE.md"
echo "vendored chart.js $version: $(wc -c < "$here/chart.umd.js") bytes"
