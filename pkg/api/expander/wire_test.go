package expander

import (
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// A request as Cluster Autoscaler's own generated code puts it on the wire
// (cluster-autoscaler/expander/grpcplugin/protos: options = 1, nodeMap = 2,
// nodeBytesMap = 3; Option: nodeGroupId = 1, nodeCount = 2, debug = 3,
// pod = 4, podBytes = 5; map entries key = 1, value = 2), written field by
// field so that a renumbering here cannot pass unnoticed.
func TestWireMatchesClusterAutoscaler(t *testing.T) {
	entry := func(key string, value []byte) []byte {
		var b []byte
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		b = protowire.AppendString(b, key)
		b = protowire.AppendTag(b, 2, protowire.BytesType)
		return protowire.AppendBytes(b, value)
	}
	var opt []byte
	opt = protowire.AppendTag(opt, 1, protowire.BytesType)
	opt = protowire.AppendString(opt, "g5-spot")
	opt = protowire.AppendTag(opt, 2, protowire.VarintType)
	opt = protowire.AppendVarint(opt, 3)
	opt = protowire.AppendTag(opt, 3, protowire.BytesType)
	opt = protowire.AppendString(opt, "why")
	opt = protowire.AppendTag(opt, 4, protowire.BytesType)
	opt = protowire.AppendBytes(opt, []byte("old pod"))
	opt = protowire.AppendTag(opt, 5, protowire.BytesType)
	opt = protowire.AppendBytes(opt, []byte("pod"))
	var req []byte
	req = protowire.AppendTag(req, 1, protowire.BytesType)
	req = protowire.AppendBytes(req, opt)
	req = protowire.AppendTag(req, 2, protowire.BytesType)
	req = protowire.AppendBytes(req, entry("g5-spot", []byte("old node")))
	req = protowire.AppendTag(req, 3, protowire.BytesType)
	req = protowire.AppendBytes(req, entry("g5-spot", []byte("node")))

	var got BestOptionsRequest
	if err := proto.Unmarshal(req, &got); err != nil {
		t.Fatal(err)
	}
	o := got.GetOptions()
	if len(o) != 1 || o[0].GetNodeGroupId() != "g5-spot" || o[0].GetNodeCount() != 3 || o[0].GetDebug() != "why" ||
		len(o[0].GetPod()) != 1 || string(o[0].GetPod()[0]) != "old pod" || len(o[0].GetPodBytes()) != 1 || string(o[0].GetPodBytes()[0]) != "pod" {
		t.Fatalf("option read as %v", o)
	}
	if string(got.GetNodeMap()["g5-spot"]) != "old node" || string(got.GetNodeBytesMap()["g5-spot"]) != "node" {
		t.Fatalf("nodes read as %v / %v", got.GetNodeMap(), got.GetNodeBytesMap())
	}
	// The answer: BestOptionsResponse.options = 1, read back the same way.
	out, err := proto.Marshal(&BestOptionsResponse{Options: o})
	if err != nil {
		t.Fatal(err)
	}
	num, typ, n := protowire.ConsumeTag(out)
	if n < 0 || num != 1 || typ != protowire.BytesType {
		t.Fatalf("response starts with field %d type %d", num, typ)
	}
	if Expander_BestOptions_FullMethodName != "/grpcplugin.Expander/BestOptions" {
		t.Fatalf("method %s: Cluster Autoscaler calls /grpcplugin.Expander/BestOptions", Expander_BestOptions_FullMethodName)
	}
}
