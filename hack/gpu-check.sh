#!/usr/bin/env bash
# Prints what penny-agent sees on this machine's real GPUs and checks it:
#   1. one `--once` report from the real NVML, cross-checked against nvidia-smi
#      (same GPUs, MIG devices, driver, memory total and in use) and the
#      agent's own validation;
#   2. the agent as it runs in the DaemonSet (no scheduler to report to) for a
#      few collections: /readyz must say NVML is OK and /metrics must count the
#      GPUs nvidia-smi lists;
#   3. with --load: a second report while PyTorch multiplies matrices on GPU 0,
#      which must show that GPU busy and its memory in use (skipped for a GPU in
#      MIG mode, whose whole-GPU counters NVML does not give).
# Exits non-zero on any disagreement.
#
#   hack/gpu-check.sh [--save] [--load]
#     --save   also write benchmarks/results/agent-gpu-check.json
#              (the reports, the command, the machine, the checks)
#     --load   also run check 3 (needs python3 with torch and CUDA)
#
# Environment:
#   PENNY_AGENT=path        use this penny-agent binary instead of building one
#                           (for a GPU machine without Go; build it elsewhere
#                           with CGO_ENABLED=1 for the same architecture)
#   PENNY_AGENT_BUILD=text  how that binary was built, recorded with --save
#
# Needs: Go and gcc unless PENNY_AGENT is set (go-nvml uses cgo), the NVIDIA
# driver (libnvidia-ml.so.1), nvidia-smi, python3.
set -euo pipefail
cd "$(dirname "$0")/.."

save=false
load=false
for arg in "$@"; do
  case "$arg" in
    --save) save=true ;;
    --load) load=true ;;
    *) echo "gpu-check: unknown argument $arg (want --save and/or --load)" >&2; exit 2 ;;
  esac
done

agent="${PENNY_AGENT:-}"
build="${PENNY_AGENT_BUILD:-}"
if [[ -z "$agent" ]]; then
  export CGO_ENABLED=1
  export CGO_CFLAGS="${CGO_CFLAGS:--O2 -g -Wno-deprecated-declarations}"
  mkdir -p bin
  go build -o bin/penny-agent ./cmd/penny-agent
  agent=bin/penny-agent
  build="$(go version) at $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
fi
[[ -x "$agent" ]] || { echo "gpu-check: $agent is not an executable penny-agent (PENNY_AGENT)" >&2; exit 2; }
command -v nvidia-smi >/dev/null || { echo "gpu-check: nvidia-smi not found; cannot cross-check the report" >&2; exit 1; }

once=("$agent" --once --nvml=auto --output json --node-name "$(hostname)" --pod-resources-socket "")
echo "+ ${once[*]}" >&2
set +e
report=$("${once[@]}")
rc=$?
set -e
echo "$report"
if [[ $rc -ne 0 ]]; then
  echo "gpu-check: penny-agent --once exited $rc (see above: the report does not validate)" >&2
  exit "$rc"
fi

# The DaemonSet's path: collect on an interval, XID events, /readyz and /metrics.
port=19464
daemon=("$agent" --nvml=auto --node-name "$(hostname)" --pod-resources-socket "" --cloud none
  --collect-interval 1s --http-bind-address "127.0.0.1:$port" --log-format text)
echo "+ ${daemon[*]}   (for 6 s)" >&2
daemon_log=$(mktemp)
"${daemon[@]}" >"$daemon_log" 2>&1 &
daemon_pid=$!
sleep 6
readyz=$(python3 -c "import urllib.request as u; print(u.urlopen('http://127.0.0.1:$port/readyz', timeout=5).read().decode())" 2>&1 || true)
metrics=$(python3 -c "import urllib.request as u; print(u.urlopen('http://127.0.0.1:$port/metrics', timeout=5).read().decode())" 2>&1 || true)
kill "$daemon_pid" 2>/dev/null || true
wait "$daemon_pid" 2>/dev/null || true
daemon_out=$(cat "$daemon_log")
rm -f "$daemon_log"

loaded=""
if $load; then
  ready=$(mktemp -u)
  # CUDA numbers devices fastest-first unless told otherwise; NVML by PCI bus.
  CUDA_DEVICE_ORDER=PCI_BUS_ID READY="$ready" python3 - >&2 <<'PY' &
