#!/usr/bin/env bash
# Runs fuzz targets in turn for SECONDS each (default 60): the ones named
# after SECONDS, or every target.
# Needs cargo-fuzz (`cargo install cargo-fuzz`); RUSTC_BOOTSTRAP=1 lets it use
# the stable toolchain's nightly-only sanitizer flags. New inputs go to
# corpus-work/<target> (not committed); the committed seeds in
# corpus/<target> are read, never written.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-60}"
shift || true
export RUSTC_BOOTSTRAP=1
targets=("$@")
[ ${#targets[@]} -eq 0 ] && mapfile -t targets < <(cargo fuzz list)
for target in "${targets[@]}"; do
  echo "== $target for ${seconds}s"
  mkdir -p "corpus-work/$target" "corpus/$target"
  dict=()
  [ -f "dicts/$target.dict" ] && dict=("-dict=dicts/$target.dict")
  cargo fuzz run "$target" "corpus-work/$target" "corpus/$target" -- \
    -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=4096 "${dict[@]}"
done
