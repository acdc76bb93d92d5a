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

# Tracked and new (not ignored) files; a tracked file deleted or moved in the
# working tree is skipped.
gofiles=()
while IFS= read -r f; do
	[ -f "$f" ] && gofiles+=("$f")
done < <(git ls-files -co --exclude-standard '*.go' 2>/dev/null || find . -name '*.go')
unformatted=$(gofmt -l "${gofiles[@]}")
if [ -n "$unformatted" ]; then
	echo "gofmt would change:" >&2
	echo "$unformatted" >&2
	exit 1
fi

# The root's TestOtherModulesNeedTestSh fails a plain `go test ./...`, which
# does not reach the other modules, unless this is set.
export OAUTH2UPSTREAM_TEST_SH=1
for mod in "${modules[@]}"; do
	echo "== $mod"
	(cd "$mod" && go vet ./... && go test -race -count=1 -timeout 20m "$@" ./...)
done
