package sim

import (
	"bytes"
	"compress/gzip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/pennysched/penny/pkg/gang"
	"github.com/pennysched/penny/pkg/gpu"
)

// openbDir is the shared openb trace. CI checks it out as ../shared beside
// the clone; in a git worktree it sits beside the main checkout instead.
func openbDir(t testing.TB) string {
	t.Helper()
	repo, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	candidates := []string{filepath.Join(repo, "..", "shared", "data", "openb")}
	// A worktree's .git is a file: "gitdir: <main>/.git/worktrees/<name>".
	if b, err := os.ReadFile(filepath.Join(repo, ".git")); err == nil {
		if gitdir, ok := strings.CutPrefix(strings.TrimSpace(string(b)), "gitdir: "); ok {
			main := filepath.Dir(filepath.Dir(filepath.Dir(gitdir)))
			candidates = append(candidates, filepath.Join(main, "..", "shared", "data", "openb"))
		}
	}
	for _, dir := range candidates {
		if _, err := os.Stat(filepath.Join(dir, "openb_pod_list_default.csv")); err == nil {
			return dir
		}
	}
	t.Fatalf("the openb trace is missing: looked in %s (CI checks it out as <repo>/../shared/data/openb)", strings.Join(candidates, ", "))
	return ""
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadOpenbTrace(t *testing.T) {
	dir := openbDir(t)
	nodes, err := LoadOpenbNodes(filepath.Join(dir, "openb_node_list_all_node.csv"))
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes) != 1523 {
		t.Fatalf("%d nodes, want 1523", len(nodes))
	}
	if got := GPUCapacityMilli(nodes); got != 6212*1000 {
		t.Fatalf("GPU capacity %d milli, want 6212 GPUs", got)
	}
	tr, err := LoadOpenbPods(filepath.Join(dir, "openb_pod_list_default.csv"))
	if err != nil {
		t.Fatal(err)
	}
	if len(tr.Pods) != 8152 {
		t.Fatalf("%d pods, want 8152", len(tr.Pods))
	}
	var shares, whole, cpu int
	for i, tp := range tr.Pods {
		if i > 0 && tp.Arrival < tr.Pods[i-1].Arrival {
			t.Fatalf("pod %d arrives before pod %d", i, i-1)
		}
		r, err := gpu.ParsePodRequest(tp.Pod)
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case r.Milli > 0:
			shares++
		case r.GPUs > 0:
			whole++
		default:
			cpu++
		}
	}
	// Counted from the CSV: gpu_milli < 1000 rows, num_gpu >= 1 with 1000, num_gpu 0.
	if shares != 3078 || whole != 3986 || cpu != 1088 {
		t.Fatalf("shares %d, whole %d, CPU-only %d; want 3078, 3986, 1088", shares, whole, cpu)
	}
}

func TestOpenbRowConversion(t *testing.T) {
	nodes := writeFile(t, "nodes.csv", "sn,cpu_milli,memory_mib,gpu,model\nn1,96000,393216,8,T4\nn2,32000,262144,0,\n")
	pods := writeFile(t, "pods.csv", "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time\n"+
		"share,6000,12288,1,460,T4|V100M32,LS,Running,10,100,20\n"+
		"whole,12000,16384,2,1000,,BE,Running,5,50,5\n"+
		"pending,1000,1024,0,0,,BE,Pending,7,9,\n"+
		"waiting,1000,1024,0,0,,BE,Pending,30,,\n")
	ns, err := LoadOpenbNodes(nodes)
	if err != nil {
		t.Fatal(err)
	}
	n := ns[0]
	if n.Labels[gpu.LabelProduct] != "Tesla-T4" || n.Labels[gpu.LabelCount] != "8" {
		t.Fatalf("node labels %v", n.Labels)
	}
	if q := n.Status.Allocatable[gpu.ResourceGPUMilli]; q.Value() != 8000 {
		t.Fatalf("gpu-milli allocatable %v", q.String())
	}
	if _, ok := ns[1].Status.Allocatable[gpu.ResourceGPU]; ok {
		t.Fatal("a CPU node advertises GPUs")
	}
	tr, err := LoadOpenbPods(pods)
	if err != nil {
		t.Fatal(err)
	}
	// Creation order: whole (5), pending (7), share (10).
	if tr.Pods[0].Pod.Name != "whole" || tr.Pods[2].Pod.Name != "share" {
		t.Fatalf("order %s %s %s", tr.Pods[0].Pod.Name, tr.Pods[1].Pod.Name, tr.Pods[2].Pod.Name)
	}
	share := tr.Pods[2]
	r, _ := gpu.ParsePodRequest(share.Pod)
	if r.Milli != 460 || r.GPUs != 0 {
		t.Fatalf("share request %s", r)
	}
	if got := PodProducts(share.Pod); strings.Join(got, ",") != "Tesla-T4,Tesla-V100-SXM2-32GB" {
		t.Fatalf("share products %v", got)
	}
	if share.Arrival != 10*time.Second || share.Duration != 80*time.Second || share.Withdraw != 0 {
		t.Fatalf("share times %+v", share)
	}
	if r, _ := gpu.ParsePodRequest(tr.Pods[0].Pod); r.GPUs != 2 {
		t.Fatalf("whole request %s", r)
	}
	if c := tr.Pods[0].Pod.Spec.Containers[0].Resources.Requests; c.Cpu().MilliValue() != 12000 || c.Memory().Value() != 16384<<20 {
		t.Fatalf("whole CPU/memory %v", c)
	}
	p := tr.Pods[1]
	if p.Withdraw != 9*time.Second || p.Duration != 2*time.Second {
		t.Fatalf("never-started pod: withdraw %v duration %v, want 9s and 2s", p.Withdraw, p.Duration)
	}
	// Still waiting when the trace was taken: it waits, or runs, until the
	// last time the trace records (share's deletion at 100).
	w := tr.Pods[3]
	if w.Pod.Name != "waiting" || w.Withdraw != 100*time.Second || w.Duration != 70*time.Second {
		t.Fatalf("pod %s waiting at the trace's end: withdraw %v duration %v, want 100s and 70s", w.Pod.Name, w.Withdraw, w.Duration)
	}
}

