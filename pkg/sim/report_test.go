package sim

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// A result is written whole, beside its path and renamed into place: a
// hard link to the older result keeps the older content.
func TestWriteFileReplacesTheFileWhole(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "R.json")
	if err := os.WriteFile(path, []byte("old\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "old.json")
	if err := os.Link(path, link); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(path, []byte("new\n")); err != nil {
		t.Fatal(err)
	}
	for file, want := range map[string]string{path: "new\n", link: "old\n"} {
		if got, err := os.ReadFile(file); err != nil || string(got) != want {
			t.Errorf("%s holds %q (%v), want %q", filepath.Base(file), got, err, want)
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 2 {
		t.Errorf("%d files left in the folder, want the result and the link", len(entries))
	}
	// A new result is readable by the user's other tools, as os.WriteFile
	// made it (a temporary file starts 0600).
	fresh := filepath.Join(dir, "new.json")
	if err := WriteFile(fresh, []byte("new\n")); err != nil {
		t.Fatal(err)
	}
	umask := syscall.Umask(0)
	syscall.Umask(umask)
	info, err := os.Stat(fresh)
	if err != nil {
		t.Fatal(err)
	}
	if want := 0o644 &^ os.FileMode(umask); info.Mode().Perm() != want {
		t.Errorf("a new result's mode: %v, want %v", info.Mode().Perm(), want)
	}
}

// A path that is not a regular file (/dev/stdout, a pipe) is written as it
// is, not replaced by a file.
func TestWriteFileWritesThroughAPipe(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "out")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	got := make(chan []byte, 1)
	go func() {
		f, err := os.Open(fifo)
		if err != nil {
			got <- nil
			return
		}
		defer f.Close()
		b, _ := io.ReadAll(f)
		got <- b
	}()
	if err := WriteFile(fifo, []byte("result\n")); err != nil {
		t.Fatal(err)
	}
	// Before the read: a pipe replaced by a file leaves the reader waiting
	// for a writer forever.
	if info, err := os.Stat(fifo); err != nil || info.Mode()&os.ModeNamedPipe == 0 {
		t.Fatalf("the pipe was replaced by a file: %v", err)
	}
	if b := <-got; !bytes.Equal(b, []byte("result\n")) {
		t.Errorf("the pipe's reader got %q, want the result", b)
	}
}

// The FGD paper's numbers are shown beside a fill only where they measure
// the same thing: openb's default pod list at 130% arrivals, without MIG.
func TestPublishedOnlyOnThePapersProtocol(t *testing.T) {
	for _, c := range []struct {
		what, pods, mig string
		inflate         float64
		want            float64
	}{
		{"the paper's protocol", "/data/openb/openb_pod_list_default.csv", "", 1.3, 6.92},
		{"MIG", "/data/openb/openb_pod_list_default.csv", "A100-80GB", 1.3, 0},
		{"another trace", "/data/openb/openb_pod_list_gpushare40.csv", "", 1.3, 0},
		{"other arrivals", "/data/openb/openb_pod_list_default.csv", "", 1.0, 0},
	} {
		r := &FillReport{Pods: c.pods, MIG: c.mig, Inflate: c.inflate, Records: []*FillRecord{{Policy: "bestfit", UnallocatedGPUPct: 7}}}
		r.Summarize()
		if got := r.Summary["bestfit"].Published; got != c.want {
			t.Errorf("%s: published %v, want %v", c.what, got, c.want)
		}
		if c.want == 0 && strings.Contains(r.Table(), "6.92") {
			t.Errorf("%s: the table shows the paper's number:\n%s", c.what, r.Table())
		}
	}
}
