package service_test

// The hostile-input sweep: requests made from the OpenAPI document (every
// route, every field of every body, every path and query parameter), not
// listed by hand, so a route or field added to the API is swept with no
// change here.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protojson"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/gen/openapiv2"
)

// apiSpec is the part of the OpenAPI v2 document the sweep reads.
type apiSpec struct {
	Paths       map[string]map[string]apiOperation `json:"paths"`
	Definitions map[string]*apiSchema              `json:"definitions"`
}

type apiOperation struct {
	Parameters []struct {
		Name   string     `json:"name"`
		In     string     `json:"in"`
		Type   string     `json:"type"`
		Schema *apiSchema `json:"schema"`
	} `json:"parameters"`
}

type apiSchema struct {
	Ref        string                `json:"$ref"`
	Type       string                `json:"type"`
	Format     string                `json:"format"`
	Enum       []string              `json:"enum"`
	Properties map[string]*apiSchema `json:"properties"`
	Items      *apiSchema            `json:"items"`
	// AdditionalProperties is a map's value schema, or a bool.
	AdditionalProperties json.RawMessage `json:"additionalProperties"`
}

// mapValues is the schema of a map's values, nil if sc is not a map.
func (sc *apiSchema) mapValues() *apiSchema {
	var v apiSchema
	if len(sc.AdditionalProperties) == 0 || json.Unmarshal(sc.AdditionalProperties, &v) != nil {
		return nil
	}
	return &v
}

// hostileKind says what a hostile request may get back.
type hostileKind int

const (
	// refused: a body the API cannot decode: 400, INVALID_ARGUMENT.
	refused hostileKind = iota
	// misaddressed: a path or query no route or no record has: 4xx.
	misaddressed
	// unsupported: a body that does not say it is JSON: 415.
	unsupported
	// anyAnswer: a request that may be valid (an empty body, a long but
	// well-typed string): anything but a server error.
	anyAnswer
)

type hostileRequest struct {
	name         string
	method, path string
	contentType  string
	encoding     string // Content-Encoding, if any
	body         []byte // nil: no body
	kind         hostileKind
}

func loadSpec(t testing.TB) *apiSpec {
	t.Helper()
	var s apiSpec
	require.NoError(t, json.Unmarshal(openapiv2.Spec, &s))
	require.NotEmpty(t, s.Paths)
	return &s
}

func (s *apiSpec) resolve(sc *apiSchema) *apiSchema {
	for sc != nil && sc.Ref != "" {
		sc = s.Definitions[strings.TrimPrefix(sc.Ref, "#/definitions/")]
	}
	return sc
}

// sample is a well-typed JSON value of sc, not necessarily one the
// service accepts.
func (s *apiSpec) sample(sc *apiSchema, depth int) any {
	sc = s.resolve(sc)
	switch {
	case sc == nil:
		return nil
	case len(sc.Enum) > 1:
		return sc.Enum[1]
	case sc.Type == "array":
		return []any{s.sample(sc.Items, depth+1)}
	case sc.mapValues() != nil:
		return map[string]any{"k": s.sample(sc.mapValues(), depth+1)}
	case sc.Type == "object" || sc.Properties != nil:
		out := map[string]any{}
		if depth < 3 {
			for name, p := range sc.Properties {
				out[name] = s.sample(p, depth+1)
			}
		}
		return out
	case sc.Type == "boolean":
		return false
	case sc.Type == "integer" || sc.Type == "number":
		return 1
	case sc.Format == "byte":
		return "eA=="
	}
	return "x"
}