// Two columns of one name: which one is read would be a guess.
func TestDuplicateHeaderColumnsAreRefused(t *testing.T) {
	p := writeFile(t, "pods.csv", "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time,creation_time\na,1,1,1,500,,LS,Running,0,1,0,99999\n")
	if _, err := LoadOpenbPods(p); err == nil || !strings.Contains(err.Error(), "pods.csv:1: columns 9 and 12 are both creation_time; keep one") {
		t.Fatalf("want the duplicate column named, got %v", err)
	}
}

func TestOpenbBadRowsNameFileLineColumn(t *testing.T) {
	header := "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time\n"
	cases := map[string]struct{ body, want string }{
		"not a number":  {"a,6000,100,1,abc,,LS,Running,0,1,0\n", ":2: column 5 (gpu_milli): \"abc\" is not an integer"},
		"share on many": {"a,1,1,1,500,,LS,Running,0,1,0\nb,1,1,2,500,,LS,Running,0,1,0\n", ":3: column 5 (gpu_milli): 500 milli on each of 2 GPUs"},
		"milli range":   {"a,1,1,1,1500,,LS,Running,0,1,0\n", ":2: column 5 (gpu_milli): 1500 is out of range 0..1000"},
		// Whole numbers past an int64 were "not an integer".
		"huge":          {"a,1e30,1,1,500,,LS,Running,0,1,0\n", ":2: column 2 (cpu_milli): 1e30 is out of range 0..2147483647"},
		"huge digits":   {"a,1,99999999999999999999,1,500,,LS,Running,0,1,0\n", ":2: column 3 (memory_mib): 99999999999999999999 is out of range 0..2147483647"},
		"infinite":      {"a,1,1,Inf,500,,LS,Running,0,1,0\n", ":2: column 4 (num_gpu): \"Inf\" is not an integer"},
		"half":          {"a,1,1,1.5,500,,LS,Running,0,1,0\n", ":2: column 4 (num_gpu): \"1.5\" is not an integer"},
		"time order":    {"a,1,1,1,500,,LS,Running,10,5,10\n", ":2: column 10 (deletion_time): 5 is before creation_time 10"},
		"no deletion":   {"a,1,1,1,500,,LS,Running,0,1,0\nb,1,1,1,500,,LS,Running,10,,20\n", ":3: column 10 (deletion_time): is empty, but scheduled_time is 20"},
		"run backwards": {"a,1,1,1,500,,LS,Running,10,15,20\n", ":2: column 10 (deletion_time): 15 is before scheduled_time 20"},
		"duplicate":     {"a,1,1,0,0,,LS,Running,0,1,0\na,1,1,0,0,,LS,Running,0,1,0\n", ":3: column 1 (name): pod \"a\" already appears on line 2"},
		"bad quotes":    {"a,1,1,0,0,\"x,LS\n", "pods.csv:2:"},
		"short row":     {"a,1,1\n", "pods.csv:2:"},
	}
	for name, c := range cases {
		p := writeFile(t, "pods.csv", header+c.body)
		_, err := LoadOpenbPods(p)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "pods.csv") {
			t.Errorf("%s: want an error naming pods.csv and %q, got %v", name, c.want, err)
		}
	}
	p := writeFile(t, "pods.csv", "name,cpu\n")
	if _, err := LoadOpenbPods(p); err == nil || !strings.Contains(err.Error(), "header lacks column(s) cpu_milli, memory_mib") {
		t.Errorf("missing columns: %v", err)
	}
	n := writeFile(t, "nodes.csv", "sn,cpu_milli,memory_mib,gpu,model\nn1,1000,1000,2,\n")
	if _, err := LoadOpenbNodes(n); err == nil || !strings.Contains(err.Error(), "nodes.csv:2: column 5 (model): node has 2 GPUs but no model") {
		t.Errorf("GPU node without model: %v", err)
	}
}

