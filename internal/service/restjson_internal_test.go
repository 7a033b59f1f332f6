package service

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"
	"google.golang.org/protobuf/types/known/timestamppb"

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
	// What decodePlain takes, and its edges.
	`{"key":"a","version":7,"scheme":"SIGNATURE_SCHEME_ECDSA_SECP256R1_SHA256","digest":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="}`,
	`{"key":"a","mode":"DECRYPT_MODE_RSA_PKCS1_TLS_PREMASTER","ciphertext":"AAEC","expectedClientVersion":771}`,
	`{"key":"a","expected_client_version":771,"expectedClientVersion":771}`,
	`{"message":"YQ","digest":"YQ=="}`,
	`{"message":"-_-_"}`, `{"message":"+/+/"}`, `{"message":"+_"}`, `{"message":"YQ="}`, `{"message":"Y"}`, `{"message":""}`,
	`{"scheme":"NOT_A_SCHEME"}`, `{"scheme":3}`, `{"scheme":"3"}`, `{"scheme":null}`,
	`{"version":0}`, `{"version":-0}`, `{"version":-1}`, `{"version":4294967295}`, `{"version":4294967296}`,
	`{"version":1e2}`, `{"version":10x}`, `{"version":"7"}`, `{"version":007}`, `{"version":-}`,
	`{"key":"a\u0062"}`, `{"k\u0065y":"a"}`, "{\"key\":\"a\tb\"}", `{"key":"é"}`, `{"key":1}`,
	`{"stateless":true}`, `{"stateless":false}`, `{"stateless":truex}`, `{"stateless":"true"}`,
	`{"id":"h","input":"AAEC","stateToken":"AAEC"}`,
	`{"config":{"keys":[{"key":"a"}],"omitTrace":true},"input":"FgMB"}`,
	`{"config":{"keys":[{"key":"a"},{"key":"b"}]}}`, `{"config":{"keys":[]}}`, `{"config":{"keys":[null]}}`, `{"config":{"keys":[1]}}`,
	`{"config":{"keys":[{"key":"a"},]}}`, `{"config":{}}`, `{"config":null}`, `{"config":{"config":{}}}`,
	`{"reference":"r","operations":[{"sign":{"key":"a","digest":"AAAA"}},{"decrypt":{"key":"b","ciphertext":"AAAA"}}]}`,
	`{"operations":[{"sign":{"key":"a"},"decrypt":{"key":"b"}}]}`,
	`{"operations":[{}],"operations":[]}`,
	`{"key":"a",}`, `{,}`, `{"key" "a"}`, `{"key":"a" "version":1}`, ` { "key" : "a" , "version" : 1 } `,
}

// plainMessages are the requests restJSON's tests decode: those of the
// hot REST calls (Sign, Decrypt, handshake steps, Batch) and the restore
// stream's.
var plainMessages = []proto.Message{&pb.SignRequest{}, &pb.DecryptRequest{}, &pb.StartHandshakeRequest{},
	&pb.StepHandshakeRequest{}, &pb.BatchRequest{}, &pb.RestoreRequest{}}

// restJSON decodes what the gateway's decoder decodes and refuses what it
// refuses, with the same error, however the body arrives: one message,
// none, several (a client stream), trailing data, bad JSON, a body too
// long or cut off.
func TestRESTJSONDecoderAgreesWithGateway(t *testing.T) {
	for _, m := range plainMessages {
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
		for _, m := range plainMessages {
			agree(t, m, body, bodyReaders["whole"])
			agree(t, m, body, bodyReaders["max 40 bytes"])
		}
	})
}

// The bodies the API's clients send take decodePlain's path (the
// agreement tests pass whether or not it is taken), into what protojson
// decodes.
func TestRESTJSONPlainBodies(t *testing.T) {
	for _, tc := range []struct {
		m    proto.Message
		body string
	}{
		{&pb.SignRequest{}, `{"scheme":"SIGNATURE_SCHEME_ED25519","message":"YmVuY2htYXJr"}`},
		{&pb.SignRequest{}, `{"key":"k","version":2,"scheme":"SIGNATURE_SCHEME_ECDSA_SECP256R1_SHA256","digest":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="}`},
		{&pb.DecryptRequest{}, `{"mode":"DECRYPT_MODE_RSA_PKCS1_TLS_PREMASTER","ciphertext":"AAEC","expected_client_version":771}`},
		{&pb.StepHandshakeRequest{}, `{"input":"FgMBAAE=","stateToken":"AAEC"}`},
		{&pb.StepHandshakeRequest{}, `{"input":"-_-","stateToken":"+/+"}`},
		{&pb.StartHandshakeRequest{}, `{"config":{"keys":[{"key":"a"}],"omitTrace":true},"input":"FgMB","stateless":true}`},
		{&pb.BatchRequest{}, `{"reference":"r","operations":[{"sign":{"key":"a","digest":"AAAA"}},{"decrypt":{"key":"b","ciphertext":"AAAA"}}]}`},
	} {
		got := tc.m.ProtoReflect().New().Interface()
		require.True(t, decodePlain([]byte(tc.body), got), "%s", tc.body)
		want := tc.m.ProtoReflect().New().Interface()
		require.NoError(t, gatewayJSON().Unmarshal([]byte(tc.body), want))
		assert.True(t, proto.Equal(want, got), "%s: %v, want %v", tc.body, got, want)
	}
}

