package localcluster

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	_ "unsafe" // for go:linkname

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	_ "k8s.io/apiserver/pkg/storage/storagebackend/factory" // holds apiserverEtcdClientLogger
	"k8s.io/klog/v2"
)

// apiserverEtcdClientLogger is the logger of every etcd client the
// kube-apiserver makes. k8s.io/apiserver builds it when the process starts,
// writing JSON straight to standard error, and offers no way to set it
// (kubernetes/kubernetes#111476 keeps it package-scoped): it alone of the
// control plane's logs bypassed klog, so neither penny up's log file nor
// -v governed it, and each request to etcd that a client or the shutdown
// cancelled printed "retrying of unary invoker failed ... context
// canceled" on the terminal. Should k8s.io/apiserver rename it, the build
// fails here rather than the noise coming back unnoticed.
//
//go:linkname apiserverEtcdClientLogger k8s.io/apiserver/pkg/storage/storagebackend/factory.etcd3ClientLogger
var apiserverEtcdClientLogger *zap.Logger

var routeEtcdClientLogsOnce sync.Once

// routeEtcdClientLogs sends the kube-apiserver's etcd client logs to klog,
// with the rest of the control plane's. An apiserver's clients take the
// logger when they are made, so this runs before; once for the process,
// whose logger it is.
func routeEtcdClientLogs() {
	routeEtcdClientLogsOnce.Do(func() {
		apiserverEtcdClientLogger = zap.New(klogCore{}).Named("etcd-client")
	})
}

// etcdClientQuietV is the klog verbosity of the etcd client's info lines
// and of its warnings that a request was cancelled: a client that gave up,
// or a shutdown, cancels requests in flight, and nothing is wrong. Other
// warnings (etcd unreachable, a deadline missed) stay warnings.
const etcdClientQuietV = 2

// klogCore is a zap core that writes through klog.
type klogCore struct{ fields []zapcore.Field }

func (c klogCore) Enabled(l zapcore.Level) bool {
	return l >= zapcore.WarnLevel || klog.V(quietV(l)).Enabled()
}

func quietV(l zapcore.Level) klog.Level {
	if l < zapcore.InfoLevel {
		return etcdClientQuietV + 3
	}
	return etcdClientQuietV
}

func (c klogCore) With(fields []zapcore.Field) zapcore.Core {
	return klogCore{fields: append(slices.Clip(c.fields), fields...)}
}

func (c klogCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c klogCore) Write(e zapcore.Entry, fields []zapcore.Field) error {
	fields = append(slices.Clip(c.fields), fields...)
	enc := zapcore.NewMapObjectEncoder()
	cancelled := false
	for _, f := range fields {
		f.AddTo(enc)
		if err, ok := f.Interface.(error); ok && f.Type == zapcore.ErrorType && isCancelled(err) {
			cancelled = true
		}
	}
	keys := make([]string, 0, len(enc.Fields))
	for k := range enc.Fields {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	kv := []any{"logger", e.LoggerName}
	if e.Caller.Defined {
		kv = append(kv, "caller", e.Caller.TrimmedPath())
	}
	for _, k := range keys {
		kv = append(kv, k, enc.Fields[k])
	}
	switch {
	case e.Level >= zapcore.ErrorLevel:
		klog.ErrorS(nil, e.Message, kv...)
	case e.Level == zapcore.WarnLevel && !cancelled:
		// klog has no structured warning; this is its text format.
		var b strings.Builder
		b.WriteString(strconv.Quote(e.Message))
		for i := 0; i < len(kv); i += 2 {
			fmt.Fprintf(&b, " %s=%q", kv[i], fmt.Sprint(kv[i+1]))
		}
		klog.Warning(b.String())
	default:
		klog.V(quietV(e.Level)).InfoS(e.Message, kv...)
	}
	return nil
}

func (klogCore) Sync() error { return nil }

// isCancelled: the request was cancelled by whoever made it, as gRPC or as
// Go reports it.
func isCancelled(err error) bool {
	return errors.Is(err, context.Canceled) || status.Code(err) == codes.Canceled
}