import os, time, torch
a = torch.randn(8192, 8192, device="cuda:0", dtype=torch.bfloat16)
(a @ a).sum().item()
open(os.environ["READY"], "w").close()
end = time.time() + 30
while time.time() < end:
    for _ in range(20):
        a @ a
    torch.cuda.synchronize()
PY
  load_pid=$!
  for _ in $(seq 120); do [[ -e "$ready" ]] && break; kill -0 "$load_pid" 2>/dev/null || break; sleep 0.5; done
  [[ -e "$ready" ]] || { echo "gpu-check: the PyTorch load did not start (see above)" >&2; kill "$load_pid" 2>/dev/null; exit 1; }
  sleep 2 # NVML's utilisation is a share of its last sample period
  echo "+ ${once[*]}   (under load)" >&2
  loaded=$("${once[@]}")
  kill "$load_pid" 2>/dev/null || true
  wait "$load_pid" 2>/dev/null || true
  rm -f "$ready"
fi

smi_gpus=$(nvidia-smi --query-gpu=index,uuid,name,memory.total,driver_version,memory.used --format=csv,noheader)
smi_list=$(nvidia-smi -L)
echo "--- nvidia-smi" >&2
echo "$smi_list" >&2

REPORT="$report" LOADED="$loaded" SMI_GPUS="$smi_gpus" SMI_LIST="$smi_list" SAVE="$save" \
  CMD="${once[*]}" DAEMON_CMD="${daemon[*]}" READYZ="$readyz" METRICS="$metrics" DAEMON_OUT="$daemon_out" \
  BUILD="$build" ARGS="$*" python3 - <<'PY'
import json, os, re, subprocess, sys, datetime

env = os.environ
r = json.loads(env["REPORT"])
problems = []
if r["nvml"]["state"] != "STATE_OK":
    problems.append("NVML state %s: %s" % (r["nvml"]["state"], r["nvml"].get("message", "")))
smi = [l.split(", ") for l in env["SMI_GPUS"].strip().splitlines()]
smi_uuids = {row[1].strip() for row in smi}
agent_uuids = {g["uuid"] for g in r.get("gpus", [])}
if smi_uuids != agent_uuids:
    problems.append("GPU UUIDs differ: nvidia-smi %s, agent %s" % (sorted(smi_uuids), sorted(agent_uuids)))
smi_mig = set(re.findall(r"UUID: (MIG-[^)\s]+)", env["SMI_LIST"]))
agent_mig = {m["uuid"] for g in r.get("gpus", []) for m in g.get("mig_instances", [])}
if smi_mig != agent_mig:
    problems.append("MIG devices differ: nvidia-smi %s, agent %s" % (sorted(smi_mig), sorted(agent_mig)))
if smi and r.get("driver_version") != smi[0][4].strip():
    problems.append("driver version: nvidia-smi %s, agent %s" % (smi[0][4], r.get("driver_version")))