func TestLoadPhilly(t *testing.T) {
	p := writeFile(t, "jobs.csv", "timestamp,duration,num_gpus,gpu_time,cluster\n"+
		"100,3600,4,14400,vc1\n"+
		"40,60,20,1200,VC2\n"+
		"120,10,0,0,\n")
	tr, err := LoadPhilly(p, DefaultPhillyOptions())
	if err != nil {
		t.Fatal(err)
	}
	// The 20-GPU job (arriving first, at 0 after rebasing) becomes a gang of 8+8+4.
	if len(tr.Pods) != 5 {
		t.Fatalf("%d pods, want 5", len(tr.Pods))
	}
	var sizes []int64
	for _, tp := range tr.Pods[:3] {
		if tp.Arrival != 0 || tp.Pod.Labels[gang.LabelName] != "job-000002" || tp.Pod.Labels[gang.KeySize] != "3" || tp.Pod.Namespace != "vc2" {
			t.Fatalf("gang pod %s: arrival %v labels %v ns %s", tp.Pod.Name, tp.Arrival, tp.Pod.Labels, tp.Pod.Namespace)
		}
		r, _ := gpu.ParsePodRequest(tp.Pod)
		sizes = append(sizes, r.GPUs)
	}
	if sizes[0] != 8 || sizes[1] != 8 || sizes[2] != 4 {
		t.Fatalf("gang pod GPUs %v, want 8 8 4", sizes)
	}
	single := tr.Pods[3]
	if single.Arrival != 60*time.Second || single.Duration != time.Hour || single.Pod.Labels[gang.LabelName] != "" {
		t.Fatalf("single job %+v", single)
	}
	if cpu := single.Pod.Spec.Containers[0].Resources.Requests.Cpu().MilliValue(); cpu != 4*4000 {
		t.Fatalf("single job CPU %d, want 4 GPUs x 4000m", cpu)
	}
	if tr.Pods[4].Pod.Namespace != SimNamespace {
		t.Fatalf("job without cluster in namespace %q", tr.Pods[4].Pod.Namespace)
	}
	bad := writeFile(t, "jobs.csv", "timestamp,duration,num_gpus,gpu_time,cluster\n1,2,x,3,vc\n")
	if _, err := LoadPhilly(bad, DefaultPhillyOptions()); err == nil || !strings.Contains(err.Error(), "jobs.csv:2: column 3 (num_gpus)") {
		t.Fatalf("bad num_gpus: %v", err)
	}
}

// Any cluster name gives a valid namespace of its own.
func TestPhillyClusterNamespaces(t *testing.T) {
	seen := map[string]string{}
	for _, c := range []string{"vc1", "VC1", "6214e9", "vc_1!", "vc-1", "VC 1", "___", strings.Repeat("Team_", 20), strings.Repeat("team_", 20)} {
		ns := namespaceFor(c)
		if errs := validation.IsDNS1123Label(ns); len(errs) > 0 {
			t.Errorf("cluster %q: namespace %q is not valid: %v", c, ns, errs)
		}
		if prev, ok := seen[ns]; ok && !strings.EqualFold(prev, c) {
			t.Errorf("clusters %q and %q share namespace %q", prev, c, ns)
		}
		seen[ns] = c
	}
	if ns := namespaceFor("VC1"); ns != "vc1" {
		t.Errorf("VC1 -> %q, want vc1 (a valid name lowercased, nothing added)", ns)
	}
	if ns := namespaceFor(""); ns != SimNamespace {
		t.Errorf("no cluster -> %q, want %q", ns, SimNamespace)
	}
}

func TestImpossiblePodsAreReported(t *testing.T) {
	nodes := []*v1.Node{NewNode("t4", 64000, 262144, 2, "Tesla-T4"), NewNode("cpu", 32000, 131072, 0, "")}
	pods := []*v1.Pod{
		NewPod("ns", "fits", 1000, 1024, 2, 1000, nil),
		NewPod("ns", "eight", 1000, 1024, 8, 1000, nil),
		NewPod("ns", "model", 1000, 1024, 1, 500, []string{"NVIDIA-A10"}),
		NewPod("ns", "cpu", 100000, 1024, 0, 0, nil),
	}
	got := Impossible(nodes, pods)
	if len(got) != 3 {
		t.Fatalf("impossible %+v, want eight, model and cpu", got)
	}
	for i, want := range []string{"at most 2 GPUs", "no node has that GPU model", "more than any node has (at most 64000m CPU"} {
		if !strings.Contains(got[i].Reason, want) {
			t.Errorf("%s: reason %q, want %q", got[i].Pod, got[i].Reason, want)
		}
	}
}

