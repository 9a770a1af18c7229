// Command trainingtrace writes a synthetic training trace in the
// Philly-derived job format (timestamp,duration,num_gpus,gpu_time,cluster),
// shaped after what the Philly study (Jeon et al., ATC'19) reports of a
// multi-tenant training cluster: most jobs ask for one GPU, a tail asks for
// 2-32; run times are heavy-tailed, from minutes to days, and larger jobs run
// longer; jobs arrive in a daily rhythm. It stands in for the training
// traces Penny's Spot scoring is checked on, which the repository does not
// hold. Deterministic for a seed.
//
//	go run ./benchmarks/spot/trainingtrace --jobs 600 --days 14 --seed 1 --out /tmp/training.csv
package main

import (
	"encoding/csv"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"sort"
	"strconv"
)

func main() {
	jobs := flag.Int("jobs", 600, "number of jobs")
	days := flag.Float64("days", 14, "span of submissions, in days")
	seed := flag.Uint64("seed", 1, "random seed")
	out := flag.String("out", "", "output CSV")
	flag.Parse()
	if err := run(*jobs, *days, *seed, *out); err != nil {
		fmt.Fprintln(os.Stderr, "trainingtrace:", err)
		os.Exit(1)
	}
}

// gpuCounts and their weights: the Philly study's mix of job sizes
// (about 70% single-GPU, a few percent over 8).
var (
	gpuCounts  = []int{1, 2, 4, 8, 16, 32}
	gpuWeights = []float64{0.70, 0.07, 0.10, 0.09, 0.03, 0.01}
)

func run(jobs int, days float64, seed uint64, out string) error {
	if jobs <= 0 || days <= 0 || out == "" {
		return fmt.Errorf("--jobs and --days must be positive and --out set")
	}
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	type job struct {
		ts, dur float64
		gpus    int
		vc      int
	}
	span := days * 86400
	var js []job
	for len(js) < jobs {
		// Daily rhythm: submissions twice as likely at the day's peak as at
		// its trough (thinning of a uniform draw).
		ts := rng.Float64() * span
		if rng.Float64() > 0.5+0.5*math.Sin(2*math.Pi*ts/86400) {
			continue
		}
		g := pick(rng, gpuWeights)
		// Log-normal run time, median 40 minutes for one GPU and growing
		// with the job's size; at least two minutes, at most a week.
		median := 40 * 60 * math.Pow(float64(gpuCounts[g]), 0.4)
		dur := median * math.Exp(1.6*rng.NormFloat64())
		dur = math.Min(math.Max(dur, 120), 7*86400)
		js = append(js, job{ts: ts, dur: math.Round(dur), gpus: gpuCounts[g], vc: rng.IntN(10)})
	}
	sort.Slice(js, func(a, b int) bool { return js[a].ts < js[b].ts })
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	w := csv.NewWriter(f)
	if err := w.Write([]string{"timestamp", "duration", "num_gpus", "gpu_time", "cluster"}); err != nil {
		return err
	}
	for _, j := range js {
		if err := w.Write([]string{
			strconv.FormatFloat(math.Round(j.ts), 'f', 0, 64),
			strconv.FormatFloat(j.dur, 'f', 0, 64),
			strconv.Itoa(j.gpus),
			strconv.FormatFloat(j.dur*float64(j.gpus), 'f', 0, 64),
			fmt.Sprintf("vc%d", j.vc),
		}); err != nil {
			return err
		}
	}
	w.Flush()
	if err := w.Error(); err != nil {
		return err
	}
	return f.Close()
}

func pick(rng *rand.Rand, weights []float64) int {
	x := rng.Float64()
	for i, w := range weights {
		if x < w {
			return i
		}
		x -= w
	}
	return len(weights) - 1
}