// badValues are JSON values of the wrong type or out of range for sc
// (each with a name), and, for an object, each of its fields holding
// one of its own bad values, and a field it does not have.
func (s *apiSpec) badValues(sc *apiSchema, depth int) map[string]any {
	sc = s.resolve(sc)
	out := map[string]any{}
	if sc == nil || depth > 3 {
		return out
	}
	switch {
	case len(sc.Enum) > 0:
		out = map[string]any{"unknown enum name": "NOT_A_VALUE", "fraction": 1.5, "bool": true,
			"object": map[string]any{}, "lower-case name": strings.ToLower(sc.Enum[len(sc.Enum)-1])}
	case sc.Type == "array":
		out = map[string]any{"string": "x", "object": map[string]any{}, "null item": []any{nil}}
		for name, v := range s.badValues(sc.Items, depth+1) {
			out["item: "+name] = []any{s.sample(sc.Items, depth+1), v}
		}
	case sc.mapValues() != nil:
		out = map[string]any{"array": []any{}, "string": "x", "number": 1}
		for name, v := range s.badValues(sc.mapValues(), depth+1) {
			out["value: "+name] = map[string]any{"k": v}
		}
	case sc.Type == "object" || sc.Properties != nil:
		out = map[string]any{"array": []any{}, "string": "x", "number": 1, "bool": true,
			"unknown field": map[string]any{"unknownField": 1}}
		for field, p := range sc.Properties {
			for name, v := range s.badValues(p, depth+1) {
				out[field+": "+name] = map[string]any{field: v}
			}
		}
	case sc.Type == "boolean":
		out = map[string]any{"string": "yes", "number": 1, "object": map[string]any{}}
	case sc.Type == "integer" || sc.Type == "number":
		out = map[string]any{"word": "abc", "fraction": 1.5, "overflow": json.Number("1e400"),
			"beyond 64 bits": "99999999999999999999999", "bool": true, "object": map[string]any{}, "array": []any{1}}
		if strings.HasPrefix(sc.Format, "uint") {
			out["negative"] = -1
		}
	case sc.Format == "byte":
		out = map[string]any{"not base64": "***", "bad padding": "eA=", "number": 42, "array": []any{"eA=="}}
	default:
		out = map[string]any{"number": 42, "bool": true, "object": map[string]any{}, "array": []any{"x"}}
	}
	return out
}

// hostilePathValues replace a path parameter: separators, traversal, NUL,
// unicode, over-long ids, and for a number what is not one.
func hostilePathValues(typ string) map[string]string {
	if typ == "integer" {
		return map[string]string{"word": "abc", "negative": "-1", "fraction": "1.5", "beyond 64 bits": "99999999999999999999",
			"hex": "0x1", "NUL": "1%00", "space": "%201", "unicode digit": "%D9%A1"}
	}
	return map[string]string{"escaped slash": "a%2Fb", "dot-dot": "..", "escaped dot-dot": "%2E%2E", "NUL": "%00",
		"inner NUL": "sweep-ec%00", "unicode": "%D0%BA%D0%BB%D1%8E%D1%87", "emoji": "%F0%9F%94%91",
		"bidi override": "a%E2%80%AEb", "over-long": strings.Repeat("a", 8<<10), "space": "%20", "question mark": "a%3Fb",
		"colon": "a:b", "upper case": "SWEEP-EC", "trailing dot": "sweep-ec.", "percent": "%25"}
}

