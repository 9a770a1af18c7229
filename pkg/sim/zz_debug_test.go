package sim

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strings"
	"testing"
)

func TestDebugReasons(t *testing.T) {
	if os.Getenv("SIMDEBUG") == "" {
		t.Skip()
	}
	D := "/work/shared/data/openb/"
	nodes, _ := LoadOpenbNodes(D + "openb_node_list_all_node.csv")
	tr, _ := LoadOpenbPods(D + "openb_pod_list_default.csv")
	pol, _ := LookupPolicy(os.Getenv("SIMDEBUG"))
	capacity := GPUCapacityMilli(nodes)
	wl := TypicalWorkload(tr)
	for _, s := range wl {
		fmt.Printf("%+v\n", s)
	}
	prof, reg, _ := pol.Build(Run{Seed: 42, Workload: wl})
	pods := FillWorkload(tr, capacity, 1.3, 42, true)
	e, err := NewEngine(context.Background(), EngineOptions{Profile: prof, Registry: reg, Nodes: nodes, Seed: 42})
	if err != nil {
		t.Fatal(err)
	}
	reasons := map[string]int{}
	kinds := map[string]int{}
	for _, p := range pods {
		out, err := e.Schedule(p)
		if err != nil {
			t.Fatal(err)
		}
		if out.Node == "" {
			r, _ := newPodRequest(p)
			kinds[r.req.String()]++
			msg := out.Reason
			if i := strings.Index(msg, ":"); i > 0 {
				msg = msg[i:]
			}
			reasons[msg]++
		}
	}
	type kv struct {
		k string
		v int
	}
	var l []kv
	for k, v := range reasons {
		l = append(l, kv{k, v})
	}
	sort.Slice(l, func(i, j int) bool { return l[i].v > l[j].v })
	for i, x := range l {
		if i < 15 {
			fmt.Println(x.v, x.k)
		}
	}
	fmt.Println(kinds)
	nis, _ := e.NodeInfos()
	cat := map[string]int64{}
	for _, ni := range nis {
		n, _ := buildView(ni)
		memFree := ni.GetAllocatable().GetMemory() - ni.GetRequested().GetMemory()
		var full, part int64
		for _, f := range n.free {
			if f == 1000 {
				full += f
			} else {
				part += f
			}
		}
		k := "cpu>=12000"
		if n.cpuFree < 4000 {
			k = "cpu<4000"
		} else if n.cpuFree < 12000 {
			k = "cpu<12000"
		}
		if memFree < 16<<30 {
			k += ",mem<16G"
		}
		cat[k+" full"] += full
		cat[k+" part"] += part
	}
	fmt.Println(cat)
}

func TestDebugDur(t *testing.T) {
	if os.Getenv("SIMDEBUG") == "" {
		t.Skip()
	}
	tr, _ := LoadOpenbPods("/work/shared/data/openb/openb_pod_list_default.csv")
	for _, tp := range tr.Pods[:5] {
		fmt.Println(tp.Pod.Name, tp.Arrival, tp.Duration, tp.Withdraw, tp.Source)
	}
}
