# Helpers of the benchmark scripts (scripts/bench, scripts/bench-proxy),
# sourced by them after they set:
#   root         the repository
#   work         the run's directory (logs, wrk reports, report.txt)
#   threads, connections, duration   wrk's settings
# Processes started with `start` (or added to `pids`) are killed on exit.

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

die() { echo "${0##*/}: $*" >&2; exit 1; }
say() { printf '%s\n' "$*" | tee -a "$work/report.txt"; }

ensure_wrk() {
  command -v wrk >/dev/null && return 0
  echo "${0##*/}: installing wrk from Debian" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
}

# ------------------------------------------------------------ processes
start() { # name command...: runs in the background, stdout → name.out, stderr → name.log
  local name=$1; shift
  "$@" >"$work/$name.out" 2>"$work/$name.log" &
  pids+=($!)
}

stop() { # pid
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

ready_line() { # name prefix: prints the rest of the first stdout line starting with prefix
  local line
  for _ in $(seq 1 100); do
    line=$(sed -n "s/^$2 //p" "$work/$1.out" 2>/dev/null | head -n1)
    [ -n "$line" ] && { echo "$line"; return 0; }
    sleep 0.1
  done
  tail -n 20 "$work/$1.log" >&2 || true
  die "timed out waiting for '$2' from $1"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# ------------------------------------------------------------ the farm
api() { curl -sS --fail-with-body -H "Authorization: Bearer $admin" -H 'content-type: application/json' "$@"; }
field() { python3 -c 'import json, sys; d = json.load(sys.stdin); print(*(d[k] for k in sys.argv[1:]))' "$@"; }

start_provider() { # redirect_uri: sets $issuer
  node tests/oidc/provider.mjs --port 0 --access-ttl 3600 --redirect-uri "$1" >"$work/provider.out" 2>"$work/provider.log" &
  pids+=($!)
  issuer=$(ready_line provider READY)
}

start_farm() { # redirect_uri [toml]: sets $farm, $farm_pid and $admin; toml is appended to farm.toml
  (cd "$work" && "$root/target/release/relogin-farm" init >/dev/null)
  sed -i -e "s|^issuer = .*|issuer = \"$issuer\"|" -e "s|^redirect_uri = .*|redirect_uri = \"$1\"|" "$work/farm.toml"
  [ -z "${2:-}" ] || printf '%s\n' "$2" >>"$work/farm.toml"
  # One client key at full speed is the point here: lift its rate limit
  # (the check itself still runs on every request).
  (cd "$work" && RELOGIN_FARM_ROTATION_CLIENT_RATE=1000000000/s exec "$root/target/release/relogin-farm" serve --listen 127.0.0.1:0) >"$work/farm.out" 2>"$work/farm.log" &
  farm_pid=$!
  pids+=("$farm_pid")
  farm=$(ready_line farm LISTENING)
  admin=$(cat "$work/data/admin.token")
}

add_account() { # label: adds an account, logs it in through the loopback redirect
  local id url state=
  id=$(api -X POST "$farm/api/accounts" -d "{\"provider\":\"demo\",\"label\":\"$1\"}" | field id)
  url=$(api -X POST "$farm/api/accounts/$id/login" | field authorize_url)
  node tests/oidc/browse.mjs "$url" --user "$1" --follow >/dev/null
  for _ in $(seq 1 50); do
    state=$(api "$farm/api/accounts/$id" | field state)
    [ "$state" = healthy ] && return 0
    sleep 0.1
  done
  die "account $1 is $state, expected healthy"
}

create_client() { # name: prints "id key"
  api -X POST "$farm/api/clients" -d "{\"name\":\"$1\"}" | field id key
}

# ------------------------------------------------------------ load
expect_200() { # url [curl args]
  local code
  code=$(curl -sS -o "$work/check.body" -w '%{http_code}' "${@:2}" "$1")
  [ "$code" = 200 ] || die "$1 answered $code, expected 200: $(cat "$work/check.body")"
}

wrk_run() { # name duration url [wrk args]: wrk's report in wrk-name.txt, the 1-minute load average before it in load-name
  cut -d' ' -f1 /proc/loadavg >"$work/load-$1"
  timeout 120 wrk -t"$threads" -c"$connections" -d"$2" --timeout 2s --latency "${@:4}" "$3" >"$work/wrk-$1.txt" \
    || die "wrk failed on $3"
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; } # pid: user + system time so far

measure() { # name server-pid url [wrk args]: the measured run; the server's CPU ticks during it in cpu-name
  local t0
  t0=$(cpu_ticks "$2")
  wrk_run "$1" "$duration" "${@:3}"
  echo $(($(cpu_ticks "$2") - t0)) >"$work/cpu-$1"
}

# Figures of one wrk report: rps, p99 (ms), requests, non2xx, timeouts.
rps() { awk '/^Requests\/sec:/ {print $2}' "$work/wrk-$1.txt"; }
requests() { awk '/ requests in / {print $1}' "$work/wrk-$1.txt"; }
non2xx() { awk '/Non-2xx or 3xx responses:/ {n = $NF} END {print n + 0}' "$work/wrk-$1.txt"; }
timeouts() { awk '/Socket errors:/ {n = $NF} END {print n + 0}' "$work/wrk-$1.txt"; }
pct_ms() { # name percentile (50, 75, 90 or 99): that latency percentile, in ms
  awk -v p="$2%" '$1 == p {
         v = $2 + 0; u = $2; sub(/^[0-9.]+/, "", u)
         f = (u == "us") ? 0.001 : (u == "ms") ? 1 : (u == "s") ? 1000 : (u == "m") ? 60000 : 0
         if (!f) exit 1
         printf "%.3f\n", v * f
       }' "$work/wrk-$1.txt"
}
p99_ms() { pct_ms "$1" 99; }

cpu_us() { # name: the server's CPU time per request, in microseconds
  awk -v t="$(cat "$work/cpu-$1")" -v hz="$(getconf CLK_TCK)" -v n="$(requests "$1")" 'BEGIN {printf "%.1f\n", t / hz * 1e6 / n}'
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f\n", a / b}'; }
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {printf "%.2f\n", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
verdict() { # value op target
  awk -v v="$1" -v t="$3" -v op="$2" 'BEGIN {ok = (op == ">=") ? v >= t : v <= t; print ok ? "PASS" : "FAIL"}'
}

