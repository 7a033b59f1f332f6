package service

import (
	"bytes"
	"encoding/base64"
	"errors"
	"io"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
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

// Marshal is JSONPb's: a message of a plain type (plainType: most of the
// API's answers) is written by marshalPlain, any other by protojson
// without copying its output into a buffer of its own.
func (j restJSON) Marshal(v any) ([]byte, error) {
	if m, ok := v.(proto.Message); ok {
		if j.MarshalOptions == plainMarshalOptions {
			if b, ok := marshalPlain(m.ProtoReflect()); ok {
				return b, nil
			}
		}
		return j.MarshalOptions.Marshal(m)
	}
	return j.JSONPb.Marshal(v)
}

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
	if err == nil && buf.Len() <= maxFastBody && (decodePlain(buf.Bytes(), m) || d.codec.UnmarshalOptions.Unmarshal(buf.Bytes(), m) == nil) {
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

// decodePlain decodes body into m, as protojson would, if body is a plain
// request: one JSON object whose members are fields of the message, each
// at most once and one per oneof, holding strings without escapes,
// base64 bytes, enum names, integers without fraction or exponent,
// booleans, objects of the same kind (no well-known type) or lists of
// these, with no null, map or float. That is every REST call's body as
// the API's clients send it, and a quarter of protojson's work (issue 12:
// its tokenizer was most of the decoding of a REST Sign). For anything
// else it returns false, with m in any state, and protojson decides what
// it decides: decodePlain accepts only what protojson accepts, into the
// same message (FuzzRESTJSONDecoder checks it against the gateway).
func decodePlain(body []byte, m proto.Message) bool {
	proto.Reset(m)
	p := plainJSON{b: body}
	if !p.object(m.ProtoReflect(), 0) {
		return false
	}
	p.space()
	return p.i == len(p.b) && proto.CheckInitialized(m) == nil
}

// plainJSON reads a body for decodePlain.
type plainJSON struct {
	b []byte
	i int
}

// maxPlainDepth is how deep decodePlain follows nested objects, well below
// protojson's recursion limit.
const maxPlainDepth = 16

func (p *plainJSON) space() {
	for p.i < len(p.b) {
		switch p.b[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

// next skips white space and reads c, if c is what comes.
func (p *plainJSON) next(c byte) bool {
	p.space()
	if p.i < len(p.b) && p.b[p.i] == c {
		p.i++
		return true
	}
	return false
}

// str reads a string without escapes or control characters, valid UTF-8:
// its bytes are its value.
func (p *plainJSON) str() ([]byte, bool) {
	if !p.next('"') {
		return nil, false
	}
	for j := p.i; j < len(p.b); j++ {
		switch c := p.b[j]; {
		case c == '"':
			s := p.b[p.i:j]
			p.i = j + 1
			return s, utf8.Valid(s)
		case c == '\\' || c < 0x20:
			return nil, false
		}
	}
	return nil, false
}

// end reports whether a number or literal ends here, as JSON's grammar
// wants: white space, a separator or the end of the body follows.
func (p *plainJSON) end() bool {
	if p.i == len(p.b) {
		return true
	}
	switch p.b[p.i] {
	case ' ', '\t', '\n', '\r', ',', '}', ']':
		return true
	}
	return false
}

func (p *plainJSON) object(m protoreflect.Message, depth int) bool {
	md := m.Descriptor()
	fields := md.Fields()
	// Seen fields and oneofs by index: protojson refuses a field twice
	// (its JSON and its proto name count as one) and two of a oneof.
	var seen, seenOneofs uint64
	if depth > maxPlainDepth || fields.Len() > 64 || md.Oneofs().Len() > 64 || !p.next('{') {
		return false
	}
	if p.next('}') {
		return true
	}
	for {
		name, ok := p.str()
		if !ok || !p.next(':') {
			return false
		}
		fd := fields.ByJSONName(string(name))
		if fd == nil {
			fd = fields.ByTextName(string(name))
		}
		if fd == nil || fd.IsMap() || seen&(1<<fd.Index()) != 0 {
			return false
		}
		seen |= 1 << fd.Index()
		if fd.IsList() {
			if !p.list(m.Mutable(fd).List(), fd, depth) {
				return false
			}
		} else {
			if od := fd.ContainingOneof(); od != nil {
				if seenOneofs&(1<<od.Index()) != 0 {
					return false
				}
				seenOneofs |= 1 << od.Index()
			}
			v, ok := p.value(m.NewField(fd), fd, depth)
			if !ok {
				return false
			}
			m.Set(fd, v)
		}
		if p.next('}') {
			return true
		}
		if !p.next(',') {
			return false
		}
	}
}

func (p *plainJSON) list(l protoreflect.List, fd protoreflect.FieldDescriptor, depth int) bool {
	if !p.next('[') {
		return false
	}
	if p.next(']') {
		return true
	}
	for {
		v, ok := p.value(l.NewElement(), fd, depth)
		if !ok {
			return false
		}
		l.Append(v)
		if p.next(']') {
			return true
		}
		if !p.next(',') {
			return false
		}
	}
}

// value reads a value of fd's kind; for a message, into empty, a new one.
func (p *plainJSON) value(empty protoreflect.Value, fd protoreflect.FieldDescriptor, depth int) (protoreflect.Value, bool) {
	switch fd.Kind() {
	case protoreflect.MessageKind, protoreflect.GroupKind:
		// Well-known types have JSON forms of their own.
		if fd.Message().FullName().Parent() == "google.protobuf" {
			return protoreflect.Value{}, false
		}
		return empty, p.object(empty.Message(), depth+1)
	case protoreflect.StringKind:
		s, ok := p.str()
		return protoreflect.ValueOfString(string(s)), ok
	case protoreflect.BytesKind:
		s, ok := p.str()
		if !ok {
			return protoreflect.Value{}, false
		}
		b, ok := decodeBase64(s)
		return protoreflect.ValueOfBytes(b), ok
	case protoreflect.EnumKind:
		s, ok := p.str()
		if !ok || fd.Enum().FullName() == "google.protobuf.NullValue" {
			return protoreflect.Value{}, false
		}
		ev := fd.Enum().Values().ByName(protoreflect.Name(s))
		if ev == nil {
			return protoreflect.Value{}, false
		}
		return protoreflect.ValueOfEnum(ev.Number()), true
	case protoreflect.BoolKind:
		p.space()
		for _, lit := range [...]string{"false", "true"} {
			if bytes.HasPrefix(p.b[p.i:], []byte(lit)) {
				p.i += len(lit)
				return protoreflect.ValueOfBool(lit == "true"), p.end()
			}
		}
		return protoreflect.Value{}, false
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		n, err := strconv.ParseInt(p.integer(true), 10, 32)
		return protoreflect.ValueOfInt32(int32(n)), err == nil && p.end()
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		n, err := strconv.ParseInt(p.integer(true), 10, 64)
		return protoreflect.ValueOfInt64(n), err == nil && p.end()
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		n, err := strconv.ParseUint(p.integer(false), 10, 32)
		return protoreflect.ValueOfUint32(uint32(n)), err == nil && p.end()
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		n, err := strconv.ParseUint(p.integer(false), 10, 64)
		return protoreflect.ValueOfUint64(n), err == nil && p.end()
	}
	return protoreflect.Value{}, false // floats: protojson's
}

// integer reads a JSON number that is an integer written plainly: digits
// without a leading zero, with a minus if signed (not "-0"). Anything
// else gives "", which no parser takes.
func (p *plainJSON) integer(signed bool) string {
	p.space()
	start := p.i
	if signed && p.i < len(p.b) && p.b[p.i] == '-' {
		p.i++
	}
	digits := p.i
	for p.i < len(p.b) && '0' <= p.b[p.i] && p.b[p.i] <= '9' {
		p.i++
	}
	if p.i == digits || p.b[digits] == '0' && (p.i > digits+1 || digits > start) {
		return ""
	}
	return string(p.b[start:p.i])
}

// decodeBase64 decodes bytes as protojson does: standard or URL alphabet
// (whichever the string's characters say), padded or not (whichever its
// length says).
func decodeBase64(s []byte) ([]byte, bool) {
	enc := base64.StdEncoding
	if bytes.ContainsAny(s, "-_") {
		enc = base64.URLEncoding
	}
	if len(s)%4 != 0 {
		enc = base64.RawStdEncoding
		if bytes.ContainsAny(s, "-_") {
			enc = base64.RawURLEncoding
		}
	}
	b := make([]byte, enc.DecodedLen(len(s)))
	n, err := enc.Decode(b, s)
	return b[:n], err == nil
}

// plainMarshalOptions are the options marshalPlain writes as: the
// server's (unpopulated fields too, JSON names, enum names, one line).
var plainMarshalOptions = protojson.MarshalOptions{EmitUnpopulated: true}

// commaSpace is whether protojson puts a space after the commas of
// one-line output. It does so or not, at random, once per binary (its
// internal detrand: so that nobody relies on its bytes); marshalPlain
// writes the bytes protojson writes in this binary.
var commaSpace = func() bool {
	b, err := plainMarshalOptions.Marshal(&pb.SignResponse{Signature: []byte{0}, Version: 1})
	return err == nil && bytes.Contains(b, []byte(", "))
}()

// plainTypes caches plainType by message descriptor.
var plainTypes sync.Map

// plainType reports whether messages of md's type, and of every type they
// hold, have fields marshalPlain writes: no float, map, group or
// extension, no well-known type (each has a JSON form of its own) but
// Timestamp in a field (a handshake step's expiry).
func plainType(md protoreflect.MessageDescriptor) bool {
	if v, ok := plainTypes.Load(md); ok {
		return v.(bool)
	}
	ok := plainTypeOf(md, map[protoreflect.MessageDescriptor]bool{})
	plainTypes.Store(md, ok)
	return ok
}

func plainTypeOf(md protoreflect.MessageDescriptor, visiting map[protoreflect.MessageDescriptor]bool) bool {
	if visiting[md] {
		return true // a cycle adds no kind of field
	}
	visiting[md] = true
	if md.FullName().Parent() == "google.protobuf" || md.ExtensionRanges().Len() > 0 {
		return false
	}
	fields := md.Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		switch fd.Kind() {
		case protoreflect.FloatKind, protoreflect.DoubleKind, protoreflect.GroupKind:
			return false
		case protoreflect.MessageKind:
			if fd.IsMap() || fd.Message().FullName() != timestampType && !plainTypeOf(fd.Message(), visiting) {
				return false
			}
		}
	}
	return true
}

const timestampType = "google.protobuf.Timestamp"

// appendTimestamp writes a Timestamp as protojson does: RFC 3339 in UTC
// with 0, 3, 6 or 9 digits of fraction; false out of its range (years 1
// to 9999), which protojson refuses.
func appendTimestamp(b []byte, m protoreflect.Message) ([]byte, bool) {
	fields := m.Descriptor().Fields()
	secs, nanos := m.Get(fields.ByNumber(1)).Int(), m.Get(fields.ByNumber(2)).Int()
	if secs < -62135596800 || secs > 253402300799 || nanos < 0 || nanos > 999999999 {
		return nil, false
	}
	b = append(b, '"')
	start := len(b)
	b = time.Unix(secs, nanos).UTC().AppendFormat(b, "2006-01-02T15:04:05.000000000")
	for range 2 {
		if bytes.HasSuffix(b[start:], []byte("000")) {
			b = b[:len(b)-3]
		}
	}
	if bytes.HasSuffix(b[start:], []byte(".000")) {
		b = b[:len(b)-4]
	}
	return append(b, 'Z', '"'), true
}

// marshalPlain writes m as protojson does with plainMarshalOptions, if
// m's type is plain (plainType) and its strings are UTF-8 (protojson
// refuses other strings: so does marshalPlain, and protojson says why).
// protojson's reflection and sorting of fields were most of the cost of
// writing a REST answer (issue 12); TestRESTJSONMarshalAgreesWithGateway
// compares the two over every message of the API.
func marshalPlain(m protoreflect.Message) ([]byte, bool) {
	if !plainType(m.Descriptor()) {
		return nil, false
	}
	b, ok := appendPlainMessage(make([]byte, 0, 128), m)
	return b, ok && proto.CheckInitialized(m.Interface()) == nil
}

// appendPlainMessage writes the fields in the order protojson does (their
// declaration's), each set one with its value and each unset one but
// members of a oneof: null if it has presence, its zero value if not.
func appendPlainMessage(b []byte, m protoreflect.Message) ([]byte, bool) {
	b = append(b, '{')
	fields := m.Descriptor().Fields()
	first := true
	for i := range fields.Len() {
		fd := fields.Get(i)
		v := m.Get(fd)
		if !m.Has(fd) {
			if fd.ContainingOneof() != nil {
				continue
			}
			if fd.HasPresence() {
				v = protoreflect.Value{}
			}
		}
		if !first {
			b = appendComma(b)
		}
		first = false
		var ok bool
		if b, ok = appendJSONString(b, fd.JSONName()); !ok {
			return nil, false
		}
		b = append(b, ':')
		if fd.IsList() {
			b, ok = appendPlainList(b, v.List(), fd)
		} else {
			b, ok = appendPlainValue(b, v, fd)
		}
		if !ok {
			return nil, false
		}
	}
	return append(b, '}'), true
}

func appendComma(b []byte) []byte {
	if commaSpace {
		return append(b, ',', ' ')
	}
	return append(b, ',')
}

func appendPlainList(b []byte, l protoreflect.List, fd protoreflect.FieldDescriptor) ([]byte, bool) {
	b = append(b, '[')
	for i := range l.Len() {
		if i > 0 {
			b = appendComma(b)
		}
		var ok bool
		if b, ok = appendPlainValue(b, l.Get(i), fd); !ok {
			return nil, false
		}
	}
	return append(b, ']'), true
}

// appendPlainValue writes one value of fd's kind as protojson does: 64-bit
// integers as strings, bytes in standard base64, enums by name (by number
// if unknown), an invalid value (an unset field with presence) as null.
func appendPlainValue(b []byte, v protoreflect.Value, fd protoreflect.FieldDescriptor) ([]byte, bool) {
	if !v.IsValid() {
		return append(b, "null"...), true
	}
	switch fd.Kind() {
	case protoreflect.BoolKind:
		return strconv.AppendBool(b, v.Bool()), true
	case protoreflect.StringKind:
		return appendJSONString(b, v.String())
	case protoreflect.BytesKind:
		b = append(b, '"')
		b = base64.StdEncoding.AppendEncode(b, v.Bytes())
		return append(b, '"'), true
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		return strconv.AppendInt(b, v.Int(), 10), true
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		return strconv.AppendUint(b, v.Uint(), 10), true
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		b = append(b, '"')
		b = strconv.AppendInt(b, v.Int(), 10)
		return append(b, '"'), true
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		b = append(b, '"')
		b = strconv.AppendUint(b, v.Uint(), 10)
		return append(b, '"'), true
	case protoreflect.EnumKind:
		if fd.Enum().FullName() == "google.protobuf.NullValue" {
			return append(b, "null"...), true
		}
		if ev := fd.Enum().Values().ByNumber(v.Enum()); ev != nil {
			return appendJSONString(b, string(ev.Name()))
		}
		return strconv.AppendInt(b, int64(v.Enum()), 10), true
	case protoreflect.MessageKind:
		if fd.Message().FullName() == timestampType {
			return appendTimestamp(b, v.Message())
		}
		return appendPlainMessage(b, v.Message())
	}
	return nil, false // not a plain type's
}

// appendJSONString writes s as protojson does: quoted, with \" and \\
// escaped, control characters as \b, \f, \n, \r, \t or \u00xx, the rest
// as it is; false if s is not UTF-8.
func appendJSONString(b []byte, s string) ([]byte, bool) {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c >= utf8.RuneSelf {
			r, n := utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && n == 1 {
				return nil, false
			}
			b = append(b, s[i:i+n]...)
			i += n
			continue
		}
		switch {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c == '\b':
			b = append(b, '\\', 'b')
		case c == '\f':
			b = append(b, '\\', 'f')
		case c == '\n':
			b = append(b, '\\', 'n')
		case c == '\r':
			b = append(b, '\\', 'r')
		case c == '\t':
			b = append(b, '\\', 't')
		case c < ' ':
			b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		default:
			b = append(b, c)
		}
		i++
	}
	return append(b, '"'), true
}

// oneBody is restJSON for the gateway: the body of a call that takes one
// request must be that request and nothing more. The gateway decodes one
// JSON value and leaves the rest of the body unread, so `{} x` or `{}{}`
// would disable a key version as `{}` does: malformed JSON, the caller's
// mistake, acted on. A client stream's body (a restore) is a sequence of
// messages and is left as it is.
type oneBody struct {
	restJSON
	streamed map[protoreflect.FullName]bool // the requests of client streams
}

// newOneBody is oneBody for the API's services: every method that reads a
// client stream is found in the descriptors.
func newOneBody(j restJSON, files ...protoreflect.FileDescriptor) oneBody {
	streamed := map[protoreflect.FullName]bool{}
	for _, fd := range files {
		for i := range fd.Services().Len() {
			ms := fd.Services().Get(i).Methods()
			for j := range ms.Len() {
				if ms.Get(j).IsStreamingClient() {
					streamed[ms.Get(j).Input().FullName()] = true
				}
			}
		}
	}
	return oneBody{j, streamed}
}

func (o oneBody) NewDecoder(r io.Reader) runtime.Decoder {
	return oneBodyDecoder{o.restJSON.NewDecoder(r), o.streamed}
}

type oneBodyDecoder struct {
	runtime.Decoder
	streamed map[protoreflect.FullName]bool
}

func (d oneBodyDecoder) Decode(v any) error {
	if err := d.Decoder.Decode(v); err != nil {
		return err
	}
	m, ok := v.(proto.Message)
	if !ok || d.streamed[m.ProtoReflect().Descriptor().FullName()] {
		return nil
	}
	// The body must end here. A second value, if any, goes into v, which
	// is refused with it.
	if err := d.Decoder.Decode(v); !errors.Is(err, io.EOF) {
		return errors.New("the body holds more than one JSON value")
	}
	return nil
}