// A Philly-derived file may come without its header, and without the columns
// the replay does not need; a header that is neither format's is named.
func TestPhillyWithoutHeaderAndFormatDetection(t *testing.T) {
	withHeader := writeFile(t, "jobs.csv", "timestamp,duration,num_gpus,gpu_time,cluster\n100,3600,4,14400,vc1\n40,60,20,1200,VC2\n")
	bare := writeFile(t, "bare.csv", "100,3600,4,14400,vc1\n40,60,20,1200,VC2\n")
	short := writeFile(t, "short.csv", "Timestamp,Duration,NUM_GPUS\n100,3600,4\n40,60,20\n") // as a spreadsheet may title them
	bareShort := writeFile(t, "bare-short.csv", "\ufeff100,3600,4\r\n40,60,20\r\n")           // as spreadsheets save it
	want, err := LoadPhilly(withHeader, DefaultPhillyOptions())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{bare, short, bareShort} {
		if f, err := DetectFormat(p); err != nil || f != FormatPhilly {
			t.Errorf("%s: format %q, %v; want philly", p, f, err)
		}
		tr, err := LoadTrace(p, FormatAuto, DefaultPhillyOptions())
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		if len(tr.Pods) != len(want.Pods) {
			t.Fatalf("%s: %d pods, want %d", p, len(tr.Pods), len(want.Pods))
		}
		for i, tp := range tr.Pods {
			w := want.Pods[i]
			r, _ := gpu.ParsePodRequest(tp.Pod)
			wr, _ := gpu.ParsePodRequest(w.Pod)
			if tp.Arrival != w.Arrival || tp.Duration != w.Duration || r.GPUs != wr.GPUs || (tp.Pod.Labels[gang.LabelName] == "") != (w.Pod.Labels[gang.LabelName] == "") {
				t.Errorf("%s: pod %d %+v, want %+v", p, i, tp, w)
			}
		}
		// Without a header the first row is a job (line 1), not a header.
		if p == bare && tr.Pods[len(tr.Pods)-1].Source != bare+":1" {
			t.Errorf("%s: the last job to arrive comes from %s, want line 1", p, tr.Pods[len(tr.Pods)-1].Source)
		}
	}
	openb := writeFile(t, "pods.csv", "name,cpu_milli,memory_mib,num_gpu,gpu_milli,creation_time\np,1000,1024,1,1000,0\n")
	if f, err := DetectFormat(openb); err != nil || f != FormatOpenb {
		t.Errorf("openb pod list: %q, %v", f, err)
	}
	for name, content := range map[string]string{
		"neither.csv": "job,start,gpus\na,1,2\n",
		"semi.csv":    "timestamp;duration;num_gpus\n0;60;1\n",
		"empty.csv":   "",
	} {
		p := writeFile(t, name, content)
		if _, err := LoadTrace(p, FormatAuto, DefaultPhillyOptions()); err == nil || !strings.Contains(err.Error(), name) || !strings.Contains(err.Error(), "Philly-derived") {
			t.Errorf("%s: %v, want an error naming the file and both formats", name, err)
		}
	}
	if _, err := LoadTrace(writeFile(t, "semi.csv", "timestamp;duration;num_gpus\n0;60;1\n"), FormatAuto, DefaultPhillyOptions()); err == nil || !strings.Contains(err.Error(), `separate its columns with ";"; use commas`) {
		t.Errorf("semicolons: %v, want the separator named", err)
	}
	if _, err := LoadTrace(writeFile(t, "ragged.csv", "timestamp,duration,num_gpus\n0,60,1,5\n"), FormatAuto, DefaultPhillyOptions()); err == nil || !strings.Contains(err.Error(), "ragged.csv:2:1: wrong number of fields: every row needs as many comma-separated columns as the first") {
		t.Errorf("a row longer than the header: %v", err)
	}
	wide := writeFile(t, "wide.csv", "1,2,3,4,vc,6\n")
	if _, err := LoadPhilly(wide, DefaultPhillyOptions()); err == nil || !strings.Contains(err.Error(), "wide.csv:1: a row without a header has 6 columns") {
		t.Errorf("six columns without a header: %v", err)
	}
	badRow := writeFile(t, "bad.csv", "1,2,3\n4,5,x\n")
	if _, err := LoadPhilly(badRow, DefaultPhillyOptions()); err == nil || !strings.Contains(err.Error(), "bad.csv:2: column 3 (num_gpus)") {
		t.Errorf("bad num_gpus without a header: %v", err)
	}
}

// Timestamps cut from a raw job log are date-times; only the times between
// rows count, and a file that mixes them with seconds, or writes a date
// another way, is refused with the line.
func TestPhillyDateTimes(t *testing.T) {
	want, err := LoadPhilly(writeFile(t, "jobs.csv", "timestamp,duration,num_gpus\n100,3600,4\n40.5,60,20\n"), DefaultPhillyOptions())
	if err != nil {
		t.Fatal(err)
	}
	for name, content := range map[string]string{
		"dated.csv":      "timestamp,duration,num_gpus\n2017-10-03 03:01:40,3600,4\n2017-10-03 03:00:40.5,60,20\n",
		"bare-dated.csv": "2017-10-03T03:01:40Z,3600,4\n2017-10-03T04:00:40.5+01:00,60,20\n",
	} {
		p := writeFile(t, name, content)
		tr, err := LoadTrace(p, FormatAuto, DefaultPhillyOptions())
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if len(tr.Pods) != len(want.Pods) {
			t.Fatalf("%s: %d pods, want %d", name, len(tr.Pods), len(want.Pods))
		}
		for i, tp := range tr.Pods {
			if w := want.Pods[i]; tp.Arrival != w.Arrival || tp.Duration != w.Duration {
				t.Errorf("%s: pod %d arrives at %v for %v, want %v for %v", name, i, tp.Arrival, tp.Duration, w.Arrival, w.Duration)
			}
		}
	}
	for name, c := range map[string]struct{ content, want string }{
		"mixed.csv": {"timestamp,duration,num_gpus\n2017-10-03 03:01:40,3600,4\n100,60,20\n", "mixed.csv:3: column 1 (timestamp): line 3 holds seconds and line 2 a date-time"},
		"us.csv":    {"timestamp,duration,num_gpus\n10/03/2017,3600,4\n", `us.csv:2: column 1 (timestamp): "10/03/2017" is neither seconds nor a date-time`},
	} {
		if _, err := LoadPhilly(writeFile(t, name, c.content), DefaultPhillyOptions()); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", name, err, c.want)
		}
	}
}