// restJSON answers with the bytes the gateway's codec writes (protojson's
// in this binary), for every message of the API filled at random: each
// kind of field set or not, strings that need escapes or are not UTF-8,
// unknown enum numbers, the extremes of the integers, nested and listed
// messages, oneofs, timestamps in and out of range; and for what is not a
// message.
func TestRESTJSONMarshalAgreesWithGateway(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	n := 0
	protoregistry.GlobalTypes.RangeMessages(func(mt protoreflect.MessageType) bool {
		if mt.Descriptor().ParentFile().Package() != "handshake.v1" {
			return true
		}
		n++
		for range 40 {
			m := mt.New()
			fillRandom(r, m, 0)
			marshalAgrees(t, m.Interface())
		}
		marshalAgrees(t, mt.New().Interface())
		return true
	})
	require.Greater(t, n, 50, "messages of the API")
	for _, ts := range []*timestamppb.Timestamp{{}, {Seconds: 1, Nanos: 1}, {Seconds: -62135596800}, {Seconds: 253402300799, Nanos: 999999999}} {
		marshalAgrees(t, &pb.HandshakeStep{ExpireTime: ts})
		marshalAgrees(t, ts)
	}
	for _, ts := range []*timestamppb.Timestamp{{Seconds: -62135596801}, {Seconds: 253402300800}, {Nanos: -1}, {Nanos: 1e9}} {
		marshalAgrees(t, &pb.HandshakeStep{ExpireTime: ts})
	}
	marshalAgrees(t, map[string]any{"not": "a message"})
}

func marshalAgrees(t *testing.T, v any) {
	t.Helper()
	want, wantErr := gatewayJSON().Marshal(v)
	got, err := restJSON{gatewayJSON()}.Marshal(v)
	if wantErr != nil {
		assert.Error(t, err, "%v", v)
		return
	}
	require.NoError(t, err, "%v", v)
	assert.Equal(t, string(want), string(got))
}

// The answers of the hot REST calls take marshalPlain's path (the
// agreement test passes whether or not it is taken).
func TestRESTJSONPlainAnswers(t *testing.T) {
	for _, m := range []proto.Message{
		&pb.SignResponse{Signature: []byte{1}, Version: 1}, &pb.DecryptResponse{Plaintext: []byte{1}},
		&pb.BatchResponse{Results: []*pb.BatchResult{{}}}, &pb.HandshakeStep{ExpireTime: timestamppb.Now()},
	} {
		_, ok := marshalPlain(m.ProtoReflect())
		assert.True(t, ok, "%T", m)
	}
}

var (
	randomStrings = []string{"", "a", "key-1", "é€𝄞", "\"\\/", "\b\f\n\r\t\x00\x01\x1f\x7f", "\u2028\u2029<>&", "\ufffd", "\xff", "a\xc3"}
	randomInts    = []int64{0, 1, -1, 127, 1 << 31, -1 << 31, 1<<31 - 1, 1<<63 - 1, -1 << 63}
)

// fillRandom sets some of m's fields (recursively, to a depth of 3) to
// values chosen to cover what a JSON writer must get right.
func fillRandom(r *rand.Rand, m protoreflect.Message, depth int) {
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		if r.IntN(3) == 0 {
			continue
		}
		switch {
		case fd.IsList():
			l := m.Mutable(fd).List()
			for range r.IntN(3) {
				if fd.Message() != nil {
					if depth < 3 {
						e := l.NewElement()
						fillRandom(r, e.Message(), depth+1)
						l.Append(e)
					}
					continue
				}
				l.Append(randomScalar(r, fd))
			}
		case fd.IsMap():
			mp := m.Mutable(fd).Map()
			for range r.IntN(3) {
				k := randomScalar(r, fd.MapKey()).MapKey()
				if fd.MapValue().Message() != nil {
					if depth < 3 {
						v := mp.NewValue()
						fillRandom(r, v.Message(), depth+1)
						mp.Set(k, v)
					}
					continue
				}
				mp.Set(k, randomScalar(r, fd.MapValue()))
			}
		case fd.Message() != nil:
			if depth < 3 {
				fillRandom(r, m.Mutable(fd).Message(), depth+1)
			}
		default:
			m.Set(fd, randomScalar(r, fd))
		}
	}
}

