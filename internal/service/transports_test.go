package service_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/gen/openapiv2"
	"github.com/handshaked/handshaked/internal/audit"
	"github.com/handshaked/handshaked/internal/service"
)

// restRoute is a method's REST mapping, as the OpenAPI document states it.
type restRoute struct{ verb, path string }

// restRoutes maps "/Service/Method" to its route, from the OpenAPI
// document generated from http_rules.yaml.
func restRoutes(t *testing.T) map[string]restRoute {
	t.Helper()
	var spec struct {
		Paths map[string]map[string]struct {
			OperationID string `json:"operationId"`
		} `json:"paths"`
	}
	require.NoError(t, json.Unmarshal(openapiv2.Spec, &spec))
	out := map[string]restRoute{}
	for path, ops := range spec.Paths {
		for verb, op := range ops {
			service, method, ok := strings.Cut(op.OperationID, "_")
			require.True(t, ok, "operation id %q", op.OperationID)
			out["/handshake.v1."+service+"/"+method] = restRoute{strings.ToUpper(verb), path}
		}
	}
	return out
}

// restCallCode makes the REST call of route with req (its path parameters
// filled from req's fields, the whole of req as the JSON body of a POST)
// and returns the gRPC code it ended with, as callCode does for gRPC: the
// code of the JSON error, of a stream's first line, or of a batch's first
// result. It checks that the HTTP status is the one the gateway gives
// that code.
func restCallCode(t *testing.T, client *http.Client, baseURL string, route restRoute, req proto.Message) codes.Code {
	t.Helper()
	body, err := protojson.Marshal(req)
	require.NoError(t, err)
	var fields map[string]any
	require.NoError(t, json.Unmarshal(body, &fields))
	path := route.path
	for name, v := range fields {
		path = strings.ReplaceAll(path, "{"+name+"}", fmt.Sprint(v))
	}
	require.NotContains(t, path, "{", "request %v leaves a path parameter of %s unset", req, route.path)
	var rd *bytes.Reader
	if route.verb == http.MethodGet {
		rd = bytes.NewReader(nil)
	} else {
		rd = bytes.NewReader(body)
	}
	hr, err := http.NewRequest(route.verb, baseURL+path, rd)
	require.NoError(t, err)
	hr.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(hr)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.NotEmpty(t, resp.Header.Get("Grpc-Metadata-X-Request-Id"), "%s %s: no request id", route.verb, path)
	// A stream answers a line per message: the first says enough.
	line, err := bufio.NewReader(resp.Body).ReadBytes('\n')
	if len(line) == 0 {
		require.NoError(t, err)
	}
	var answer struct {
		Code    *int32                `json:"code"`
		Error   *struct{ Code int32 } `json:"error"`
		Results []struct {
			Error *struct{ Code int32 } `json:"error"`
		} `json:"results"`
	}
	require.NoError(t, json.Unmarshal(line, &answer), "%s %s: %s", route.verb, path, line)
	code := codes.OK
	switch {
	case answer.Code != nil:
		code = codes.Code(*answer.Code)
	case answer.Error != nil:
		code = codes.Code(answer.Error.Code)
	case len(answer.Results) > 0 && answer.Results[0].Error != nil:
		return codes.Code(answer.Results[0].Error.Code) // the batch itself succeeded
	}
	assert.Equal(t, runtime.HTTPStatusFromCode(code), resp.StatusCode, "%s %s: HTTP status of %v", route.verb, path, code)
	return code
}

// callEntries are the audit entries of s's calls (not those of its own
// ticket key rotations), each without what differs from one call to the
// next: time, request id, peer, duration.
func callEntries(t *testing.T, s *secureServer) []audit.Entry {
	var out []audit.Entry
	for _, e := range s.auditEntries(t) {
		if e.RequestID == "" {
			continue
		}
		e.Time, e.RequestID, e.Peer, e.DurationMS = time.Time{}, "", "", 0
		out = append(out, e)
	}
	return out
}