// Times that are not finite, would overflow a duration, or are missing are
// refused with the line and column, not read as 0 or wrapped round to
// negative bills.
func TestTraceTimesMustBeFiniteAndPresent(t *testing.T) {
	openbHeader := "name,cpu_milli,memory_mib,num_gpu,gpu_milli,creation_time,deletion_time,scheduled_time\n"
	for name, c := range map[string]struct{ content, want string }{
		"nan.csv":   {"timestamp,duration,num_gpus\n0,NaN,1\n", `nan.csv:2: column 2 (duration): "NaN" is not a finite number`},
		"inf.csv":   {"timestamp,duration,num_gpus\nInf,60,1\n", `inf.csv:2: column 1 (timestamp): "Inf" is not a finite number`},
		"range.csv": {"timestamp,duration,num_gpus\n0,1e309,1\n", `range.csv:2: column 2 (duration): "1e309" is out of range`},
		"huge.csv":  {"timestamp,duration,num_gpus\n0,9999999999999,1\n", `huge.csv:2: column 2 (duration): 9.999999999999e+12 s is more than a hundred years`},
		"gap.csv":   {"timestamp,duration,num_gpus\n0,60,1\n1e10,60,1\n", `gap.csv:3: column 1 (timestamp): the job arrives 1e+10 s after the first`},
		// Not a 31-digit number.
		"far.csv":       {"timestamp,duration,num_gpus\n0,60,1\n1e30,60,1\n", `far.csv:3: column 1 (timestamp): the job arrives 1e+30 s after the first, more than a hundred years`},
		"no-ts.csv":     {"timestamp,duration,num_gpus\n,60,1\n", `no-ts.csv:2: column 1 (timestamp): is empty`},
		"no-dur.csv":    {"timestamp,duration,num_gpus\n0,,1\n", `no-dur.csv:2: column 2 (duration): is empty`},
		"no-gpus.csv":   {"timestamp,duration,num_gpus\n0,60,\n", `no-gpus.csv:2: column 3 (num_gpus): is empty`},
		"pods.csv":      {openbHeader + "p,1000,1024,1,1000,,10,0\n", `pods.csv:2: column 6 (creation_time): is empty`},
		"pods-huge.csv": {openbHeader + "p,1000,1024,1,1000,0,1e12,0\n", `pods-huge.csv:2: column 7 (deletion_time): 1e+12 s is more than a hundred years`},
		"pods-nan.csv":  {openbHeader + "p,1000,1024,1,1000,NaN,10,0\n", `pods-nan.csv:2: column 6 (creation_time): "NaN" is not a finite number`},
		"pods-name.csv": {openbHeader + "Bad Name!!,1000,1024,1,1000,0,10,0\n", `pods-name.csv:2: column 1 (name): "Bad Name!!" cannot name a Kubernetes pod`},
	} {
		if _, err := LoadTrace(writeFile(t, name, c.content), FormatAuto, DefaultPhillyOptions()); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", name, err, c.want)
		}
	}
}

// The job list of Alibaba's Spot GPU trace: a job is worker_num pods of the
// worker's requests, a gang when there are several; its type and cost
// organization come along, and a share of a GPU stays a share.
func TestLoadSpotGPU(t *testing.T) {
	p := writeFile(t, "job_info_df.csv", "job_name,organization,gpu_model,cpu_request,gpu_request,worker_num,submit_time,duration,job_type\n"+
		"239255,13,A10,20,1,1,100,2764799,HP\n"+
		"437260,57,A100-SXM4-80GB,15,1,16,9589763,41060,Spot\n"+
		"500001,Team B,GPU-series-1,4,0.5,1,200,7200,Spot\n"+
		"500002,22,,,8,1,300,3600,\n")
	if f, err := DetectFormat(p); err != nil || f != FormatSpotGPU {
		t.Fatalf("format %q, %v; want %s", f, err, FormatSpotGPU)
	}
	tr, err := LoadTrace(p, FormatAuto, DefaultPhillyOptions())
	if err != nil {
		t.Fatal(err)
	}
	if len(tr.Pods) != 19 {
		t.Fatalf("%d pods, want 1 + 16 + 1 + 1", len(tr.Pods))
	}
	requests := func(tp TracePod) (cpu, memGiB int64, r gpu.Request) {
		res := tp.Pod.Spec.Containers[0].Resources.Requests
		r, err := gpu.ParsePodRequest(tp.Pod)
		if err != nil {
			t.Fatal(err)
		}
		return res.Cpu().MilliValue(), res.Memory().Value() >> 30, r
	}
	hp := tr.Pods[0]
	if cpu, mem, r := requests(hp); hp.Arrival != 0 || hp.Duration != 2764799*time.Second || hp.Pod.Labels[LabelQoS] != "HP" || hp.Pod.Namespace != "13" ||
		cpu != 20000 || mem != 80 || r.GPUs != 1 || hp.Pod.Annotations[AnnotationTraceGPUModel] != "A10" || hp.Pod.Labels[gang.LabelName] != "" {
		t.Errorf("HP job: %+v (cpu %d, %d GiB, %+v)", hp, cpu, mem, r)
	}
	share := tr.Pods[1]
	if cpu, mem, r := requests(share); share.Arrival != 100*time.Second || cpu != 4000 || mem != 16 || r.GPUs != 0 || r.TotalMilli() != 500 || share.Pod.Namespace != namespaceFor("Team B") {
		t.Errorf("half-GPU job: %+v (cpu %d, %d GiB, %+v)", share, cpu, mem, r)
	}
	// No cpu_request: 4 cores per GPU, as --philly-cpu-per-gpu says; memory
	// then follows the GPUs (32 GiB each) or the cores (4 GiB each),
	// whichever is more.
	eight := tr.Pods[2]
	if cpu, mem, r := requests(eight); cpu != 32000 || mem != 256 || r.GPUs != 8 || eight.Pod.Labels[LabelQoS] != "" || eight.Pod.Namespace != "22" {
		t.Errorf("8-GPU job without cpu_request: %+v (cpu %d, %d GiB, %+v)", eight, cpu, mem, r)
	}
	for _, tp := range tr.Pods[3:] {
		if tp.Arrival != 9589663*time.Second || tp.Pod.Labels[gang.LabelName] != "job-000002" || tp.Pod.Labels[gang.KeySize] != "16" || tp.Pod.Labels[LabelQoS] != "Spot" || tp.Source != p+":3" {
			t.Fatalf("worker %s: arrival %v labels %v source %s", tp.Pod.Name, tp.Arrival, tp.Pod.Labels, tp.Source)
		}
	}
	for name, tc := range map[string]struct{ row, want string }{
		"fraction.csv": {"1,o,A10,4,1.5,1,0,60,Spot", "fraction.csv:2: column 5 (gpu_request): 1.5 GPUs: a request over one GPU must be whole"},
		"workers.csv":  {"1,o,A10,4,1,0,0,60,Spot", "workers.csv:2: column 6 (worker_num): 0 is out of range 1..4096"},
		"cpu.csv":      {"1,o,A10,-4,1,1,0,60,Spot", "cpu.csv:2: column 4 (cpu_request): -4 is below 0"},
		"empty.csv":    {"1,o,A10,4,,1,0,60,Spot", "empty.csv:2: column 5 (gpu_request): is empty; every row needs it"},
		"tiny.csv":     {"1,o,A10,4,0.0004,1,0,60,Spot", "tiny.csv:2: column 5 (gpu_request): 0.0004 GPUs is under the thousandth of a GPU"},
	} {
		f := writeFile(t, name, "job_name,organization,gpu_model,cpu_request,gpu_request,worker_num,submit_time,duration,job_type\n"+tc.row+"\n")
		if _, err := LoadTrace(f, FormatAuto, DefaultPhillyOptions()); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v; want %q", name, err, tc.want)
		}
	}
	noWorkers := writeFile(t, "short.csv", "job_name,gpu_request,submit_time,duration\n1,1,0,60\n")
	if _, err := LoadTrace(noWorkers, FormatSpotGPU, DefaultPhillyOptions()); err == nil || !strings.Contains(err.Error(), "header lacks column(s) worker_num") {
		t.Errorf("without worker_num: %v", err)
	}
}

