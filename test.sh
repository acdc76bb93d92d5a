#!/usr/bin/env bash
# Runs every check and test of the repository: formatting, vet, and the
# race-enabled tests of the module and of its test-only modules
# (integration_test, k8s, bench), which keep their heavy dependencies out of
# the module that users build into Caddy.
set -euo pipefail
cd "$(dirname "$0")"

modules=(.)
for dir in integration_test k8s bench; do
	[ -f "$dir/go.mod" ] && modules+=("$dir")
done

unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then
	echo "gofmt would change:" >&2
	echo "$unformatted" >&2
	exit 1
fi

for mod in "${modules[@]}"; do
	echo "== $mod"
	(cd "$mod" && go vet ./... && go test -race -count=1 -timeout 20m "$@" ./...)
done
