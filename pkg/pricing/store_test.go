package pricing

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/component-base/metrics/legacyregistry"
	"k8s.io/component-base/metrics/testutil"

	"github.com/pennysched/penny/pkg/metricstest"
)

// exported is the value penny-scheduler's /metrics shows for an unlabelled
// metric.
func exported(t *testing.T, name string) float64 {
	t.Helper()
	RegisterMetrics()
	families, err := legacyregistry.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name || len(f.GetMetric()) != 1 {
			continue
		}
		m := f.GetMetric()[0]
		if g := m.GetGauge(); g != nil {
			return g.GetValue()
		}
		return m.GetCounter().GetValue()
	}
	t.Fatalf("metric %s is not exported", name)
	return 0
}

// A rejected edit counts one error and leaves the last success time alone,
// which a catalog nobody edits shows as well: only a gauge of the last load
// tells an alert that the edit in place is the rejected one.
func TestStoreExportsTheLastLoadsResult(t *testing.T) {
	RegisterMetrics()
	s := NewStore(nil)
	if err := s.Load([]byte(goodYAML), "good.yaml"); err != nil {
		t.Fatal(err)
	}
	if got := exported(t, "penny_price_catalog_last_load_successful"); got != 1 {
		t.Fatalf("after a good load: last_load_successful %v, want 1", got)
	}
	if got := exported(t, "penny_price_catalog_last_success_timestamp_seconds"); got <= 0 {
		t.Fatalf("after a good load: last_success_timestamp_seconds %v", got)
	}
	if err := s.Load([]byte(strings.Replace(goodYAML, "hourly: 0.4", "hourly: -0.4", 1)), "bad.yaml"); err == nil {
		t.Fatal("want error")
	}
	if got := exported(t, "penny_price_catalog_last_load_successful"); got != 0 {
		t.Fatalf("after a rejected edit: last_load_successful %v, want 0", got)
	}
	if spotPrice(s) != 0.4 {
		t.Fatalf("last good catalog not in force: spot price %v", spotPrice(s))
	}
	if err := s.LoadFile(filepath.Join(t.TempDir(), "missing.yaml")); err == nil {
		t.Fatal("want error")
	}
	if got := exported(t, "penny_price_catalog_last_load_successful"); got != 0 {
		t.Fatalf("after an unreadable file: last_load_successful %v, want 0", got)
	}
	if err := s.Load([]byte(goodYAML), "good.yaml"); err != nil {
		t.Fatal(err)
	}
	if got := exported(t, "penny_price_catalog_last_load_successful"); got != 1 {
		t.Fatalf("after the fix: last_load_successful %v, want 1", got)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func spotPrice(s *Store) float64 {
	c := s.Catalog()
	if c == nil {
		return -1
	}
	p, _ := c.Lookup("g5.xlarge", Spot, "us-east-1", "")
	return p.NodeHourly
}

func TestStoreKeepsLastGoodCatalog(t *testing.T) {
	RegisterMetrics() // unregistered, the error count stays 0
	s := NewStore(nil)
	before, _ := testutil.GetCounterMetricValue(metricCatalogLoads.WithLabelValues("error"))
	if err := s.Load([]byte("kind: ["), "bad.yaml"); err == nil {
		t.Fatal("want error")
	}
	if s.Catalog() != nil || s.LastError() == nil {
		t.Fatal("a bad first load leaves no catalog and an error")
	}
	if err := s.Load([]byte(goodYAML), "good.yaml"); err != nil || s.LastError() != nil {
		t.Fatal(err)
	}
	bad := strings.Replace(goodYAML, "hourly: 0.4", "hourly: -0.4", 1)
	if err := s.Load([]byte(bad), "bad.yaml"); err == nil {
		t.Fatal("want error")
	}
	if spotPrice(s) != 0.4 {
		t.Fatalf("last good catalog not in force: spot price %v", spotPrice(s))
	}
	if err := s.LastError(); err == nil || !strings.Contains(err.Error(), "bad.yaml:8") {
		t.Fatalf("LastError %v", err)
	}
	after, _ := testutil.GetCounterMetricValue(metricCatalogLoads.WithLabelValues("error"))
	if after-before != 2 {
		t.Fatalf("error loads counted %v, want 2", after-before)
	}
}

// A catalog file that cannot be read, or does not validate, when the
// scheduler starts is an error then: there is no last good catalog to keep,
// and without one every node would be priced alike.
func TestWatchFileRefusesABadCatalogAtStart(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte(strings.Replace(goodYAML, "hourly: 0.4", "hourly: -5", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, path := range []string{filepath.Join(dir, "missing.yaml"), bad} {
		if err := NewStore(nil).WatchFile(ctx, path); err == nil || !strings.Contains(err.Error(), path) {
			t.Errorf("%s: %v; want an error naming the file", path, err)
		}
	}
}

func TestWatchFileReloads(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "catalog.yaml")
	if err := os.WriteFile(path, []byte(goodYAML), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := NewStore(nil)
	if err := s.WatchFile(ctx, path); err != nil {
		t.Fatal(err)
	}
	if spotPrice(s) != 0.4 {
		t.Fatalf("initial load: %v", spotPrice(s))
	}
	write := func(content string) {
		// Write then rename, as the kubelet and editors do.
		tmp := filepath.Join(dir, ".tmp")
		if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}
	write(strings.Replace(goodYAML, "hourly: 0.4", "hourly: 0.3", 1))
	waitFor(t, "reload to 0.3", func() bool { return spotPrice(s) == 0.3 })

	write(strings.Replace(goodYAML, "hourly: 0.4", "hourly: -5", 1))
	waitFor(t, "the bad edit to be reported", func() bool { return s.LastError() != nil })
	if spotPrice(s) != 0.3 {
		t.Fatalf("bad edit replaced the catalog: %v", spotPrice(s))
	}

	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the missing file to be reported", func() bool {
		err := s.LastError()
		return err != nil && strings.Contains(err.Error(), "no such file")
	})
	if spotPrice(s) != 0.3 {
		t.Fatalf("a removed file dropped the catalog: %v", spotPrice(s))
	}
}

// watchCounting watches path with a store whose OnChange hook counts its
// runs; looked counts the times the watch has read the file after events in
// its directory.
func watchCounting(t *testing.T, path string) (s *Store, hooks, looked *atomic.Int32) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	s = NewStore(nil)
	hooks, looked = &atomic.Int32{}, &atomic.Int32{}
	s.OnChange(func(*Catalog, error) { hooks.Add(1) })
	s.watched = func() { looked.Add(1) }
	if err := s.WatchFile(ctx, path); err != nil {
		t.Fatal(err)
	}
	if hooks.Load() != 1 || spotPrice(s) != 0.4 {
		t.Fatalf("initial load: hooks ran %d times, spot price %v", hooks.Load(), spotPrice(s))
	}
	return s, hooks, looked
}

// Every event in the catalog's directory reloaded the catalog and ran the
// OnChange hooks, with which SpotRisk retries its pending pods: another
// file written beside the catalog did too.
func TestWatchFileIgnoresOtherFilesInItsDirectory(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "catalog.yaml")
	if err := os.WriteFile(path, []byte(goodYAML), 0o644); err != nil {
		t.Fatal(err)
	}
	s, hooks, looked := watchCounting(t, path)
	if err := os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("not the catalog"), 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the watch to look at the catalog", func() bool { return looked.Load() > 0 })
	if n := hooks.Load(); n != 1 {
		t.Errorf("another file in the directory ran the hooks: %d runs, want 1", n)
	}
	// The catalog's own edit still loads, once. Written then renamed, it
	// is never read half written.
	tmp := filepath.Join(dir, ".catalog.yaml.tmp")
	if err := os.WriteFile(tmp, []byte(strings.Replace(goodYAML, "hourly: 0.4", "hourly: 0.3", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	// The catalog is in force before the hooks run.
	waitFor(t, "reload to 0.3 and the hooks", func() bool { return spotPrice(s) == 0.3 && hooks.Load() == 2 })
}

// configMapVolume is a directory kept the way the kubelet's atomic writer
// keeps a ConfigMap volume: each key a symlink to ..data/<key>, and ..data a
// symlink to a timestamped directory that holds the keys' files.
type configMapVolume struct {
	t       *testing.T
	dir     string
	version int
	keys    map[string]bool
}

func newConfigMapVolume(t *testing.T) *configMapVolume {
	return &configMapVolume{t: t, dir: t.TempDir(), keys: map[string]bool{}}
}

// publish writes the ConfigMap's data as the kubelet does an update: the
// files into a new timestamped directory, ..data swapped to it through a
// rename, a symlink made for each key that came and removed for each key
// that went, and the old directory removed.
func (v *configMapVolume) publish(data map[string]string) {
	t := v.t
	t.Helper()
	old := ""
	if v.version > 0 {
		old = filepath.Join(v.dir, fmt.Sprintf("..2026_11_30_%d", v.version))
	}
	v.version++
	ts := filepath.Join(v.dir, fmt.Sprintf("..2026_11_30_%d", v.version))
	if err := os.Mkdir(ts, 0o755); err != nil {
		t.Fatal(err)
	}
	for key, content := range data {
		if err := os.WriteFile(filepath.Join(ts, key), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	tmp := filepath.Join(v.dir, "..data_tmp")
	if err := os.Symlink(filepath.Base(ts), tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(v.dir, "..data")); err != nil {
		t.Fatal(err)
	}
	for key := range data {
		if !v.keys[key] {
			if err := os.Symlink(filepath.Join("..data", key), filepath.Join(v.dir, key)); err != nil {
				t.Fatal(err)
			}
		}
	}
	for key := range v.keys {
		if _, ok := data[key]; !ok {
			if err := os.Remove(filepath.Join(v.dir, key)); err != nil {
				t.Fatal(err)
			}
		}
	}
	v.keys = map[string]bool{}
	for key := range data {
		v.keys[key] = true
	}
	if old != "" {
		if err := os.RemoveAll(old); err != nil {
			t.Fatal(err)
		}
	}
}

// A ConfigMap volume holds the catalog behind symlinks, catalog.yaml ->
// ..data/catalog.yaml and ..data -> a timestamped directory, and the kubelet
// updates it by swapping ..data: catalog.yaml itself sees no event.
func TestWatchFileFollowsAConfigMapVolume(t *testing.T) {
	v := newConfigMapVolume(t)
	v.publish(map[string]string{"catalog.yaml": goodYAML})
	s, hooks, looked := watchCounting(t, filepath.Join(v.dir, "catalog.yaml"))
	v.publish(map[string]string{"catalog.yaml": strings.Replace(goodYAML, "hourly: 0.4", "hourly: 0.3", 1)})
	waitFor(t, "reload to 0.3 and the hooks", func() bool { return spotPrice(s) == 0.3 && hooks.Load() == 2 })
	// The kubelet also swaps ..data when another key of the ConfigMap
	// changes; the catalog's bytes are the same.
	seen := looked.Load()
	v.publish(map[string]string{"catalog.yaml": strings.Replace(goodYAML, "hourly: 0.4", "hourly: 0.3", 1), "notes": "Q4 list"})
	waitFor(t, "the watch to look at the catalog", func() bool { return looked.Load() > seen })
	if n := hooks.Load(); n != 2 {
		t.Errorf("the same catalog ran the hooks: %d runs, want 2", n)
	}
	v.publish(map[string]string{"catalog.yaml": strings.Replace(goodYAML, "hourly: 0.4", "hourly: 0.25", 1)})
	waitFor(t, "reload to 0.25 and the hooks", func() bool { return spotPrice(s) == 0.25 && hooks.Load() == 3 })
}

// A catalog that cannot be read counted a failed load each time the watch
// looked at it, after every update of its directory: with the catalog key
// gone from its ConfigMap, each later update of another key counted the same
// failure again. One failure counts once, and the next one after a good load
// counts again.
func TestWatchFileCountsAnUnreadableCatalogOnce(t *testing.T) {
	RegisterMetrics()
	failed := func() float64 {
		return metricstest.Counter(t, "penny_price_catalog_loads_total", "result", resultError)
	}
	v := newConfigMapVolume(t)
	v.publish(map[string]string{"catalog.yaml": goodYAML, "notes": "Q3 list"})
	s, _, looked := watchCounting(t, filepath.Join(v.dir, "catalog.yaml"))
	before := failed()
	missing := func() bool {
		err := s.LastError()
		return err != nil && strings.Contains(err.Error(), "no such file")
	}
	// publish publishes data and waits for the watch to look at the
	// catalog after it.
	publish := func(data map[string]string) {
		t.Helper()
		seen := looked.Load()
		v.publish(data)
		waitFor(t, "the watch to look at the catalog", func() bool { return looked.Load() > seen })
	}
	publish(map[string]string{"notes": "Q4 list"})
	if !missing() {
		t.Fatalf("the catalog key removed: LastError %v, want the file missing", s.LastError())
	}
	publish(map[string]string{"notes": "Q4 list, revised"})
	publish(map[string]string{"notes": "Q4 list, final"})
	if got := failed() - before; got != 1 {
		t.Errorf("one missing catalog counted %v failed loads, want 1", got)
	}
	if !missing() || spotPrice(s) != 0.4 {
		t.Errorf("LastError %v, spot price %v: want the file missing and the last good catalog in force", s.LastError(), spotPrice(s))
	}
	publish(map[string]string{"catalog.yaml": goodYAML, "notes": "Q4 list, final"})
	if err := s.LastError(); err != nil {
		t.Fatalf("the catalog back: LastError %v", err)
	}
	publish(map[string]string{"notes": "Q1 list"})
	if got := failed() - before; got != 2 || !missing() {
		t.Errorf("the catalog removed again: %v failed loads in all, LastError %v; want 2 and the file missing", got, s.LastError())
	}
}

// A catalog ConfigMap that is not there is reported once the watch has
// listed (SpotRisk then prices every node alike), and read when it comes.
func TestWatchConfigMapReportsAMissingConfigMap(t *testing.T) {
	client := fake.NewClientset()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := NewStore(nil)
	s.WatchConfigMap(ctx, client, "penny-system", "prices", "catalog.yaml")
	waitFor(t, "the missing ConfigMap to be reported", func() bool {
		err := s.LastError()
		return err != nil && strings.Contains(err.Error(), "configmap penny-system/prices key catalog.yaml: the ConfigMap does not exist")
	})
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "penny-system", Name: "prices"},
		Data: map[string]string{"catalog.yaml": goodYAML}}
	if _, err := client.CoreV1().ConfigMaps("penny-system").Create(ctx, cm, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the load once it exists", func() bool { return spotPrice(s) == 0.4 && s.LastError() == nil })
}

// watchedConfigMap is a store watching penny-system/prices, which holds
// goodYAML, once it has loaded it.
func watchedConfigMap(t *testing.T) (context.Context, *fake.Clientset, *corev1.ConfigMap, *Store) {
	t.Helper()
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "penny-system", Name: "prices"},
		Data: map[string]string{"catalog.yaml": goodYAML}}
	client := fake.NewClientset(cm)
	ctx := t.Context()
	s := NewStore(nil)
	s.WatchConfigMap(ctx, client, "penny-system", "prices", "catalog.yaml")
	waitFor(t, "initial load", func() bool { return spotPrice(s) == 0.4 && s.LastError() == nil })
	return ctx, client, cm, s
}

func TestWatchConfigMap(t *testing.T) {
	ctx, client, cm, s := watchedConfigMap(t)

	update := func(data map[string]string) {
		cm = cm.DeepCopy()
		cm.Data = data
		if _, err := client.CoreV1().ConfigMaps("penny-system").Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	update(map[string]string{"catalog.yaml": strings.Replace(goodYAML, "hourly: 0.4", "hourly: 0.35", 1)})
	waitFor(t, "reload", func() bool { return spotPrice(s) == 0.35 })

	update(map[string]string{"catalog.yaml": strings.Replace(goodYAML, "g5.xlarge, capacityType: spot", "g6.xlarge, capacityType: spot", 1)})
	waitFor(t, "bad update reported", func() bool {
		err := s.LastError()
		return err != nil && strings.Contains(err.Error(), `configmap penny-system/prices key catalog.yaml:8: prices[1].instanceType: instance type "g6.xlarge"`)
	})
	update(map[string]string{"other": goodYAML})
	waitFor(t, "missing key reported", func() bool {
		err := s.LastError()
		return err != nil && strings.Contains(err.Error(), `key "catalog.yaml" is missing`)
	})
	if spotPrice(s) != 0.35 {
		t.Fatalf("last good catalog not in force: %v", spotPrice(s))
	}
}

// Any update of the catalog's ConfigMap reloaded the catalog and ran the
// OnChange hooks, a label or another key changed as well.
func TestWatchConfigMapIgnoresUpdatesThatLeaveTheCatalog(t *testing.T) {
	ctx, client, cm, s := watchedConfigMap(t)
	var hooks, newCatalog atomic.Int32
	s.OnChange(func(c *Catalog, _ error) {
		hooks.Add(1)
		if p, _ := c.Lookup("g5.xlarge", Spot, "us-east-1", ""); p.NodeHourly == 0.35 {
			newCatalog.Add(1)
		}
	})
	cm = cm.DeepCopy()
	cm.Labels = map[string]string{"team": "platform"}
	cm.Data["notes"] = "prices from the Q4 list"
	if _, err := client.CoreV1().ConfigMaps("penny-system").Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	cm = cm.DeepCopy()
	cm.Data["catalog.yaml"] = strings.Replace(goodYAML, "hourly: 0.4", "hourly: 0.35", 1)
	if _, err := client.CoreV1().ConfigMaps("penny-system").Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The informer hands updates over in order: by the time the hooks
	// see the new catalog, the first update has been handled.
	waitFor(t, "the hooks to see the new catalog", func() bool { return newCatalog.Load() > 0 })
	if n := hooks.Load(); n != 1 {
		t.Errorf("hooks ran %d times for one change of the catalog, want 1", n)
	}
}

// Deleting the catalog's ConfigMap left the scheduler on its last good
// catalog without a word: LastError, the log and the metrics all said the
// last load had succeeded, while a scheduler started meanwhile had none.
func TestWatchConfigMapReportsADeletedConfigMap(t *testing.T) {
	ctx, client, cm, s := watchedConfigMap(t)
	if err := client.CoreV1().ConfigMaps("penny-system").Delete(ctx, "prices", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the deletion to be reported", func() bool {
		err := s.LastError()
		return err != nil && strings.Contains(err.Error(), "configmap penny-system/prices key catalog.yaml: the ConfigMap was deleted; the last good catalog stays in force")
	})
	if spotPrice(s) != 0.4 {
		t.Fatalf("a deleted ConfigMap dropped the catalog: %v", spotPrice(s))
	}
	if got := exported(t, "penny_price_catalog_last_load_successful"); got != 0 {
		t.Fatalf("after the deletion: last_load_successful %v, want 0", got)
	}
	if _, err := client.CoreV1().ConfigMaps("penny-system").Create(ctx, cm, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the load once it is back", func() bool { return s.LastError() == nil })
}
