#!/bin/bash
# Compares every committed stage of run store A with the same stage of run store B: a table as
# its rows at that iteration (sorted CSV lines from `mstar sql`), a checkpoint file by file.
# Prints `same|DIFF table|files iteration=N/STAGE.json` per stage; exits 1 on any difference.
# usage: benches/compare_stores.sh STORE_A STORE_B [MSTAR_BINARY]   (local stores only)
set -uo pipefail
A=$1; B=$2; MSTAR=${3:-target/debug/mstar}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
ck() { (cd "$1/checkpoints/$2/iteration=$3" 2>/dev/null && for d in *; do (cd "$d" && find . -type f | sort | xargs md5sum); done) | md5sum; }
status=0
for f in $(cd "$A/_manifests" && ls -d iteration=*/*.json); do
  it=${f%%/*}; it=${it#iteration=}; st=$(basename "$f" .json)
  [ -f "$B/_manifests/$f" ] || { echo "DIFF missing $f"; status=1; continue; }
  q="SELECT * FROM \"$st\" WHERE iteration = $it"
  "$MSTAR" sql "$A" "$q" --format csv >"$tmp/a" 2>&1
  if grep -q "not found" "$tmp/a"; then
    a=$(ck "$A" "$st" "$it"); b=$(ck "$B" "$st" "$it"); kind=files
  else
    "$MSTAR" sql "$B" "$q" --format csv >"$tmp/b" 2>&1
    a=$(sort "$tmp/a" | md5sum); b=$(sort "$tmp/b" | md5sum); kind=table
  fi
  if [ "$a" = "$b" ]; then echo "same $kind $f"; else echo "DIFF $kind $f"; status=1; fi
done
exit $status
