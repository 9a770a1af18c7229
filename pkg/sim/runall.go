package sim

import (
	"context"
	"errors"
	"runtime"
	"sync"
)

// runAll runs do for 0..n-1, parallel at a time, and returns the results in
// that order. The first failure cancels the context the others run under
// and is the one returned. Experiments build their own engines, so they
// share nothing but their inputs, which they only read.
func runAll[T any](ctx context.Context, n, parallel int, do func(ctx context.Context, i int) (T, error)) ([]T, error) {
	parallel = max(parallel, 1)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	out := make([]T, n)
	errs := make([]error, n)
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			v, err := do(ctx, i)
			if err != nil {
				errs[i] = err
				cancel()
				return
			}
			out[i] = v
		}()
	}
	wg.Wait()
	// Report the failure, not the cancellations it caused.
	for _, err := range errs {
		if err != nil && !errors.Is(err, context.Canceled) {
			return nil, err
		}
	}
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// cpusEach is how many goroutines each of parallel experiments running at
// once gives its Filter and Score, so that together they use the CPUs once.
func cpusEach(parallel int) int {
	return max(1, runtime.GOMAXPROCS(0)/max(parallel, 1))
}
