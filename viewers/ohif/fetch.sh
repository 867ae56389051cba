#!/usr/bin/env bash
# Fetch the prebuilt OHIF v3 viewer (npm package @ohif/app) into a git-ignored folder.
#
#   viewers/ohif/fetch.sh [DEST]      default DEST: viewers/ohif/dist
#
# What it does (see ../../../shared/reference/viewer.md, section 1):
#   npm pack @ohif/app@$OHIF_VERSION into a temp dir, untar, copy package/dist to DEST,
#   prune what the hub never serves (ort/ = onnxruntime for AI segmentation, 136 MB;
#   dicom-microscopy-viewer/, 20 MB; google.js, oidc-client.min.js, silent-refresh.html;
#   netlify/serve configs; the shipped app-config.js, which points at a public demo server:
#   the hub generates its own), then pre-compress text and WASM files (*.gz next to them).
#
# Idempotent: DEST/.ohif-version records what is there; a second run with the same
# version does nothing. The new tree is built beside DEST and swapped in at the end, so
# an interrupted fetch never leaves a half-filled folder behind.
set -euo pipefail

OHIF_VERSION="${OHIF_VERSION:-3.13.2}"
# Bump the suffix when the pruning or compression below changes, so old trees are redone.
STAMP_TEXT="@ohif/app@${OHIF_VERSION} pruned gz-1"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DEST="${1:-${HERE}/dist}"
STAMP="${DEST}/.ohif-version"

if [ -f "${STAMP}" ] && [ "$(cat "${STAMP}")" = "${STAMP_TEXT}" ] && [ -f "${DEST}/index.html" ]; then
  echo "viewer: OHIF ${OHIF_VERSION} already in ${DEST}"
  exit 0
fi

if ! command -v npm >/dev/null 2>&1; then
  echo "viewer: npm not found on PATH; it is needed once to fetch OHIF ${OHIF_VERSION}" \
    "(npm pack @ohif/app). Install Node.js with npm (e.g. 'apt-get install npm')," \
    "then run 'make viewer'." >&2
  exit 3
fi

WORK="$(mktemp -d)"
NEW="${DEST}.new.$$"
cleanup() { rm -rf "${WORK}" "${NEW}"; }
trap cleanup EXIT

echo "viewer: fetching @ohif/app@${OHIF_VERSION} with npm pack"
if ! (cd "${WORK}" && npm pack --silent --no-fund --no-audit "@ohif/app@${OHIF_VERSION}" >/dev/null); then
  echo "viewer: 'npm pack @ohif/app@${OHIF_VERSION}' failed (is the npm registry reachable?)" >&2
  exit 4
fi
tar xzf "${WORK}/ohif-app-${OHIF_VERSION}.tgz" -C "${WORK}"
if [ ! -f "${WORK}/package/dist/index.html" ]; then
  echo "viewer: @ohif/app@${OHIF_VERSION} has no dist/index.html; not a prebuilt viewer" >&2
  exit 5
fi

mkdir -p "$(dirname "${DEST}")"
rm -rf "${NEW}"
cp -r "${WORK}/package/dist" "${NEW}"
(
  cd "${NEW}"
  rm -rf ort dicom-microscopy-viewer
  rm -f google.js oidc-client.min.js silent-refresh.html app-config.js _headers _redirects serve.json
  # npm pack stamps every file 1985-10-26; give them real times so ETags change on upgrade.
  find . -type f -exec touch {} +
  # Pre-compressed copies, served when the browser accepts gzip (bundles shrink about 5x).
  find . -type f -size +1k \( -name '*.js' -o -name '*.css' -o -name '*.wasm' -o -name '*.html' \
    -o -name '*.json' -o -name '*.svg' -o -name '*.map' \) -print0 | xargs -0 -r gzip -6 -k -n -f
  echo "${STAMP_TEXT}" >.ohif-version
)
rm -rf "${DEST}"
mv "${NEW}" "${DEST}"
echo "viewer: OHIF ${OHIF_VERSION} ready in ${DEST} ($(du -sh "${DEST}" | cut -f1))"