// A Spot GPU job list writes its submit times one way, as Philly's and
// Helios's do: read together, seconds and date-times (seconds from 1970)
// would put a job decades after the others.
func TestSpotGPUTimesOneWay(t *testing.T) {
	const header = "job_name,organization,gpu_model,cpu_request,gpu_request,worker_num,submit_time,duration,job_type\n"
	for name, c := range map[string]struct{ rows, want string }{
		"seconds-first.csv": {"1,o,A10,4,1,1,100,60,Spot\n2,o,A10,4,1,1,2017-10-03 03:01:40,60,Spot\n", "seconds-first.csv:3: column 7 (submit_time): line 2 holds seconds and line 3 a date-time; write every timestamp one way"},
		"dated-first.csv":   {"1,o,A10,4,1,1,2017-10-03 03:01:40,60,Spot\n2,o,A10,4,1,1,100,60,Spot\n", "dated-first.csv:3: column 7 (submit_time): line 3 holds seconds and line 2 a date-time"},
	} {
		if _, err := LoadTrace(writeFile(t, name, header+c.rows), FormatAuto, DefaultPhillyOptions()); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v; want %q", name, err, c.want)
		}
	}
	tr, err := LoadTrace(writeFile(t, "dated.csv", header+"1,o,A10,4,1,1,2017-10-03 03:01:40,60,Spot\n2,o,A10,4,1,1,2017-10-03 03:00:40,60,Spot\n"), FormatAuto, DefaultPhillyOptions())
	if err != nil {
		t.Fatal(err)
	}
	if got := tr.Pods[1].Arrival; got != time.Minute {
		t.Errorf("second job arrives at %v, want 1m0s", got)
	}
}

