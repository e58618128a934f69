#!/usr/bin/env bash
# End-to-end speed and memory of `hubspot_sync --release` against the HubSpot
# fake running in a separate process (no latency, no rate limit), so the
# figures are the extractor's own: records/s, CPU-µs per record, peak RSS.
#
#   bash scripts/bench-e2e.sh [RECORDS...]    (default: 100000 1000000)
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=("$@"); [ ${#sizes[@]} -gt 0 ] || sizes=(100000 1000000)
cargo build --release --all-features --example hubspot_sync --example hubspot_fake >/dev/null
printf '%10s %12s %12s %14s %12s\n' records wall_s records/s cpu_us/record peak_rss_MiB
for n in "${sizes[@]}"; do
  out=$(mktemp -d)
  coproc FAKE { exec target/release/examples/hubspot_fake --contacts "$n"; }
  read -r line <&"${FAKE[0]}"
  env_vars=($line)
  stats=$(mktemp)
  env "${env_vars[@]}" /usr/bin/time -f '%e %U %S %M' -o "$stats" \
    target/release/examples/hubspot_sync --out "$out" --streams contacts --quiet --rate-limit off >/dev/null
  kill "$FAKE_PID"; wait "$FAKE_PID" 2>/dev/null || true
  got=$(wc -l < "$out"/*/contacts.jsonl)
  [ "$got" -eq "$n" ] || { echo "expected $n records, got $got" >&2; exit 1; }
  read -r wall user sys rss_kb < "$stats"
  python3 -c "
n=$n; wall=$wall; cpu=$user+$sys; rss=$rss_kb/1024
print(f'{n:>10} {wall:>12.2f} {n/wall:>12.0f} {cpu*1e6/n:>14.2f} {rss:>12.1f}')"
  rm -rf "$out" "$stats"
done
