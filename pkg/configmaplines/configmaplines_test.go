package configmaplines

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"
	clienttesting "k8s.io/client-go/testing"
)

func TestUpdateCreatesWritesOnlyChangesAndRetriesConflicts(t *testing.T) {
	ctx := context.Background()
	client := fake.NewClientset()
	k := Key{Client: client, Namespace: "penny-system", Name: "state", Key: "lines"}
	if err := k.Update(ctx, func(text string) string { return text }); err != nil {
		t.Fatal(err)
	}
	if _, err := client.CoreV1().ConfigMaps("penny-system").Get(ctx, "state", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("nothing to write created the ConfigMap: %v", err)
	}
	if err := k.Update(ctx, func(string) string { return "a\n" }); err != nil {
		t.Fatal(err)
	}
	// Another writer comes first once: the text is read and changed again.
	conflicts := 1
	client.PrependReactor("update", "configmaps", func(clienttesting.Action) (bool, runtime.Object, error) {
		if conflicts > 0 {
			conflicts--
			return true, nil, apierrors.NewConflict(schema.GroupResource{Resource: "configmaps"}, "state", errors.New("changed"))
		}
		return false, nil, nil
	})
	calls := 0
	if err := k.Update(ctx, func(text string) string { calls++; return text + "b\n" }); err != nil {
		t.Fatal(err)
	}
	if got, err := k.Read(ctx); err != nil || got != "a\nb\n" || calls != 2 {
		t.Fatalf("read %q (%v) after %d calls of change; want %q after 2", got, err, calls, "a\nb\n")
	}
	if got, err := (Key{Client: client, Namespace: "penny-system", Name: "none", Key: "lines"}).Read(ctx); err != nil || got != "" {
		t.Fatalf("a missing ConfigMap reads %q, %v; want empty", got, err)
	}
}

// A writer that keeps losing to others tries until its context ends, and
// says so.
func TestUpdateRetriesConflictsUntilTheContextEnds(t *testing.T) {
	client := fake.NewClientset()
	client.PrependReactor("update", "configmaps", func(clienttesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewConflict(schema.GroupResource{Resource: "configmaps"}, "state", errors.New("changed"))
	})
	k := Key{Client: client, Namespace: "penny-system", Name: "state", Key: "lines"}
	if err := k.Update(context.Background(), func(string) string { return "a\n" }); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	calls := 0
	err := k.Update(ctx, func(text string) string { calls++; return text + "b\n" })
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "another writer came first") || calls < 3 {
		t.Fatalf("after %d tries: %v; want several tries, then the context's end named", calls, err)
	}
}

// A ConfigMap deleted between the read and the write is created with the
// write: the write is not lost.
func TestUpdateOfAConfigMapDeletedMeanwhileCreatesIt(t *testing.T) {
	ctx := context.Background()
	client := fake.NewClientset()
	k := Key{Client: client, Namespace: "penny-system", Name: "state", Key: "lines"}
	if err := k.Update(ctx, func(string) string { return "a\n" }); err != nil {
		t.Fatal(err)
	}
	deleted := false
	client.PrependReactor("update", "configmaps", func(clienttesting.Action) (bool, runtime.Object, error) {
		if !deleted {
			deleted = true
			if err := client.Tracker().Delete(schema.GroupVersionResource{Version: "v1", Resource: "configmaps"}, "penny-system", "state"); err != nil {
				t.Error(err)
			}
		}
		return false, nil, nil
	})
	if err := k.Update(ctx, func(text string) string { return text + "b\n" }); err != nil {
		t.Fatalf("write to a ConfigMap deleted meanwhile: %v", err)
	}
	if got, err := k.Read(ctx); err != nil || got != "b\n" {
		t.Fatalf("read %q (%v); want the write, %q, in a new ConfigMap", got, err, "b\n")
	}
}

func TestParseKeepsTheGoodLinesAndNamesTheBadOnes(t *testing.T) {
	got, err := Parse("1\n\n two \nthree\n4\n", "configmap x/y key lines", func(line string) (int, error) {
		return strconv.Atoi(line)
	})
	if len(got) != 2 || got[0] != 1 || got[1] != 4 {
		t.Fatalf("kept %v, want [1 4]", got)
	}
	for _, want := range []string{`configmap x/y key lines line 3 "two"`, `line 4 "three"`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v lacks %q", err, want)
		}
	}
}
