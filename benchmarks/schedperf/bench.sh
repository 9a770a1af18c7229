#!/usr/bin/env bash
# Runs the scheduler_perf comparisons RUNS times and leaves one directory of
# data items per run under OUT (run-1, run-2, ...), for report/ to pair.
#
# Each side of a comparison runs in its own process, back to back with the
# other side, and the order alternates between runs: one long process would
# run the later workloads on a heap and goroutines the earlier ones left
# behind, and a fixed order would give one side the machine's quieter moment
# every time.
#
#   benchmarks/schedperf/bench.sh OUT RUNS LABEL
set -euo pipefail
out=${1:?output directory}
runs=${2:-3}
label=${3:-bench}
here=$(cd "$(dirname "$0")" && pwd)
comparisons=("GPUBasic default" "Gangs intree" "MixedChurn default")

mkdir -p "$out"
go test -c -o "$out/schedperf.test" "$here"
cd "$here" # the workloads name their templates relative to this directory
for run in $(seq 1 "$runs"); do
	dir="$out/run-$run"
	mkdir -p "$dir"
	for c in "${comparisons[@]}"; do
		read -r name baseline <<<"$c"
		sides=(penny "$baseline")
		if ((run % 2 == 1)); then sides=("$baseline" penny); fi
		for side in "${sides[@]}"; do
			echo "run $run: ${name}_$side"
			# The machine's load before this side: the report shows how busy
			# the machine was (others' builds share it).
			cut -d' ' -f1 /proc/loadavg >"$dir/${name}_$side.load"
			ARTIFACTS="$dir" KUBE_CACHE_MUTATION_DETECTOR=false "$out/schedperf.test" \
				-test.run '^$' -test.bench "^BenchmarkPerfScheduling\$/^${name}_${side}\$/" -test.benchtime 1x \
				-test.timeout 30m -perf-scheduling-label-filter "$label" -data-items-dir "$dir" \
				>"$dir/${name}_$side.txt" 2>&1 || { echo "failed: see $dir/${name}_$side.txt" >&2; exit 1; }
			grep -h "SchedulingThroughput/Average" "$dir/${name}_$side.txt" | sed -E 's/.*[[:space:]]([0-9.]+) SchedulingThroughput\/Average.*/  \1 pods\/s/' || true
		done
	done
done
