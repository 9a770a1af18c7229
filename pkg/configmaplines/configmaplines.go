// Package configmaplines keeps a small list as lines of text under one key
// of a ConfigMap, as penny-scheduler keeps state that must outlive a
// restart (the runs Spot reclaims cut short, the Spot pools' reclaim
// evidence, the reclaim notices being handled, the moves back to Spot). Lines that do not parse are reported by number and the rest
// kept; writes are conditional on the copy read, so replicas that write at
// once do not erase each other's lines, and the one that came second tries
// again.
package configmaplines

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Key names one key of one ConfigMap.
type Key struct {
	Client          kubernetes.Interface
	Namespace, Name string
	Key             string
}

// String names the key in errors, e.g. "configmap penny-system/x key runs".
func (k Key) String() string {
	return fmt.Sprintf("configmap %s/%s key %s", k.Namespace, k.Name, k.Key)
}

// Read returns the key's text; "" when the ConfigMap does not exist.
func (k Key) Read(ctx context.Context) (string, error) {
	cm, err := k.Client.CoreV1().ConfigMaps(k.Namespace).Get(ctx, k.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("%s: %w", k, err)
	}
	return cm.Data[k.Key], nil
}

// MaxBytes is how much text a key may hold: the API server holds an object
// to 1 MiB, and the ConfigMap's other fields need some of it.
const MaxBytes = 900 << 10

// maxTries bounds the tries of one Update.
const maxTries = 30

// Update hands the key's text to change and writes back what change
// returns, unless it is the same. The write is conditional on the copy
// read: when another writer came first (another replica, writing at once),
// the text is read and changed again after a pause that grows with each
// try and is drawn at random, so that writers that collided once do not
// collide again in step, until the write goes through, ctx ends or
// maxTries tries. A missing ConfigMap is created, also when it is deleted
// between the read and the write.
func (k Key) Update(ctx context.Context, change func(text string) string) error {
	pause := 10 * time.Millisecond
	for try := 1; ; try++ {
		err := k.update(ctx, change)
		if err == nil {
			return nil
		}
		// NotFound: the ConfigMap was deleted between the read and the
		// write (a human cleaning up); the next try creates it, or this
		// write was lost.
		if !apierrors.IsConflict(err) && !apierrors.IsAlreadyExists(err) && !apierrors.IsNotFound(err) || try == maxTries {
			return fmt.Errorf("%s: %w", k, err)
		}
		t := time.NewTimer(pause/2 + rand.N(pause))
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%s: %w (%d tries, each time another writer came first)", k, ctx.Err(), try)
		case <-t.C:
		}
		pause = min(2*pause, 200*time.Millisecond)
	}
}

// update is one try of Update.
func (k Key) update(ctx context.Context, change func(text string) string) error {
	cms := k.Client.CoreV1().ConfigMaps(k.Namespace)
	cm, err := cms.Get(ctx, k.Name, metav1.GetOptions{})
	exists := err == nil
	switch {
	case apierrors.IsNotFound(err):
		cm = &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: k.Namespace, Name: k.Name,
			Labels: map[string]string{"app.kubernetes.io/part-of": "penny"}}}
	case err != nil:
		return err
	}
	text := change(cm.Data[k.Key])
	if cm.Data[k.Key] == text {
		return nil // nor is an empty ConfigMap created
	}
	cm = cm.DeepCopy()
	if cm.Data == nil {
		cm.Data = map[string]string{}
	}
	cm.Data[k.Key] = text
	if exists {
		_, err = cms.Update(ctx, cm, metav1.UpdateOptions{})
	} else {
		_, err = cms.Create(ctx, cm, metav1.CreateOptions{})
	}
	return err
}

// Parse reads text line by line with parse, skipping blank lines. Lines
// parse refuses are left out; the error names each by its number, its text
// and parse's reason, and the values returned are the good lines'.
func Parse[T any](text, source string, parse func(line string) (T, error)) ([]T, error) {
	var out []T
	var errs []error
	for i, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		v, err := parse(line)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s line %d %q: %w", source, i+1, line, err))
			continue
		}
		out = append(out, v)
	}
	return out, errors.Join(errs...)
}

// ParseTime reads a time saved in RFC 3339, as the lines' formats write
// them: in UTC. A time whose year in UTC falls outside 0000-9999
// (0000-01-01T00:00:00+01:00) parses, but would be written back as a year
// RFC 3339 cannot hold, and the next read would refuse the whole line: it
// is refused here instead.
func ParseTime(s string) (time.Time, error) {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, err
	}
	if y := t.UTC().Year(); y < 0 || y > 9999 {
		return time.Time{}, fmt.Errorf("year %d in UTC", y)
	}
	return t, nil
}