for row in smi:
    g = next((g for g in r.get("gpus", []) if g["uuid"] == row[1].strip()), None)
    mib = int(row[3].split()[0])
    if g and abs(int(g["memory_total_bytes"]) // 2**20 - mib) > 1:
        problems.append("GPU %s memory: nvidia-smi %d MiB, agent %d MiB" % (g["uuid"], mib, int(g["memory_total_bytes"]) // 2**20))
    # Read a moment apart, so allow for a little change on a machine at work.
    used = int(row[5].split()[0])
    if g and "memory_used_bytes" in g and abs(int(g["memory_used_bytes"]) // 2**20 - used) > 64:
        problems.append("GPU %s memory used: nvidia-smi %d MiB, agent %d MiB" % (g["uuid"], used, int(g["memory_used_bytes"]) // 2**20))

# The daemon.
daemon = {"command": env["DAEMON_CMD"], "readyz": env["READYZ"].strip()}
if not env["READYZ"].startswith("ok") or "nvml OK" not in env["READYZ"]:
    problems.append("daemon /readyz: %r (want ok with nvml OK)" % env["READYZ"].strip())
want = {
    "penny_agent_gpus": float(len(smi)),
    'penny_agent_collector_state{collector="nvml",state="ok"}': 1.0,
    "penny_agent_gpus_unhealthy": None,
    "penny_agent_collect_duration_seconds_count": None,
    "penny_agent_collect_duration_seconds_sum": None,
}
seen = {}
for line in env["METRICS"].splitlines():
    parts = line.split()
    if len(parts) == 2 and parts[0] in want:
        seen[parts[0]] = float(parts[1])
for name, value in want.items():
    if name not in seen:
        problems.append("daemon /metrics has no %s" % name)
    elif value is not None and seen[name] != value:
        problems.append("daemon /metrics %s = %g, want %g" % (name, seen[name], value))
daemon["metrics"] = seen
if seen.get("penny_agent_collect_duration_seconds_count", 0) < 3:
    problems.append("daemon collected %d times in 6 s at a 1 s interval" % seen.get("penny_agent_collect_duration_seconds_count", 0))
daemon["log"] = env["DAEMON_OUT"].splitlines()

# Under load.
load = None
if env["LOADED"]:
    l = json.loads(env["LOADED"])
    g0 = next((g for g in l.get("gpus", []) if g["index"] == 0), None)
    i0 = next((g for g in r.get("gpus", []) if g["index"] == 0), None)
    if g0 is None:
        problems.append("report under load has no GPU 0")
    elif g0["mig_mode"] == "MIG_MODE_ENABLED":
        load = {"checked": False, "why": "GPU 0 is in MIG mode: NVML gives no whole-GPU utilisation"}
    else:
        load = {
            "checked": True,
            "gpu": g0["uuid"],
            "utilization_percent": {"idle": i0["utilization_percent"], "loaded": g0["utilization_percent"]},
            "memory_used_bytes": {"idle": int(i0["memory_used_bytes"]), "loaded": int(g0["memory_used_bytes"])},
            "throttle_reasons": {"idle": i0["health"]["throttle_reasons"], "loaded": g0["health"]["throttle_reasons"]},
            "temperature_celsius": {"idle": i0["health"]["temperature_celsius"], "loaded": g0["health"]["temperature_celsius"]},
            "report": l,
        }
        if g0["utilization_percent"] < 50:
            problems.append("GPU 0 under a matrix-multiply load reports %d%% utilisation (want at least 50)" % g0["utilization_percent"])
        if int(g0["memory_used_bytes"]) < int(i0["memory_used_bytes"]) + 2**28:
            problems.append("GPU 0 memory used under load %s bytes, idle %s (want at least 256 MiB more)" % (g0["memory_used_bytes"], i0["memory_used_bytes"]))

print("--- gpu-check", file=sys.stderr)
for g in r.get("gpus", []):
    print("%s %s: MIG %s, %d MIG devices, healthy=%s" % (g["uuid"], g["name"], g["mig_mode"], len(g.get("mig_instances", [])), g["health"]["healthy"]), file=sys.stderr)
print("daemon: /readyz %r, %d collections" % (daemon["readyz"], seen.get("penny_agent_collect_duration_seconds_count", 0)), file=sys.stderr)
if load and load["checked"]:
    print("under load: GPU 0 utilisation %d%% -> %d%%, memory used %d -> %d MiB" % (
        load["utilization_percent"]["idle"], load["utilization_percent"]["loaded"],
        load["memory_used_bytes"]["idle"] // 2**20, load["memory_used_bytes"]["loaded"] // 2**20), file=sys.stderr)

if env["SAVE"] == "true":
    def sh(*a):
        try:
            return subprocess.run(a, capture_output=True, text=True, check=True).stdout.strip()
        except Exception as e:
            return "unavailable: %s" % e
    out = {
        "command": ("hack/gpu-check.sh " + env["ARGS"]).strip(),
        "once_command": env["CMD"],
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "agent_build": env["BUILD"] or "unknown (set PENNY_AGENT_BUILD)",
        "machine": {
            "nvidia_smi_L": env["SMI_LIST"].strip().splitlines(),
            "gpus": env["SMI_GPUS"].strip().splitlines(),
            "nproc": sh("nproc"),
            "kernel": sh("uname", "-r"),
        },
        "checks": {"agree": not problems, "problems": problems},
        "report": r,
        "daemon": daemon,
        "under_load": load,
    }
    os.makedirs("benchmarks/results", exist_ok=True)
    with open("benchmarks/results/agent-gpu-check.json", "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")
    print("wrote benchmarks/results/agent-gpu-check.json", file=sys.stderr)

if problems:
    for p in problems:
        print("gpu-check: " + p, file=sys.stderr)
    sys.exit(1)
print("gpu-check: the agent's reports agree with nvidia-smi and the load", file=sys.stderr)
PY