func TestLoadHelios(t *testing.T) {
	const header = "job_id,user,vc,gpu_num,cpu_num,node_num,state,submit_time,start_time,end_time,duration,queue\n"
	p := writeFile(t, "cluster_log.csv", header+
		"1425511,uXBbc,vcJkd,1,1,1,COMPLETED,2020-06-09 18:41:01,2020-06-09 18:41:01,2020-06-10 04:55:09,36848,0\n"+
		"1425512,uVMrF,vchbv,4,16,1,FAILED,2020-06-09 18:41:27,2020-06-09 18:41:27,2020-06-09 18:45:36,249,0\n"+
		"1425513,uzqls,vcpDC,0,2,1,CANCELLED,2020-06-09 18:41:28,2020-06-09 18:41:28,2020-06-17 14:15:21,675233,0\n"+
		"1425514,uzqls,vcpDC,17,,2,COMPLETED,2020-06-09 18:42:01,2020-06-09 18:50:01,2020-06-09 19:50:01,3600,480\n")
	if f, err := DetectFormat(p); err != nil || f != FormatHelios {
		t.Fatalf("format %q, %v; want %s", f, err, FormatHelios)
	}
	tr, err := LoadTrace(p, FormatAuto, DefaultPhillyOptions())
	if err != nil {
		t.Fatal(err)
	}
	// 1 + 1 + 1, and the 17-GPU job on two nodes as three pods: no pod
	// takes more than 8 GPUs.
	if len(tr.Pods) != 6 {
		t.Fatalf("%d pods, want 6", len(tr.Pods))
	}
	requests := func(tp TracePod) (cpu, memGiB, gpus int64) {
		res := tp.Pod.Spec.Containers[0].Resources.Requests
		r, err := gpu.ParsePodRequest(tp.Pod)
		if err != nil {
			t.Fatal(err)
		}
		return res.Cpu().MilliValue(), res.Memory().Value() >> 30, r.GPUs
	}
	want := []struct {
		name, ns       string
		arrival, run   time.Duration
		cpu, mem, gpus int64
		gang           string
	}{
		{"job-000001", "vcjkd", 0, 36848 * time.Second, 1000, 32, 1, ""},
		{"job-000002", "vchbv", 26 * time.Second, 249 * time.Second, 16000, 128, 4, ""},
		{"job-000003", "vcpdc", 27 * time.Second, 675233 * time.Second, 2000, 8, 0, ""},
		// No cpu_num: --philly-cpu-per-gpu per GPU (4 cores) of each pod;
		// the GPUs split evenly, the first pods taking the remainder.
		{"job-000004-0", "vcpdc", 60 * time.Second, time.Hour, 24000, 192, 6, "job-000004"},
		{"job-000004-1", "vcpdc", 60 * time.Second, time.Hour, 24000, 192, 6, "job-000004"},
		{"job-000004-2", "vcpdc", 60 * time.Second, time.Hour, 20000, 160, 5, "job-000004"},
	}
	for i, w := range want {
		tp := tr.Pods[i]
		cpu, mem, gpus := requests(tp)
		if tp.Pod.Name != w.name || tp.Pod.Namespace != w.ns || tp.Arrival != w.arrival || tp.Duration != w.run ||
			cpu != w.cpu || mem != w.mem || gpus != w.gpus || tp.Pod.Labels[gang.LabelName] != w.gang {
			t.Errorf("pod %d: %s/%s arrival %v run %v cpu %d mem %d GiB gpus %d gang %q; want %+v",
				i, tp.Pod.Namespace, tp.Pod.Name, tp.Arrival, tp.Duration, cpu, mem, gpus, tp.Pod.Labels[gang.LabelName], w)
		}
	}
	if tr.Pods[5].Pod.Labels[gang.KeySize] != "3" || tr.Pods[5].Source != p+":5" {
		t.Errorf("gang member: labels %v, source %s", tr.Pods[5].Pod.Labels, tr.Pods[5].Source)
	}
	for name, tc := range map[string]struct{ row, want string }{
		"gpus.csv":  {"1,u,vc,1.5,1,1,COMPLETED,2020-06-09 18:41:01,,,60,0", "gpus.csv:2: column 4 (gpu_num): \"1.5\" is not an integer"},
		"nodes.csv": {"1,u,vc,1,1,-1,COMPLETED,2020-06-09 18:41:01,,,60,0", "nodes.csv:2: column 6 (node_num): -1 is out of range 0..4096"},
		"when.csv":  {"1,u,vc,1,1,1,COMPLETED,June 9,,,60,0", "when.csv:2: column 8 (submit_time): \"June 9\" is neither seconds nor a date-time"},
		"dur.csv":   {"1,u,vc,1,1,1,COMPLETED,2020-06-09 18:41:01,,,,0", "dur.csv:2: column 11 (duration): is empty; every row needs it"},
		"mixed.csv": {"1,u,vc,1,1,1,COMPLETED,2020-06-09 18:41:01,,,60,0\n2,u,vc,1,1,1,COMPLETED,100,,,60,0", "mixed.csv:3: column 8 (submit_time): line 3 holds seconds and line 2 a date-time"},
	} {
		f := writeFile(t, name, header+tc.row+"\n")
		if _, err := LoadTrace(f, FormatAuto, DefaultPhillyOptions()); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v; want %q", name, err, tc.want)
		}
	}
	noGPUs := writeFile(t, "short.csv", "job_id,vc,node_num,submit_time,duration\n1,vc,1,2020-06-09 18:41:01,60\n")
	if _, err := LoadTrace(noGPUs, FormatHelios, DefaultPhillyOptions()); err == nil || !strings.Contains(err.Error(), "header lacks column(s) gpu_num") {
		t.Errorf("without gpu_num: %v", err)
	}
}

// A spreadsheet or pandas (utf-8-sig with every field quoted) may start the
// file with a byte-order mark right before a quoted header: the mark is not
// part of the first field, so the quote opens it.
func TestQuotedHeaderAfterByteOrderMark(t *testing.T) {
	for name, tc := range map[string]struct{ format, content string }{
		"openb.csv":  {FormatOpenb, "\ufeff\"name\",\"cpu_milli\",\"memory_mib\",\"num_gpu\",\"gpu_milli\",\"creation_time\"\r\n\"p\",\"1000\",\"1024\",\"1\",\"1000\",\"0\"\r\n"},
		"philly.csv": {FormatPhilly, "\ufeff\"timestamp\",\"duration\",\"num_gpus\"\r\n\"0\",\"60\",\"1\"\r\n"},
		"bare.csv":   {FormatPhilly, "\ufeff\"0\",\"60\",\"1\"\r\n"},
	} {
		p := writeFile(t, name, tc.content)
		if f, err := DetectFormat(p); err != nil || f != tc.format {
			t.Errorf("%s: format %q, %v; want %s", name, f, err, tc.format)
		}
		tr, err := LoadTrace(p, tc.format, DefaultPhillyOptions())
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if r, _ := gpu.ParsePodRequest(tr.Pods[0].Pod); len(tr.Pods) != 1 || r.GPUs != 1 {
			t.Errorf("%s: %d pods asking %d GPUs, want one asking 1", name, len(tr.Pods), r.GPUs)
		}
	}
}