// TestTransportsAgree: the REST gateway calls the handlers in process
// through the gRPC server's interceptor chain, so a call must fare the same
// over either transport. Two identical production servers get the same
// calls, every method of the API's services by every kind of caller of the
// authorization matrix (no certificate, no right, use, manage, admin), one
// server over gRPC, the other over REST, and must answer with the same
// codes (REST with the HTTP status of the code and a request id), write the
// same audit log and count the same calls in handshaked_call_seconds,
// labelled by their transport. Only the bidirectional streams (SignStream,
// Handshake.Stream) have no REST route: one request body and one answer
// cannot carry their exchange.
func TestTransportsAgree(t *testing.T) {
	routes := restRoutes(t)
	methods := serviceMethods(t)
	for _, md := range methods {
		_, routed := routes[fullMethod(md)]
		bidi := md.IsStreamingClient() && md.IsStreamingServer()
		assert.Equal(t, !bidi, routed, "%s: a REST route for every method but the bidirectional streams", fullMethod(md))
	}

	calls := matrixCalls()
	start := func() *secureServer {
		s := startSecure(t, secureOptions{policy: matrixPolicy, limits: service.Limits{UnauthenticatedRate: 40 * float64(len(methods))},
			tickets: &service.TicketOptions{Deployment: "matrix"}})
		s.adminImport(t, matrixKey, "p256-pkcs8.pem", nil)
		return s
	}
	overGRPC, overREST := start(), start()
	conns, clients := map[string]*grpc.ClientConn{}, map[string]*http.Client{}
	for _, l := range matrixLevels {
		conns[l.name], clients[l.name] = overGRPC.dial(t, l.cert), overREST.httpClient(t, l.cert)
	}
	type outcome struct {
		method, caller string
		code           codes.Code
	}
	var gotGRPC, gotREST []outcome
	counted := map[string]int{} // "method code" → calls
	for _, md := range methods {
		route, ok := routes[fullMethod(md)]
		if !ok {
			continue
		}
		c := calls[fullMethod(md)]
		for _, l := range matrixLevels {
			g := callCode(t, conns[l.name], md, c.req)
			r := restCallCode(t, clients[l.name], overREST.restURL, route, c.req)
			gotGRPC = append(gotGRPC, outcome{string(md.Name()), l.name, g})
			gotREST = append(gotREST, outcome{string(md.Name()), l.name, r})
			call := g
			if fullMethod(md) == pb.KeyVault_Batch_FullMethodName && g != codes.Unauthenticated {
				call = codes.OK // refused operations, in a batch that succeeded
			}
			counted[methodLabel(md)+" "+call.String()]++
		}
	}
	assert.Equal(t, gotGRPC, gotREST, "the same calls over gRPC and over REST")

	// A stream's entries are written when it ends, after the caller has
	// its answer: wait until both logs hold as many as each other.
	var grpcLog, restLog []audit.Entry
	require.Eventually(t, func() bool {
		grpcLog, restLog = callEntries(t, overGRPC), callEntries(t, overREST)
		return len(grpcLog) == len(restLog)
	}, 5*time.Second, 20*time.Millisecond)
	assert.ElementsMatch(t, grpcLog, restLog, "the audit logs of the same calls over gRPC and over REST")

	// Each server also had its key imported over gRPC, by start.
	metrics := &http.Client{Transport: &http.Transport{TLSClientConfig: overGRPC.clientTLS(t, "")}}
	imported := map[string]int{"KeyVault.ImportKey OK": 1}
	viaGRPC := callCounts(t, metrics, overGRPC.restURL)
	assert.Empty(t, viaGRPC[transportREST], "REST calls counted by the server called over gRPC")
	withImport := maps.Clone(counted)
	withImport["KeyVault.ImportKey OK"]++
	assert.Equal(t, withImport, viaGRPC[transportGRPC], "calls over gRPC, by method and code")
	viaREST := callCounts(t, metrics, overREST.restURL)
	assert.Equal(t, imported, viaREST[transportGRPC], "gRPC calls counted by the server called over REST")
	assert.Equal(t, counted, viaREST[transportREST], "calls over REST, by method and code")
}

const transportGRPC, transportREST = "grpc", "rest"

// callCounts reads handshaked_call_seconds_count from baseURL's /metrics:
// by transport, then by "method code".
func callCounts(t *testing.T, client *http.Client, baseURL string) map[string]map[string]int {
	t.Helper()
	resp, err := client.Get(baseURL + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	// Prometheus writes the labels in name order.
	sample := regexp.MustCompile(`^handshaked_call_seconds_count\{code="(\w+)",method="([^"]+)",transport="(\w+)"\} (\d+)$`)
	out := map[string]map[string]int{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		m := sample.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		n, err := strconv.Atoi(m[4])
		require.NoError(t, err)
		if out[m[3]] == nil {
			out[m[3]] = map[string]int{}
		}
		out[m[3]][m[2]+" "+m[1]] = n
	}
	require.NoError(t, sc.Err())
	return out
}

// methodLabel is the method label of handshaked_call_seconds: Service.Method.
func methodLabel(md protoreflect.MethodDescriptor) string {
	return string(md.Parent().Name()) + "." + string(md.Name())
}
