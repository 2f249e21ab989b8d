#!/bin/sh
# Reproduces the light client's vendored libraries from package-lock.json.
#
#   relay/webclient/vendor/update.sh           rewrite the vendored files
#   relay/webclient/vendor/update.sh --check   only check that they are current
#
# npm ci installs exactly the locked versions (checking each tarball's
# integrity) into a temporary directory; collect.mjs copies the ES modules
# the page imports (and what they import, transitively), each package's
# LICENSE and tweetnacl's UMD file into this directory, keeping the
# packages' own layout, and writes MANIFEST (sha256 of every vendored file).
# The page loads them as they are: no bundler, no build step at serve time.
# TestVendorManifest checks the files against MANIFEST.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp "$here/package.json" "$here/package-lock.json" "$tmp/"
(cd "$tmp" && npm ci --ignore-scripts --no-audit --no-fund >/dev/null)
if [ "${1:-}" = "--check" ]; then
	mkdir "$tmp/out"
	node "$here/collect.mjs" "$tmp/node_modules" "$tmp/out"
	for d in @noble @scure tweetnacl MANIFEST; do
		if ! diff -r "$tmp/out/$d" "$here/$d" >/dev/null; then
			echo "relay/webclient/vendor is not what package-lock.json gives ($d differs): run relay/webclient/vendor/update.sh" >&2
			exit 1
		fi
	done
	echo "relay/webclient/vendor is current"
	exit 0
fi
for d in @noble @scure tweetnacl; do rm -rf "${here:?}/$d"; done
node "$here/collect.mjs" "$tmp/node_modules" "$here"
echo "vendored into $here:"
cat "$here/MANIFEST"