// hostileRequests are the sweep's requests. Path parameters that name a
// key or a version name key (an existing key) and its version 1, so that
// whatever is refused is refused for what the request holds.
func hostileRequests(t testing.TB, key string) []hostileRequest {
	t.Helper()
	s := loadSpec(t)
	var out []hostileRequest
	paths := make([]string, 0, len(s.Paths))
	for p := range s.Paths {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, route := range paths {
		ops := s.Paths[route]
		fill := func(name, value string) string {
			values := map[string]string{"key": key, "version": "1", "id": "no-such-handshake"}
			if name != "" {
				values[name] = value
			}
			return strings.NewReplacer("{key}", values["key"], "{version}", values["version"], "{id}", values["id"]).Replace(route)
		}
		path := fill("", "")
		for _, m := range []string{"GET", "POST", "PUT", "DELETE", "PATCH"} {
			if _, ok := ops[strings.ToLower(m)]; !ok {
				out = append(out, hostileRequest{name: "method " + m, method: m, path: path, contentType: "application/json", body: []byte("{}"), kind: misaddressed})
			}
		}
		methods := make([]string, 0, len(ops))
		for m := range ops {
			methods = append(methods, m)
		}
		sort.Strings(methods)
		for _, m := range methods {
			method := strings.ToUpper(m)
			op := ops[m]
			var body *apiSchema
			for _, p := range op.Parameters {
				switch p.In {
				case "body":
					body = p.Schema
				case "path":
					for name, v := range hostilePathValues(p.Type) {
						var b []byte
						if method != "GET" {
							b = []byte("{}")
						}
						out = append(out, hostileRequest{name: p.Name + ": " + name, method: method, path: fill(p.Name, v),
							contentType: "application/json", body: b, kind: misaddressed})
					}
				case "query":
					bad := map[string]string{"huge": strings.Repeat("a", 32<<10), "NUL": "%00"}
					if p.Type == "integer" {
						bad = map[string]string{"word": "abc", "fraction": "1.5", "beyond 64 bits": "99999999999999999999",
							"empty": "", "repeated": "1&" + p.Name + "=2", "negative": "-5"}
					}
					for name, v := range bad {
						out = append(out, hostileRequest{name: p.Name + "=" + name, method: method, path: path + "?" + p.Name + "=" + v,
							kind: misaddressed})
					}
				}
			}
			if method == "GET" {
				out = append(out, hostileRequest{name: "unknown query parameter", method: method, path: path + "?noSuchParameter=1", kind: misaddressed},
					hostileRequest{name: "body on a GET", method: method, path: path, contentType: "application/json", body: []byte(`{"x":`), kind: anyAnswer})
				continue
			}
			out = append(out, bodyRequests(t, s, method, path, body)...)
			// An empty body to a key that does not exist: the route may
			// take it for an empty message, but changes nothing.
			out = append(out, hostileRequest{name: "empty body", method: method, path: strings.Replace(path, key, "sweep-absent", 1),
				contentType: "application/json", kind: anyAnswer})
		}
	}
	return out
}

// bodyRequests are a route's hostile bodies: malformed and truncated JSON,
// each field of the wrong type, bad base64, unknown enums and fields,
// huge strings and arrays, and bodies that do not say they are JSON.
func bodyRequests(t testing.TB, s *apiSpec, method, path string, body *apiSchema) []hostileRequest {
	var out []hostileRequest
	add := func(name string, kind hostileKind, b []byte) {
		out = append(out, hostileRequest{name: name, method: method, path: path, contentType: "application/json", body: b, kind: kind})
	}
	valid, err := json.Marshal(s.sample(body, 0))
	require.NoError(t, err)
	for name, b := range map[string]string{
		"open brace": "{", "open string": `{"`, "close brace": "}", "no value": `{"a":}`, "no colon": `{"a" 1}`,
		"array": "[]", "null": "null", "string": `"s"`, "number": "42", "trailing comma": `{"a":1,}`,
		"lone surrogate": `{"\ud800":1}`, "invalid UTF-8": "{\"\xff\":1}", "byte order mark": "\xef\xbb\xbf{}",
		"deep nesting": strings.Repeat("[", 100_000), "deep objects": strings.Repeat(`{"a":`, 10_000),
		"single quotes": `{'a':1}`, "comment": `{/* */}`, "two objects": "{}{}", "trailing data": "{} x",
		"half of a sample": string(valid[:len(valid)/2]), "sample less its last byte": string(valid[:len(valid)-1]),
	} {
		add("malformed JSON: "+name, refused, []byte(b))
	}
	for name, v := range s.badValues(body, 0) {
		b, err := json.Marshal(v)
		require.NoError(t, err)
		add("body: "+name, refused, b)
	}
	if sc := s.resolve(body); sc != nil {
		for field, p := range sc.Properties {
			p = s.resolve(p)
			switch {
			case p.Type == "string" && len(p.Enum) == 0:
				add(field+": 1 MiB", anyAnswer, fmt.Appendf(nil, `{%q:%q}`, field, strings.Repeat("A", 1<<20)))
				add(field+": past the request bound", misaddressed, fmt.Appendf(nil, `{%q:%q}`, field, strings.Repeat("A", 5<<20)))
				add(field+": invalid UTF-8", refused, fmt.Appendf(nil, "{%q:\"\xc3\x28\"}", field))
			case p.Type == "array":
				items, err := json.Marshal(slices.Repeat([]any{s.sample(p.Items, 1)}, 50_000))
				require.NoError(t, err)
				add(field+": 50,000 items", anyAnswer, fmt.Appendf(nil, `{%q:%s}`, field, items))
			case len(p.Enum) > 0:
				add(field+": unknown enum number", refused, fmt.Appendf(nil, `{%q:99999}`, field))
			}
		}
	}
	for _, ct := range []string{"", "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
		"application/jsonl", "text/json", "application/json;;", "application/xml"} {
		out = append(out, hostileRequest{name: "content type " + ct, method: method, path: path, contentType: ct, body: valid, kind: unsupported})
	}
	return out
}

// sendHostile sends r and returns the HTTP status, headers and body.
func sendHostile(t testing.TB, base string, r hostileRequest) (int, http.Header, []byte) {
	t.Helper()
	var rd io.Reader
	if r.body != nil {
		rd = bytes.NewReader(r.body)
	}
	req, err := http.NewRequest(r.method, base+r.path, rd)
	require.NoError(t, err)
	if r.contentType != "" {
		req.Header.Set("Content-Type", r.contentType)
	}
	if r.encoding != "" {
		req.Header.Set("Content-Encoding", r.encoding)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, resp.Header, raw
}

// storeSnapshot is what the service stores, as the API shows it: every
// key with its versions, states and certificates, and the KEK's status.
func storeSnapshot(t testing.TB, s *testServer) string {
	t.Helper()
	ctx := context.Background()
	var b strings.Builder
	token := ""
	for {
		page, err := s.kv.ListKeys(ctx, &pb.ListKeysRequest{PageToken: token})
		require.NoError(t, err)
		for _, k := range page.GetKeys() {
			full, err := s.kv.GetKey(ctx, &pb.GetKeyRequest{Key: k.GetId()})
			require.NoError(t, err)
			b.WriteString(protojson.Format(full))
		}
		if token = page.GetNextPageToken(); token == "" {
			break
		}
	}
	kek, err := pb.NewAdminClient(s.Conn).GetKEKStatus(ctx, &pb.GetKEKStatusRequest{})
	require.NoError(t, err)
	b.WriteString(protojson.Format(kek))
	return b.String()
}

// checkAnswer checks what every answer of the API must be: no server
// error, and an error body that is a JSON status whose code gives the HTTP
// status (the gateway's mapping; 415 and 405 are the exceptions, see
// sameOrigin and methodNotAllowed). It returns the error's code (OK for
// a 200).
func checkAnswer(t testing.TB, method string, httpStatus int, header http.Header, raw []byte) codes.Code {
	t.Helper()
	require.Less(t, httpStatus, 500, "a server error for the caller's mistake: %.300s", raw)
	if httpStatus == http.StatusOK {
		return codes.OK
	}
	var st struct {
		Code    codes.Code `json:"code"`
		Message string     `json:"message"`
	}
	require.NoError(t, json.Unmarshal(raw, &st), "the error body is not a JSON status: %.300s", raw)
	require.NotEmpty(t, st.Message, "%s", raw)
	switch httpStatus {
	case http.StatusUnsupportedMediaType:
		require.Equal(t, codes.InvalidArgument, st.Code, "%.300s", raw)
	case http.StatusMethodNotAllowed:
		require.Equal(t, codes.Unimplemented, st.Code, "%.300s", raw)
		allow := header.Get("Allow")
		require.NotEmpty(t, allow, "405 without the methods the path has (RFC 9110 §15.5.6)")
		require.NotContains(t, strings.Split(allow, ", "), method)
	default:
		require.Equal(t, runtime.HTTPStatusFromCode(st.Code), httpStatus, "HTTP status and code disagree: %.300s", raw)
	}
	return st.Code
}

// checkHostileAnswer checks an answer to r: checkAnswer's and what r's
// kind wants.
func checkHostileAnswer(t testing.TB, r hostileRequest, httpStatus int, header http.Header, raw []byte) {
	t.Helper()
	code := checkAnswer(t, r.method, httpStatus, header, raw)
	switch {
	case code == codes.OK:
		require.Equal(t, anyAnswer, r.kind, "accepted: %.300s", raw)
	case r.kind == refused:
		require.Equal(t, http.StatusBadRequest, httpStatus, "%.300s", raw)
		require.Equal(t, codes.InvalidArgument, code, "%.300s", raw)
	case r.kind == unsupported:
		require.Equal(t, http.StatusUnsupportedMediaType, httpStatus, "a body that does not say it is JSON was read: %.300s", raw)
	case httpStatus == http.StatusUnsupportedMediaType:
		require.Fail(t, "a JSON body refused as not JSON", "%.300s", raw)
	}
}

// TestRESTHostileInputSweep sends every hostile request the OpenAPI
// document yields (see hostileRequests) to a real gateway and checks each
// answer, and that no refused request changed what is stored.
func TestRESTHostileInputSweep(t *testing.T) {
	s := startServer(t)
	importFixture(t, s, "sweep-ec", "p256-sec1.pem")
	importFixture(t, s, "sweep-rsa", "rsa2048-pkcs1.pem")
	before := storeSnapshot(t, s)
	reqs := hostileRequests(t, "sweep-ec")
	require.Greater(t, len(reqs), 500, "the sweep found too few requests in the OpenAPI document")
	for _, r := range reqs {
		t.Run(r.method+" "+r.path[:min(len(r.path), 60)]+" "+r.name, func(t *testing.T) {
			code, header, raw := sendHostile(t, s.rest, r)
			checkHostileAnswer(t, r, code, header, raw)
			after := storeSnapshot(t, s)
			if code != http.StatusOK {
				assert.Equal(t, before, after, "a refused request changed what is stored")
			}
			before = after
		})
	}
}

// TestRESTRoutesRefuseWhatTheyDoNotHave: a method a path does not have is
// 405 with the methods it has, not the gateway's 501; a query parameter a
// route does not read is 400, not ignored (a misspelt ?verison=2 answered
// with the primary version's key). What the routes read still works, by
// JSON or proto name.
func TestRESTRoutesRefuseWhatTheyDoNotHave(t *testing.T) {
	s := startServer(t)
	importFixture(t, s, "route-ec", "p256-sec1.pem")
	send := func(method, path string) (int, http.Header, []byte) {
		return sendHostile(t, s.rest, hostileRequest{method: method, path: path, contentType: "application/json", body: []byte("{}")})
	}
	code, header, raw := send("POST", "/v1/keys/route-ec")
	assert.Equal(t, http.StatusMethodNotAllowed, code, "%s", raw)
	assert.Equal(t, "GET", header.Get("Allow"))
	code, header, raw = send("DELETE", "/v1/keys")
	assert.Equal(t, http.StatusMethodNotAllowed, code, "%s", raw)
	assert.Equal(t, "GET, POST", header.Get("Allow"))
	code, _, raw = send("GET", "/v1/keys/route-ec:sign")
	assert.Equal(t, http.StatusBadRequest, code, "GetKey of the id route-ec:sign: %s", raw)

	for _, path := range []string{"/v1/keys/route-ec/publicKey?verison=2", "/v1/keys?page_sise=1", "/v1/keys/route-ec?version=1"} {
		code, _, raw = send("GET", path)
		assert.Equal(t, http.StatusBadRequest, code, "%s: %s", path, raw)
		assert.Contains(t, string(raw), `"code":3`, path)
	}
	sign := func(path string) (int, []byte) {
		code, _, raw := sendHostile(t, s.rest, hostileRequest{method: "POST", path: path, contentType: "application/json",
			body: []byte(`{"scheme":"SIGNATURE_SCHEME_ECDSA_SECP256R1_SHA256","message":"eA=="}`)})
		return code, raw
	}
	code, raw = sign("/v1/keys/route-ec:sign?version=2")
	assert.Equal(t, http.StatusBadRequest, code, "a query on a route that reads only its body: %s", raw)
	code, raw = sign("/v1/keys/route-ec:sign")
	assert.Equal(t, http.StatusOK, code, "%s", raw)
	for _, path := range []string{"/v1/keys/route-ec/publicKey?version=1", "/v1/keys?page_size=1", "/v1/keys?pageSize=1&pageToken="} {
		code, _, raw = send("GET", path)
		assert.Equal(t, http.StatusOK, code, "%s: %s", path, raw)
	}
}

// FuzzREST sends what the fuzzer makes of a REST request (method, path
// with its query, content type, body) to a real gateway: checkAnswer's
// rules hold, and a refused request changes nothing stored. Its seeds are
// a valid-typed body of each route and the hostile requests of one route.
// Answers net/http gives before any handler (a redirect for a path to
// clean, 400 for a request line it cannot parse, 431) are plain text.
func FuzzREST(f *testing.F) {
	s := startServer(f)
	importFixture(f, s, "sweep-ec", "p256-sec1.pem")
	for _, r := range hostileRequests(f, "sweep-ec") {
		if len(r.body) <= 4<<10 && (strings.HasPrefix(r.path, "/v1/keys/sweep-ec:sign") || r.kind == anyAnswer) {
			f.Add(r.method, r.path, r.contentType, r.body)
		}
	}
	f.Fuzz(func(t *testing.T, method, path, contentType string, body []byte) {
		req, err := http.NewRequest(method, s.rest+"/"+strings.TrimPrefix(path, "/"), bytes.NewReader(body))
		if err != nil {
			t.Skip("not a request a client can send")
		}
		if contentType != "" {
			req.Header.Set("Content-Type", contentType)
		}
		before := storeSnapshot(t, s)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Skip("not a request a client can send:", err)
		}
		raw, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.NoError(t, err)
		switch resp.StatusCode {
		case http.StatusMovedPermanently, http.StatusTemporaryRedirect, http.StatusRequestHeaderFieldsTooLarge:
			return
		case http.StatusBadRequest, http.StatusNotFound:
			if !json.Valid(raw) { // net/http's own, or /docs
				return
			}
		}
		if strings.HasPrefix(req.URL.Path, "/v1/") {
			checkAnswer(t, method, resp.StatusCode, resp.Header, raw)
		} else {
			require.Less(t, resp.StatusCode, 500, "%.300s", raw)
		}
		if resp.StatusCode != http.StatusOK {
			assert.Equal(t, before, storeSnapshot(t, s), "a refused request changed what is stored")
		}
	})
}

// TestRESTBodyIsOneValue: a call that takes one request refuses a body
// with more after it, and does nothing (the gateway read the first value
// and acted on it: `{} x` disabled the version); white space after it is
// no more.
func TestRESTBodyIsOneValue(t *testing.T) {
	s := startServer(t)
	importFixture(t, s, "one-ec", "p256-sec1.pem")
	before := storeSnapshot(t, s)
	for _, body := range []string{"{} x", "{}{}", `{}{"unknownField":1}`, "{}\n{}", "{}]"} {
		code, _, raw := sendHostile(t, s.rest, hostileRequest{method: "POST", path: "/v1/keys/one-ec/versions/1:disable", contentType: "application/json", body: []byte(body)})
		assert.Equal(t, http.StatusBadRequest, code, "%q: %s", body, raw)
		assert.Contains(t, string(raw), `"code":3`, "%q", body)
	}
	assert.Equal(t, before, storeSnapshot(t, s), "a refused body changed what is stored")
	code, _, raw := sendHostile(t, s.rest, hostileRequest{method: "POST", path: "/v1/keys/one-ec/versions/1:disable", contentType: "application/json", body: []byte("\t{} \r\n")})
	assert.Equal(t, http.StatusOK, code, "%s", raw)
}
