package service

import (
	"bytes"
	"io"
	"sync"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/protobuf/proto"
)

// restJSON is the gateway's JSON codec (runtime.JSONPb) with a cheaper
// request decoder. The gateway's own decoder parses every body twice:
// encoding/json finds the first JSON value (copying it), then protojson
// parses it into the message (issue 12: the first pass was a quarter of
// the decoding of a REST Sign). Most bodies are a single JSON object that
// protojson accepts whole, so restJSON reads the body once (bodies are
// bounded: MaxRequestBytes) and gives it to protojson; any other body (no
// body, trailing data, several messages of a client stream, invalid JSON,
// a read error) goes, byte for byte, to the gateway's decoder, which
// decides what it decides today. So what the gateway accepts, refuses and
// how it says so stays as it was (FuzzRESTJSONDecoder checks the two
// decoders agree).
type restJSON struct {
	*runtime.JSONPb
}

// maxFastBody is the largest body restJSON parses in one piece: a Sign,
// Decrypt or handshake step is far smaller. A longer body (a restore's
// stream of backup chunks) streams through the gateway's decoder with
// what was read so far in front of the rest.
const maxFastBody = 64 << 10

// bodyBuffers are restJSON's read buffers: protojson copies what it keeps
// (strings, decoded bytes), so a buffer is free again once a body is
// parsed.
var bodyBuffers = sync.Pool{New: func() any { return new(bytes.Buffer) }}

func (j restJSON) NewDecoder(r io.Reader) runtime.Decoder {
	return &restDecoder{codec: j.JSONPb, r: r}
}

// restDecoder decodes a request body. Its first Decode tries the body
// whole; once it has passed the body to the gateway's decoder (next), the
// following ones, if any (a client stream), are that decoder's.
type restDecoder struct {
	codec *runtime.JSONPb
	r     io.Reader
	next  runtime.Decoder
}

func (d *restDecoder) Decode(v any) error {
	if d.next != nil {
		return d.next.Decode(v)
	}
	m, ok := v.(proto.Message)
	if !ok {
		d.next = d.codec.NewDecoder(d.r)
		return d.next.Decode(v)
	}
	buf := bodyBuffers.Get().(*bytes.Buffer)
	defer func() {
		if buf.Cap() <= maxFastBody {
			buf.Reset()
			bodyBuffers.Put(buf)
		}
	}()
	_, err := buf.ReadFrom(io.LimitReader(d.r, maxFastBody+1))
	if err == nil && buf.Len() <= maxFastBody && d.codec.UnmarshalOptions.Unmarshal(buf.Bytes(), m) == nil {
		// The whole body was this one message: the gateway's decoder
		// would have decoded it and then found the end of the body.
		d.next = bodyEnd{}
		return nil
	}
	// The gateway's decoder reads the same bytes (those read, then the
	// read's error or the rest of the body) into a message as it was.
	proto.Reset(m)
	read := bytes.Clone(buf.Bytes())
	rest := d.r
	if err != nil {
		rest = errReader{err}
	}
	d.next = d.codec.NewDecoder(io.MultiReader(bytes.NewReader(read), rest))
	return d.next.Decode(v)
}

// bodyEnd is what is left of a body once its one message is decoded:
// nothing, as the gateway's decoder says.
type bodyEnd struct{}

func (bodyEnd) Decode(any) error { return io.EOF }

// errReader fails every read with err, as the body it stands for did.
type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }
