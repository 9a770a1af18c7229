package pricing

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
)

// PriceBook prices nodes. A Store and a Catalog both implement it.
type PriceBook interface {
	NodePrice(node *corev1.Node) (Price, bool)
}

var _ PriceBook = &Catalog{}
var _ PriceBook = &Store{}

// Store holds the catalog in force and replaces it when its source changes.
// A bad update is reported (log, metrics, LastError) and the last good
// catalog stays in force, so a typo in a ConfigMap never leaves the
// scheduler without prices.
type Store struct {
	cur atomic.Pointer[Catalog]

	mu      sync.Mutex
	lastErr error
	// onChange is called after every load attempt, for tests and callers
	// that re-derive state (risk priors) from the catalog.
	onChange []func(*Catalog, error)
	// watched, when set, is called each time WatchFile has looked at the
	// file after events in its directory, for tests.
	watched func()
}

// NewStore returns a store holding c (which may be nil: no prices yet).
func NewStore(c *Catalog) *Store {
	s := &Store{}
	if c != nil {
		s.cur.Store(c)
		metricCatalogEntries.Set(float64(c.Len()))
	}
	return s
}

// Catalog is the catalog in force, nil when none was ever loaded.
func (s *Store) Catalog() *Catalog { return s.cur.Load() }

// NodePrice implements PriceBook with the catalog in force.
func (s *Store) NodePrice(node *corev1.Node) (Price, bool) {
	return s.cur.Load().NodePrice(node)
}

// LastError is the error of the last load, nil when it succeeded.
func (s *Store) LastError() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastErr
}

// OnChange registers f to run after every load attempt with the catalog in
// force and the load's error.
func (s *Store) OnChange(f func(*Catalog, error)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.onChange = append(s.onChange, f)
}

// Load parses data and, when it is valid, puts it in force.
func (s *Store) Load(data []byte, name string) error {
	c, err := Parse(data, name)
	if err != nil {
		if old := s.fail(err); old != nil {
			klog.ErrorS(err, "Price catalog rejected; the last good catalog stays in force", "source", name, "entries", old.Len())
		} else {
			klog.ErrorS(err, "Price catalog rejected; no prices are known until it is fixed", "source", name)
		}
		s.changed(err)
		return err
	}
	s.mu.Lock()
	s.lastErr = nil
	s.cur.Store(c)
	metricCatalogLastLoadSuccessful.Set(1)
	s.mu.Unlock()
	metricCatalogLoads.WithLabelValues(resultSuccess).Inc()
	metricCatalogEntries.Set(float64(c.Len()))
	metricCatalogLastSuccess.SetToCurrentTime()
	klog.InfoS("Price catalog loaded", "source", name, "entries", c.Len())
	s.changed(nil)
	return nil
}

// fail records a load that put nothing in force and returns the catalog
// that stays, nil when there is none.
func (s *Store) fail(err error) *Catalog {
	s.mu.Lock()
	s.lastErr = err
	old := s.cur.Load()
	metricCatalogLastLoadSuccessful.Set(0)
	s.mu.Unlock()
	metricCatalogLoads.WithLabelValues(resultError).Inc()
	return old
}

func (s *Store) changed(err error) {
	s.mu.Lock()
	hooks := append([]func(*Catalog, error){}, s.onChange...)
	s.mu.Unlock()
	for _, h := range hooks {
		h(s.cur.Load(), err)
	}
}

// LoadFile loads a catalog file into the store.
func (s *Store) LoadFile(path string) error {
	_, err := s.loadFile(path, nil)
	return err
}

// fileLook is what a look at a catalog file found: the bytes it held, or
// why it could not be read.
type fileLook struct {
	data    []byte
	readErr string
}

// loadFile reads path and loads what it holds, unless prev (nil: the first
// look) found the same: the same bytes are the catalog in force or one
// rejected already, and the same read error is a failure reported and
// counted already. A catalog key removed from a mounted ConfigMap stays
// missing across every later update of the ConfigMap's other keys, and each
// would otherwise count one more failed load. It returns what it found, and
// the load's error.
func (s *Store) loadFile(path string, prev *fileLook) (fileLook, error) {
	data, err := readFile(path)
	if err != nil {
		look := fileLook{readErr: err.Error()}
		if prev != nil && prev.readErr == look.readErr {
			return look, err
		}
		s.fail(err)
		klog.ErrorS(err, "Price catalog unreadable; the last good catalog stays in force", "path", path)
		return look, err
	}
	look := fileLook{data: data}
	// After a failed read, prev holds no bytes: the same bytes as before
	// the failure are loaded again, which clears the error.
	if prev != nil && prev.readErr == "" && bytes.Equal(data, prev.data) {
		return look, nil
	}
	return look, s.Load(data, path)
}

// WatchFile loads path now and again whenever it changes, until ctx ends.
// It watches the directory, not the file, because a mounted ConfigMap is
// updated by swapping a symlink (..data) and the file's own name sees no
// event; so after any event there it reads the file, and loads it only if
// it holds other bytes than it did: another file written in the directory
// neither reloads the catalog nor runs the OnChange hooks, which retry
// pending pods. A file that stays unreadable is reported and counted once,
// not at every look. A catalog that cannot be read or does not validate now
// is an error: there is no last good one to keep yet, and without one every
// node would be priced alike.
func (s *Store) WatchFile(ctx context.Context, path string) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("price catalog %s: watch: %w", path, err)
	}
	if err := w.Add(filepath.Dir(path)); err != nil {
		_ = w.Close()
		return fmt.Errorf("price catalog %s: watch: %w", path, err)
	}
	last, err := s.loadFile(path, nil)
	if err != nil {
		_ = w.Close()
		return err
	}
	go func() {
		defer func() { _ = w.Close() }()
		// Editors and the kubelet write in several steps; settle first.
		var settle <-chan time.Time
		for {
			select {
			case <-ctx.Done():
				return
			case ev, ok := <-w.Events:
				if !ok {
					return
				}
				if ev.Op&(fsnotify.Write|fsnotify.Create|fsnotify.Rename|fsnotify.Remove) != 0 {
					settle = time.After(100 * time.Millisecond)
				}
			case err, ok := <-w.Errors:
				if !ok {
					return
				}
				klog.ErrorS(err, "Price catalog watch", "path", path)
			case <-settle:
				settle = nil
				last, _ = s.loadFile(path, &last)
				if s.watched != nil {
					s.watched()
				}
			}
		}
	}()
	return nil
}

// WatchConfigMap loads the catalog from key of a ConfigMap and again
// whenever the ConfigMap changes, until ctx ends. A deleted ConfigMap leaves
// the last good catalog in force and is reported like a rejected edit
// (LastError, the metrics, the log); so is one that does not exist when the
// watch has listed, since until it is created there is no catalog at all.
func (s *Store) WatchConfigMap(ctx context.Context, client kubernetes.Interface, namespace, name, key string) {
	src := fmt.Sprintf("configmap %s/%s key %s", namespace, name, key)
	load := func(obj interface{}) {
		cm, ok := obj.(*corev1.ConfigMap)
		if !ok {
			return
		}
		data, ok := cm.Data[key]
		if !ok {
			err := fmt.Errorf("%s: key %q is missing; put the catalog YAML under data.%s", src, key, key)
			s.fail(err)
			klog.ErrorS(err, "Price catalog rejected; the last good catalog stays in force")
			return
		}
		_ = s.Load([]byte(data), src)
	}
	factory := informers.NewSharedInformerFactoryWithOptions(client, 0,
		informers.WithNamespace(namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", name).String()
		}))
	inf := factory.Core().V1().ConfigMaps().Informer()
	_, _ = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: load,
		UpdateFunc: func(old, obj interface{}) {
			// A label or another key changed: the catalog is as it
			// was, and loading it again would run the OnChange hooks
			// (SpotRisk retries its pending pods) for nothing.
			if o, ok := old.(*corev1.ConfigMap); ok {
				if n, ok := obj.(*corev1.ConfigMap); ok {
					before, had := o.Data[key]
					after, has := n.Data[key]
					if had == has && before == after {
						return
					}
				}
			}
			load(obj)
		},
		// Deleting the ConfigMap takes no catalog away from this scheduler,
		// but one started now would have none: that is worth an error.
		DeleteFunc: func(interface{}) {
			err := fmt.Errorf("%s: the ConfigMap was deleted; the last good catalog stays in force until it is created again, but a scheduler that starts meanwhile has none: recreate it (deploy/pricing/penny-prices.yaml)", src)
			s.fail(err)
			klog.ErrorS(err, "Price catalog deleted")
		},
	})
	factory.Start(ctx.Done())
	go func() {
		if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
			return
		}
		if _, exists, _ := inf.GetStore().GetByKey(namespace + "/" + name); exists {
			return
		}
		err := fmt.Errorf("%s: the ConfigMap does not exist; create it (deploy/pricing/penny-prices.yaml) or fix the name: until then there is no price catalog and every node is priced alike", src)
		s.mu.Lock()
		loaded := s.cur.Load() != nil // by the ConfigMap's add, meanwhile
		if !loaded {
			s.lastErr = err
			metricCatalogLastLoadSuccessful.Set(0)
		}
		s.mu.Unlock()
		if loaded {
			return
		}
		metricCatalogLoads.WithLabelValues(resultError).Inc()
		klog.ErrorS(err, "Price catalog missing")
	}()
}

func readFile(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("price catalog: %w", err)
	}
	return data, nil
}
