#!/bin/sh
# Every function the library exports has a section 3 page (its own or a
# .so link to the page that documents it), every page formats without
# warnings, and the header and the shared library export the same names.
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
fail=0
declared=$(sed -nE 's/^PGFAN_EXTERN .*[ *](pgfan_[a-z_]+)\(.*/\1/p' "$top/include/pgfan.h" | sort -u)
[ -n "$declared" ] || { echo "check-man-pages: no declarations found" >&2; exit 1; }
if [ -f .libs/libpgfan.so ]; then
    exported=$(nm -D --defined-only .libs/libpgfan.so | awk '$2 ~ /T/ {print $3}' | sort -u)
    if [ "$exported" != "$declared" ]; then
        echo "header and library disagree:"
        printf '%s\n' "$declared" >decl.tmp
        printf '%s\n' "$exported" | diff decl.tmp - || true
        rm -f decl.tmp
        fail=1
    fi
fi
n=0
for fn in $declared; do
    page="$top/doc/man3/$fn.3"
    if [ ! -f "$page" ]; then
        echo "no man page for $fn"
        fail=1
        continue
    fi
    target=$(sed -nE 's/^\.so man3\/(.*)$/\1/p' "$page")
    [ -n "$target" ] && page="$top/doc/man3/$target"
    if [ ! -f "$page" ] || ! sed -n '/^\.SH NAME/,/^\.SH/p' "$page" | grep -qw "$fn"; then
        echo "the page for $fn does not name it in NAME"
        fail=1
    fi
    n=$((n + 1))
done
if command -v groff >/dev/null 2>&1; then
    for page in "$top"/doc/man3/*.3 "$top"/doc/pgfan.1; do
        grep -q '^\.so ' "$page" && continue
        out=$(groff -man -ww -z "$page" 2>&1) || true
        [ -z "$out" ] || { echo "$page: $out"; fail=1; }
    done
fi
[ $fail = 0 ] || exit 1
echo "man pages: all $n exported functions documented"
