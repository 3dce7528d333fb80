#!/bin/sh
# Model-checks the ring protocol (tests/ring.pml) with spin: every
# interleaving of one writer and two readers, for overwritten or unpublished
# reads (assertions) and lost wake-ups (invalid end states).  Two
# configurations: head stored per slot, and head stored per two slots with
# wake-ups every three.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
command -v spin >/dev/null 2>&1 || {
    echo "check-ring-model: spin is not installed (Debian package spin; ./dev test installs it)" >&2
    exit 1
}
work=$(mktemp -d "${TMPDIR:-/tmp}/pgfan-spin.XXXXXX")
trap 'rm -rf "$work"' EXIT
cp "$here/ring.pml" "$work/"
cd "$work"
for config in "PUBLISH=1 BATCH=2" "PUBLISH=2 BATCH=3"; do
    # shellcheck disable=SC2086
    spin $(printf -- '-D%s ' $config) -a ring.pml >/dev/null
    ${CC:-cc} -O2 -w -DSAFETY -DCOLLAPSE -DMEMLIM=4096 -o pan pan.c
    ./pan -m200000 >pan.out 2>&1 || true
    grep -v '^Depth=' pan.out
    # A complete search with no errors, or the model is not proven.
    grep -q 'errors: 0' pan.out && ! grep -q 'Search not completed' pan.out || {
        echo "check-ring-model: FAILED ($config)" >&2
        exit 1
    }
    states=$(sed -nE 's/^ *([0-9]+) states, stored.*/\1/p' pan.out)
    echo "ring model ($config): no violation in $states states"
done
