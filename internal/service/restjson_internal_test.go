package service

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
)

// gatewayJSON is the codec the server configures, without restJSON's
// decoder.
func gatewayJSON() *runtime.JSONPb {
	return &runtime.JSONPb{
		MarshalOptions:   protojson.MarshalOptions{EmitUnpopulated: true},
		UnmarshalOptions: protojson.UnmarshalOptions{DiscardUnknown: false},
	}
}

// decodeAll decodes messages of m's type from body with dec until an
// error (io.EOF after the last, as a client stream's body ends), at most
// limit of them, and returns them with the error.
func decodeAll(m proto.Message, dec runtime.Decoder, limit int) ([]proto.Message, error) {
	var out []proto.Message
	for range limit {
		v := m.ProtoReflect().New().Interface()
		if err := dec.Decode(v); err != nil {
			return out, err
		}
		out = append(out, v)
	}
	return out, nil
}

// agree requires restJSON and the gateway's decoder to decode body (as
// reader gives it) alike: the same messages, then the same error, with
// the same text.
func agree(t *testing.T, m proto.Message, body []byte, reader func([]byte) io.Reader) {
	t.Helper()
	want, wantErr := decodeAll(m, gatewayJSON().NewDecoder(reader(body)), 4)
	got, gotErr := decodeAll(m, restJSON{gatewayJSON()}.NewDecoder(reader(body)), 4)
	require.Len(t, got, len(want), "%q: messages decoded", body)
	for i := range want {
		assert.True(t, proto.Equal(want[i], got[i]), "%q: message %d: %v, want %v", body, i, got[i], want[i])
	}
	if wantErr == nil {
		assert.NoError(t, gotErr, "%q", body)
		return
	}
	require.Error(t, gotErr, "%q: want %v", body, wantErr)
	assert.Equal(t, wantErr.Error(), gotErr.Error(), "%q", body)
	assert.Equal(t, errors.Is(wantErr, io.EOF), errors.Is(gotErr, io.EOF), "%q: io.EOF (no body) is not an error to the gateway", body)
}

// bodyReaders give a body as a request's: whole, a byte per read, bounded by
// http.MaxBytesReader, and failing after the first bytes.
var bodyReaders = map[string]func([]byte) io.Reader{
	"whole":    func(b []byte) io.Reader { return bytes.NewReader(b) },
	"one byte": func(b []byte) io.Reader { return iotest.OneByteReader(bytes.NewReader(b)) },
	"max 40 bytes": func(b []byte) io.Reader {
		return http.MaxBytesReader(nil, io.NopCloser(bytes.NewReader(b)), 40)
	},
	"fails after 20 bytes": func(b []byte) io.Reader {
		return io.MultiReader(bytes.NewReader(b[:min(20, len(b))]), errReader{errors.New("connection reset")})
	},
}

var restJSONSeeds = []string{
	``,
	` `,
	`{}`,
	"\t{}\n",
	`{"scheme":"SIGNATURE_SCHEME_ED25519","message":"YmVuY2htYXJr"}`,
	`{"scheme":"SIGNATURE_SCHEME_ED25519","message":"YmVuY2htYXJr"} trailing`,
	`{"key":"a"}{"key":"b"}`,
	`{"key":"a"}` + "\n" + `{"key":"b"}` + "\n",
	`{"key":"a"}{`,
	`{"key":"a","key":"b"}`,
	`{"unknown":1}`,
	`{"version":"1"}`,
	`{"version":1.5}`,
	`{"version":01}`,
	`{"digest":"!!"}`,
	"{\"key\":\"\xff\"}",
	`[]`,
	`null`,
	`{"key":"a"`,
	`{"operations":[{"sign":{"key":"a","digest":"AAAA"}}]}`,
	`{"data":"` + strings.Repeat("QUFB", maxFastBody/4) + `"}`,
}

// restJSON decodes what the gateway's decoder decodes and refuses what it
// refuses, with the same error, however the body arrives: one message,
// none, several (a client stream), trailing data, bad JSON, a body too
// long or cut off.
func TestRESTJSONDecoderAgreesWithGateway(t *testing.T) {
	for _, m := range []proto.Message{&pb.SignRequest{}, &pb.BatchRequest{}, &pb.RestoreRequest{}} {
		for name, reader := range bodyReaders {
			for _, body := range restJSONSeeds {
				t.Run(name, func(t *testing.T) { agree(t, m, []byte(body), reader) })
			}
		}
	}
}

// A body longer than restJSON parses in one piece still decodes, through
// the gateway's decoder: a stream of messages, each whole.
func TestRESTJSONDecoderLongStream(t *testing.T) {
	line := `{"data":"` + strings.Repeat("QUFB", 1000) + `"}` + "\n"
	body := strings.Repeat(line, 2*maxFastBody/len(line))
	msgs, err := decodeAll(&pb.RestoreRequest{}, restJSON{gatewayJSON()}.NewDecoder(strings.NewReader(body)), 1000)
	require.ErrorIs(t, err, io.EOF)
	require.Len(t, msgs, 2*maxFastBody/len(line))
	assert.Len(t, msgs[len(msgs)-1].(*pb.RestoreRequest).GetData(), 3000)
}

func FuzzRESTJSONDecoder(f *testing.F) {
	for _, s := range restJSONSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		for _, m := range []proto.Message{&pb.SignRequest{}, &pb.BatchRequest{}, &pb.RestoreRequest{}} {
			agree(t, m, body, bodyReaders["whole"])
			agree(t, m, body, bodyReaders["max 40 bytes"])
		}
	})
}
