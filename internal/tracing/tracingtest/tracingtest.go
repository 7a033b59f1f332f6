// Package tracingtest is an in-process OTLP/gRPC trace receiver: the real
// collector protocol on a loopback port, so tests see the spans a process
// exports exactly as a collector would.
package tracingtest

import (
	"context"
	"encoding/hex"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	collectorpb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// Receiver collects the spans exported to it.
type Receiver struct {
	collectorpb.UnimplementedTraceServiceServer
	// Addr is the host:port to export to, in plain text.
	Addr string

	mu   sync.Mutex
	reqs []*collectorpb.ExportTraceServiceRequest
}

// Start serves a receiver until the test ends.
func Start(t testing.TB) *Receiver {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	r := &Receiver{Addr: l.Addr().String()}
	srv := grpc.NewServer()
	collectorpb.RegisterTraceServiceServer(srv, r)
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	return r
}

func (r *Receiver) Export(_ context.Context, req *collectorpb.ExportTraceServiceRequest) (*collectorpb.ExportTraceServiceResponse, error) {
	r.mu.Lock()
	r.reqs = append(r.reqs, proto.Clone(req).(*collectorpb.ExportTraceServiceRequest))
	r.mu.Unlock()
	return &collectorpb.ExportTraceServiceResponse{}, nil
}

// Span is an exported span, flattened for assertions.
type Span struct {
	Service                   string // the resource's service.name
	Name                      string
	TraceID, SpanID, ParentID string // hex; ParentID "" for a root
	Attrs                     map[string]string
	Events                    []Event
	Links                     []string // span ids linked to
	Error                     bool     // status code ERROR
}

// Event is a span event.
type Event struct {
	Name  string
	Attrs map[string]string
}

func attrs(kvs []*commonpb.KeyValue) map[string]string {
	m := map[string]string{}
	for _, kv := range kvs {
		m[kv.GetKey()] = value(kv.GetValue())
	}
	return m
}

func value(v *commonpb.AnyValue) string {
	switch x := v.GetValue().(type) {
	case *commonpb.AnyValue_StringValue:
		return x.StringValue
	case *commonpb.AnyValue_ArrayValue:
		var s string
		for i, e := range x.ArrayValue.GetValues() {
			if i > 0 {
				s += ","
			}
			s += value(e)
		}
		return s
	}
	b, _ := protojson.Marshal(v)
	return string(b)
}

// Spans returns every span received so far.
func (r *Receiver) Spans() []Span {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Span
	for _, req := range r.reqs {
		for _, rs := range req.GetResourceSpans() {
			service := attrs(rs.GetResource().GetAttributes())["service.name"]
			for _, ss := range rs.GetScopeSpans() {
				for _, sp := range ss.GetSpans() {
					s := Span{Service: service, Name: sp.GetName(), TraceID: hex.EncodeToString(sp.GetTraceId()),
						SpanID: hex.EncodeToString(sp.GetSpanId()), ParentID: hex.EncodeToString(sp.GetParentSpanId()),
						Attrs: attrs(sp.GetAttributes()), Error: sp.GetStatus().GetCode() == 2}
					for _, e := range sp.GetEvents() {
						s.Events = append(s.Events, Event{Name: e.GetName(), Attrs: attrs(e.GetAttributes())})
					}
					for _, l := range sp.GetLinks() {
						s.Links = append(s.Links, hex.EncodeToString(l.GetSpanId()))
					}
					out = append(out, s)
				}
			}
		}
	}
	return out
}

// Raw returns everything received, as protojson, to search for what must
// not be there.
func (r *Receiver) Raw() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	var b []byte
	for _, req := range r.reqs {
		j, _ := protojson.Marshal(req)
		b = append(append(b, j...), '\n')
	}
	return b
}

// WaitFor waits until the spans received satisfy ok, and returns them.
func (r *Receiver) WaitFor(t testing.TB, what string, ok func([]Span) bool) []Span {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		spans := r.Spans()
		if ok(spans) {
			return spans
		}
		if time.Now().After(deadline) {
			require.FailNow(t, "spans not received: "+what, "%d spans: %+v", len(spans), spans)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
