package service_test

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/proto"

	"github.com/handshaked/handshaked/internal/service"
	"github.com/handshaked/handshaked/internal/servicetest"
)

// rawGRPCCall sends one gRPC message, prefixed with the compressed flag
// given, to path over a raw HTTP/2 connection with the extra headers, and
// returns the status and message of the trailers.
func rawGRPCCall(t *testing.T, addr, path string, headers map[string]string, compressed bool, msg []byte) (codes.Code, string) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer conn.Close()
	// Guards against a hang only: every call below is answered at once.
	require.NoError(t, conn.SetDeadline(time.Now().Add(30*time.Second)))
	_, err = io.WriteString(conn, http2.ClientPreface)
	require.NoError(t, err)
	fr := http2.NewFramer(conn, conn)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	require.NoError(t, fr.WriteSettings())
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	fields := []hpack.HeaderField{
		{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "http"}, {Name: ":path", Value: path},
		{Name: ":authority", Value: "localhost"}, {Name: "content-type", Value: "application/grpc"}, {Name: "te", Value: "trailers"},
	}
	for k, v := range headers {
		fields = append(fields, hpack.HeaderField{Name: k, Value: v})
	}
	for _, f := range fields {
		require.NoError(t, enc.WriteField(f))
	}
	require.NoError(t, fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block.Bytes(), EndHeaders: true}))
	frame := make([]byte, 5, 5+len(msg))
	if compressed {
		frame[0] = 1
	}
	binary.BigEndian.PutUint32(frame[1:], uint32(len(msg)))
	frame = append(frame, msg...)
	// DATA frames of at most 16 KiB, HTTP/2's default SETTINGS_MAX_FRAME_SIZE.
	for len(frame) > 0 {
		n := min(len(frame), 16<<10)
		require.NoError(t, fr.WriteData(1, n == len(frame), frame[:n]))
		frame = frame[n:]
	}
	for {
		f, err := fr.ReadFrame()
		require.NoError(t, err)
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				require.NoError(t, fr.WriteSettingsAck())
			}
		case *http2.MetaHeadersFrame:
			if !f.StreamEnded() {
				continue
			}
			trailers := http.Header{}
			for _, h := range f.RegularFields() {
				trailers.Add(h.Name, h.Value)
			}
			code, err := strconv.Atoi(trailers.Get("grpc-status"))
			require.NoError(t, err, "grpc-status of %v", f.Fields)
			msg, err := url.PathUnescape(trailers.Get("grpc-message"))
			require.NoError(t, err)
			return codes.Code(code), msg
		case *http2.GoAwayFrame, *http2.RSTStreamFrame:
			require.FailNow(t, "the call failed", "%v", f)
		}
	}
}

func gzipped(t *testing.T, b []byte) []byte {
	t.Helper()
	var out bytes.Buffer
	w := gzip.NewWriter(&out)
	_, err := w.Write(b)
	require.NoError(t, err)
	require.NoError(t, w.Close())
	return out.Bytes()
}

// TestGzipRequestCorrupt: a gRPC request said to be gzip-compressed
// (grpc-encoding: gzip, the compressed flag set) that does not inflate is
// the caller's mistake, INVALID_ARGUMENT saying what gzip found, not the
// INTERNAL grpc-go gives a decompressor's error; one that inflates past
// the largest request is RESOURCE_EXHAUSTED, as an uncompressed one; a
// valid one is answered. On the API listener and on the health listener,
// whose largest request is smaller.
func TestGzipRequestCorrupt(t *testing.T) {
	srv := servicetest.Start(t, service.Options{})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go srv.Service.ServeHealth(lis)

	check, err := proto.Marshal(&healthpb.HealthCheckRequest{Service: "x"})
	require.NoError(t, err)
	valid := gzipped(t, check)
	badChecksum := bytes.Clone(valid)
	badChecksum[len(badChecksum)-5] ^= 0xff // the CRC-32 (RFC 1952, section 2.3.1)
	for _, l := range []struct {
		name, addr string
		max        int
	}{
		{"API listener", srv.GRPCAddr, service.MaxRequestBytes},
		{"health listener", lis.Addr().String(), 4 << 10},
	} {
		for _, c := range []struct {
			name    string
			body    []byte
			code    codes.Code
			message string
		}{
			{"not gzip", []byte("not gzip at all"), codes.InvalidArgument, "request: grpc-encoding gzip: gzip: invalid header"},
			{"truncated", valid[:len(valid)-4], codes.InvalidArgument, "request: grpc-encoding gzip: unexpected EOF"},
			{"bad checksum", badChecksum, codes.InvalidArgument, "request: grpc-encoding gzip: gzip: invalid checksum"},
			{"empty", nil, codes.InvalidArgument, "request: grpc-encoding gzip: unexpected EOF"},
			{"inflates past the largest request", gzipped(t, make([]byte, l.max+1)), codes.ResourceExhausted, "larger than max"},
			{"valid", valid, codes.NotFound, "unknown service"},
		} {
			t.Run(l.name+"/"+c.name, func(t *testing.T) {
				code, msg := rawGRPCCall(t, l.addr, "/grpc.health.v1.Health/Check", map[string]string{"grpc-encoding": "gzip"}, true, c.body)
				assert.Equal(t, c.code, code, msg)
				assert.Contains(t, msg, c.message)
			})
		}
	}
}

// TestRESTContentEncodingRefused: the REST API takes bodies as they are
// (identity); one with another content coding is refused with 415 and
// Accept-Encoding saying what it takes (RFC 9110, sections 8.4 and
// 12.5.3), not read as JSON and refused for what gzip made of it.
func TestRESTContentEncodingRefused(t *testing.T) {
	s := startServer(t)
	body := []byte(`{"id":"x"}`)
	for _, c := range []struct {
		name     string
		encoding string
		body     []byte
	}{
		{"corrupt gzip", "gzip", []byte("not gzip at all")},
		{"valid gzip", "gzip", gzipped(t, body)},
		{"br", "br", body},
		{"identity then gzip", "identity, gzip", gzipped(t, body)},
		{"a long coding", strings.Repeat("x", 4000), body},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, header, raw := sendHostile(t, s.rest, hostileRequest{method: http.MethodPost, path: "/v1/keys",
				contentType: "application/json", encoding: c.encoding, body: c.body})
			assert.Equal(t, http.StatusUnsupportedMediaType, code, "%s", raw)
			assert.Equal(t, "identity", header.Get("Accept-Encoding"))
			assert.Contains(t, string(raw), "Content-Encoding")
			assert.Less(t, len(raw), 1024, "the caller's header is quoted at most in part")
		})
	}
	// identity is the body as it is.
	code, _, raw := sendHostile(t, s.rest, hostileRequest{method: http.MethodGet, path: "/v1/keys", encoding: "identity"})
	assert.Equal(t, http.StatusOK, code, "%s", raw)
}
