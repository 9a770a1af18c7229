package plugins

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"k8s.io/component-base/configz"
	"k8s.io/kubernetes/cmd/kube-scheduler/app"
	"k8s.io/kubernetes/cmd/kube-scheduler/app/options"
	"sigs.k8s.io/yaml"
)

// SchedulerOptions configure an in-process penny-scheduler.
type SchedulerOptions struct {
	// Kubeconfig is the cluster to schedule for.
	Kubeconfig string
	// Config is a KubeSchedulerConfiguration in YAML, normally
	// deploy.SchedulerConfig. Its clientConnection.kubeconfig is replaced by
	// Kubeconfig.
	Config []byte
	// Deps are handed to the plugins.
	Deps Deps
}

// Scheduler is a penny-scheduler running in this process: the same
// kube-scheduler code path and plugins as the penny-scheduler binary.
type Scheduler struct {
	cancel  context.CancelFunc
	done    chan struct{}
	tmpDir  string
	stopped sync.Once
}

// configzName is kube-scheduler's configz key; only one scheduler per
// process may hold it at a time.
const configzName = "componentconfig"

// StartScheduler runs penny-scheduler in-process, for `penny up` and tests.
// Leader election is always off: upstream exits the process when a leader
// stops leading, which an embedding program cannot allow, and a single
// in-process replica has no one to elect against.
func StartScheduler(ctx context.Context, so SchedulerOptions) (*Scheduler, error) {
	tmp, err := os.MkdirTemp("", "penny-scheduler-")
	if err != nil {
		return nil, err
	}
	s := &Scheduler{tmpDir: tmp, done: make(chan struct{})}
	configFile, err := writeEmbeddedConfig(so.Config, so.Kubeconfig, tmp)
	if err != nil {
		os.RemoveAll(tmp)
		return nil, err
	}
	o := options.NewOptions()
	o.ConfigFile = configFile
	// No serving endpoints in-process: the embedding program owns the ports.
	o.SecureServing.BindPort = 0

	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.cancel = cancel
	cc, sched, err := app.Setup(runCtx, o, Options(so.Deps)...)
	if err != nil {
		cancel()
		os.RemoveAll(tmp)
		return nil, fmt.Errorf("penny-scheduler: %w", err)
	}
	go func() {
		defer close(s.done)
		// Run returns when runCtx ends; its error then only says so.
		_ = app.Run(runCtx, cc, sched)
	}()
	return s, nil
}

// Stop stops the scheduler and waits for it to return.
func (s *Scheduler) Stop() {
	s.stopped.Do(func() {
		s.cancel()
		<-s.done
		configz.Delete(configzName)
		os.RemoveAll(s.tmpDir)
	})
}

// writeEmbeddedConfig copies a scheduler configuration with the kubeconfig
// and leader election set for running in-process.
func writeEmbeddedConfig(data []byte, kubeconfig, dir string) (string, error) {
	var cfg map[string]any
	if err := yaml.Unmarshal(data, &cfg); err != nil {
		return "", fmt.Errorf("scheduler config: %w", err)
	}
	if cfg == nil {
		return "", fmt.Errorf("scheduler config is empty: expected a KubeSchedulerConfiguration")
	}
	setField(cfg, "clientConnection", "kubeconfig", kubeconfig)
	setField(cfg, "leaderElection", "leaderElect", false)
	out, err := yaml.Marshal(cfg)
	if err != nil {
		return "", err
	}
	file := filepath.Join(dir, "config.yaml")
	return file, os.WriteFile(file, out, 0o600)
}

func setField(cfg map[string]any, section, key string, value any) {
	m, _ := cfg[section].(map[string]any)
	if m == nil {
		m = map[string]any{}
	}
	m[key] = value
	cfg[section] = m
}