func randomScalar(r *rand.Rand, fd protoreflect.FieldDescriptor) protoreflect.Value {
	n := randomInts[r.IntN(len(randomInts))]
	switch fd.Kind() {
	case protoreflect.BoolKind:
		return protoreflect.ValueOfBool(r.IntN(2) == 0)
	case protoreflect.StringKind:
		return protoreflect.ValueOfString(randomStrings[r.IntN(len(randomStrings))])
	case protoreflect.BytesKind:
		b := make([]byte, r.IntN(6))
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		return protoreflect.ValueOfBytes(b)
	case protoreflect.EnumKind:
		if values := fd.Enum().Values(); r.IntN(4) > 0 {
			return protoreflect.ValueOfEnum(values.Get(r.IntN(values.Len())).Number())
		}
		return protoreflect.ValueOfEnum(99)
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		return protoreflect.ValueOfInt32(int32(n))
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		return protoreflect.ValueOfInt64(n)
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		return protoreflect.ValueOfUint32(uint32(n))
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return protoreflect.ValueOfUint64(uint64(n))
	case protoreflect.FloatKind:
		return protoreflect.ValueOfFloat32(float32(n) / 3)
	case protoreflect.DoubleKind:
		return protoreflect.ValueOfFloat64(float64(n) / 3)
	}
	panic(fd.Kind().String())
}

// decodePlain leaves deep nesting to protojson, which has a recursion
// limit. No message of the API nests: this one does.
func TestRESTJSONDeepBody(t *testing.T) {
	fd, err := protodesc.NewFile(&descriptorpb.FileDescriptorProto{
		Name: proto.String("node.proto"), Package: proto.String("test"), Syntax: proto.String("proto3"),
		MessageType: []*descriptorpb.DescriptorProto{{Name: proto.String("Node"), Field: []*descriptorpb.FieldDescriptorProto{{
			Name: proto.String("n"), JsonName: proto.String("n"), Number: proto.Int32(1), TypeName: proto.String(".test.Node"),
			Type: descriptorpb.FieldDescriptorProto_TYPE_MESSAGE.Enum(), Label: descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum(),
		}}}},
	}, nil)
	require.NoError(t, err)
	node := dynamicpb.NewMessage(fd.Messages().Get(0))
	nested := func(depth int) []byte {
		return []byte(strings.Repeat(`{"n":`, depth) + "{}" + strings.Repeat(`}`, depth))
	}
	assert.True(t, decodePlain(nested(maxPlainDepth), node.New().Interface()))
	assert.False(t, decodePlain(nested(maxPlainDepth+1), node.New().Interface()))
	deep := nested(protowire.DefaultRecursionLimit)
	require.LessOrEqual(t, len(deep), maxFastBody)
	for _, body := range [][]byte{nested(maxPlainDepth + 1), deep} {
		agree(t, node, body, bodyReaders["whole"])
	}
}

// BenchmarkRESTJSON decodes a REST Sign's body and writes its answer with
// protojson (what restJSON did before decodePlain and marshalPlain) and
// with restJSON's plain paths:
//
//	go test -run '^$' -bench RESTJSON -benchmem ./internal/service/
func BenchmarkRESTJSON(b *testing.B) {
	body := []byte(`{"scheme":"SIGNATURE_SCHEME_ECDSA_SECP256R1_SHA256","digest":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="}`)
	answer := &pb.SignResponse{Signature: bytes.Repeat([]byte{0x30}, 72), Version: 1}
	codec := gatewayJSON()
	b.Run("protojson/decode", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := codec.UnmarshalOptions.Unmarshal(body, &pb.SignRequest{}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("plain/decode", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if !decodePlain(body, &pb.SignRequest{}) {
				b.Fatal("not plain")
			}
		}
	})
	b.Run("protojson/marshal", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := codec.MarshalOptions.Marshal(answer); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("plain/marshal", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, ok := marshalPlain(answer.ProtoReflect()); !ok {
				b.Fatal("not plain")
			}
		}
	})
}
