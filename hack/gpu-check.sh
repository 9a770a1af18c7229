#!/usr/bin/env bash
# Builds penny-agent and prints what it sees on this machine's real GPUs:
# one `--once` report from the real NVML. Then checks it against nvidia-smi
# (same GPUs, same MIG devices) and exits non-zero when they disagree or the
# report is not one the scheduler would accept.
#
#   hack/gpu-check.sh          print and check
#   hack/gpu-check.sh --save   also write benchmarks/results/agent-gpu-check.json
#                              (the report, the command, the machine)
#
# Needs: Go, gcc (go-nvml uses cgo), the NVIDIA driver (libnvidia-ml.so.1),
# nvidia-smi, python3.
set -euo pipefail
cd "$(dirname "$0")/.."

save=false
[[ "${1:-}" == "--save" ]] && save=true

export CGO_ENABLED=1
export CGO_CFLAGS="${CGO_CFLAGS:--O2 -g -Wno-deprecated-declarations}"
mkdir -p bin
go build -o bin/penny-agent ./cmd/penny-agent

cmd=(bin/penny-agent --once --nvml=auto --output json --node-name "$(hostname)" --pod-resources-socket "")
echo "+ ${cmd[*]}" >&2
set +e
report=$("${cmd[@]}")
rc=$?
set -e
echo "$report"
if [[ $rc -ne 0 ]]; then
  echo "gpu-check: penny-agent --once exited $rc (see above: the report does not validate)" >&2
  exit "$rc"
fi

if ! command -v nvidia-smi >/dev/null; then
  echo "gpu-check: nvidia-smi not found; cannot cross-check the report" >&2
  exit 1
fi
smi_gpus=$(nvidia-smi --query-gpu=index,uuid,name,memory.total,driver_version --format=csv,noheader)
smi_list=$(nvidia-smi -L)
echo "--- nvidia-smi" >&2
echo "$smi_list" >&2

REPORT="$report" SMI_GPUS="$smi_gpus" SMI_LIST="$smi_list" SAVE="$save" CMD="${cmd[*]}" python3 - <<'PY'
import json, os, re, subprocess, sys, datetime

r = json.loads(os.environ["REPORT"])
problems = []
if r["nvml"]["state"] != "STATE_OK":
    problems.append("NVML state %s: %s" % (r["nvml"]["state"], r["nvml"].get("message", "")))
smi = [l.split(", ") for l in os.environ["SMI_GPUS"].strip().splitlines()]
smi_uuids = {row[1].strip() for row in smi}
agent_uuids = {g["uuid"] for g in r.get("gpus", [])}
if smi_uuids != agent_uuids:
    problems.append("GPU UUIDs differ: nvidia-smi %s, agent %s" % (sorted(smi_uuids), sorted(agent_uuids)))
smi_mig = set(re.findall(r"UUID: (MIG-[^)\s]+)", os.environ["SMI_LIST"]))
agent_mig = {m["uuid"] for g in r.get("gpus", []) for m in g.get("mig_instances", [])}
if smi_mig != agent_mig:
    problems.append("MIG devices differ: nvidia-smi %s, agent %s" % (sorted(smi_mig), sorted(agent_mig)))
if smi and r.get("driver_version") != smi[0][4].strip():
    problems.append("driver version: nvidia-smi %s, agent %s" % (smi[0][4], r.get("driver_version")))

summary = ["%s %s: MIG %s, %d MIG devices, healthy=%s" % (g["uuid"], g["name"], g["mig_mode"], len(g.get("mig_instances", [])), g["health"]["healthy"]) for g in r.get("gpus", [])]
print("--- gpu-check", file=sys.stderr)
for s in summary:
    print(s, file=sys.stderr)

if os.environ["SAVE"] == "true":
    def sh(*a):
        try:
            return subprocess.run(a, capture_output=True, text=True, check=True).stdout.strip()
        except Exception as e:
            return "unavailable: %s" % e
    out = {
        "command": os.environ["CMD"],
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "machine": {
            "nvidia_smi_L": os.environ["SMI_LIST"].strip().splitlines(),
            "gpus": os.environ["SMI_GPUS"].strip().splitlines(),
            "nproc": sh("nproc"),
            "kernel": sh("uname", "-r"),
            "go": sh("go", "version"),
        },
        "cross_check": {"agrees_with_nvidia_smi": not problems, "problems": problems},
        "report": r,
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
print("gpu-check: the agent's report agrees with nvidia-smi", file=sys.stderr)
PY