// A cpu_request too large for its millicores and memory to be counted is
// refused: it overflowed into a worker that asked for no CPU at all.
func TestSpotGPUHugeCPURequestIsRefused(t *testing.T) {
	const header = "job_name,organization,gpu_model,cpu_request,gpu_request,worker_num,submit_time,duration,job_type\n"
	for _, cpus := range []string{"1e300", "1e13", "2000000"} {
		p := writeFile(t, "job_info_df.csv", header+"j1,org,A10,"+cpus+",1,1,0,60,Spot\n")
		want := "job_info_df.csv:2: column 4 (cpu_request): " + cpus
		if _, err := LoadSpotGPU(p, DefaultPhillyOptions()); err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "more than any node holds") {
			t.Errorf("cpu_request %s: %v; want an error starting %q", cpus, err, want)
		}
	}
	// The most a worker may ask still reads as what it asks.
	p := writeFile(t, "job_info_df.csv", header+"j1,org,A10,1048576,1,1,0,60,Spot\n")
	tr, err := LoadSpotGPU(p, DefaultPhillyOptions())
	if err != nil {
		t.Fatal(err)
	}
	if got := tr.Pods[0].Pod.Spec.Containers[0].Resources.Requests.Cpu().MilliValue(); got != 1048576000 {
		t.Errorf("1048576 vCPUs read as %dm", got)
	}
}

func gzipFile(t *testing.T, name string, content []byte) string {
	t.Helper()
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	if _, err := zw.Write(content); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// A trace shipped compressed reads as the same trace, whatever its name.
func TestGzippedTraceReadsAsItsContent(t *testing.T) {
	plain := filepath.Join(openbDir(t), "openb_pod_list_default.csv")
	raw, err := os.ReadFile(plain)
	if err != nil {
		t.Fatal(err)
	}
	want, err := LoadTrace(plain, FormatAuto, DefaultPhillyOptions())
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"pods.csv.gz", "pods.csv"} {
		p := gzipFile(t, name, raw)
		if f, err := DetectFormat(p); err != nil || f != FormatOpenb {
			t.Fatalf("%s: DetectFormat = %q, %v; want %s", name, f, err, FormatOpenb)
		}
		got, err := LoadTrace(p, FormatAuto, DefaultPhillyOptions())
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if len(got.Pods) != len(want.Pods) || len(got.Pods) == 0 {
			t.Fatalf("%s: %d pods, want %d", name, len(got.Pods), len(want.Pods))
		}
		for i := range want.Pods {
			// Source names the file and line read; only the file differs.
			if g, w := strings.TrimPrefix(got.Pods[i].Source, p), strings.TrimPrefix(want.Pods[i].Source, plain); g != w {
				t.Fatalf("%s: pod %d read from line %q, want %q", name, i, g, w)
			}
			got.Pods[i].Source = want.Pods[i].Source
			if !reflect.DeepEqual(got.Pods[i], want.Pods[i]) {
				t.Fatalf("%s: pod %d differs:\n got %+v\nwant %+v", name, i, got.Pods[i], want.Pods[i])
			}
		}
	}

	philly := gzipFile(t, "jobs.gz", []byte("0,3600,4\n60,120,1\n"))
	tr, err := LoadTrace(philly, FormatAuto, DefaultPhillyOptions())
	if err != nil || len(tr.Pods) != 2 {
		t.Fatalf("gzipped Philly rows without a header: %v, %v", tr, err)
	}

	// Cut short: the error says where the file is and that it ended early.
	whole, err := os.ReadFile(gzipFile(t, "x.gz", raw))
	if err != nil {
		t.Fatal(err)
	}
	cut := filepath.Join(t.TempDir(), "cut.csv.gz")
	if err := os.WriteFile(cut, whole[:len(whole)/2], 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadTrace(cut, FormatOpenb, DefaultPhillyOptions()); err == nil || !strings.Contains(err.Error(), cut) || !strings.Contains(err.Error(), "unexpected EOF") {
		t.Fatalf("a gzip trace cut short: %v; want an error naming %s and the early end", err, cut)
	}
	// Two bytes of gzip's magic and nothing else cannot be a trace.
	bad := writeFile(t, "bad.gz", "\x1f\x8bxx")
	if _, err := LoadTrace(bad, FormatOpenb, DefaultPhillyOptions()); err == nil || !strings.Contains(err.Error(), "gunzip") {
		t.Fatalf("a broken gzip header: %v; want an error that says to gunzip it", err)
	}
}

// openb's times are absolute: a pod the trace deleted at its first second,
// never started, is withdrawn as it arrives like one deleted at any other
// time, not placed and run (on an elastic fleet, a node launched for it).
func TestOpenbPodDeletedAtTimeZeroIsWithdrawn(t *testing.T) {
	pods := writeFile(t, "pods.csv", "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time\n"+
		"gone,1000,1024,1,1000,,BE,Failed,0,0,\n"+
		"later,1000,1024,1,1000,,BE,Failed,5,5,\n"+
		"runs,1000,1024,1,1000,,BE,Succeeded,10,3610,10\n")
	tr, err := LoadOpenbPods(pods)
	if err != nil {
		t.Fatal(err)
	}
	for _, policy := range []string{"default", "penny"} {
		res := spotReplay(t, spotScenario(t, "4", "0s"), policy, 1, tr.Pods...)
		if res.Withdrawn != 2 || res.PodsCompleted != 1 {
			t.Errorf("%s: %d pods withdrawn and %d completed, want 2 and 1", policy, res.Withdrawn, res.PodsCompleted)
		}
	}
}
