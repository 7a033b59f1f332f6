package service_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/service"
)

// need is which right a method asks of its caller on the keys it names,
// written down here by hand (not read from the service's rule table), so
// that a wrong right in that table fails the matrix below.
type need int

const (
	// needCaller: any authenticated caller (the handler itself scopes what
	// it answers: sessions to their owner, ListKeys to visible keys).
	needCaller need = iota
	needUse
	needManage
	needUseOrManage
	needAdmin
)

// matrixKey is the key every keyed request names; matrixOther is a key on
// which the "no right" caller holds every right, so holding rights on
// some key must not pass for rights on this one.
const (
	matrixKey   = "mx-key"
	matrixOther = "mx-other"
)

// matrixPolicy gives one identity per level: use only, manage only, rights
// on another key only, admin.
const matrixPolicy = `{"grants": [
  {"identities": ["` + idEdge + `"], "rights": ["use"], "keys": ["` + matrixKey + `"]},
  {"identities": ["` + idManager + `"], "rights": ["manage"], "keys": ["` + matrixKey + `"]},
  {"identities": ["` + idNobody + `"], "rights": ["use", "manage"], "keys": ["` + matrixOther + `"]},
  {"identities": ["` + idAdmin + `"], "rights": ["admin"]}
]}`

// matrixCall is one method's hand-written expectation: the right it needs
// and a deliberately minimal request that changes nothing (RotateKey adds
// a version), with the code a caller holding that right gets: OK, or the
// handler's own refusal of the request (the key exists already, has no
// version 99, has no certificate for a handshake), never an authorization
// one.
type matrixCall struct {
	need    need
	req     proto.Message
	allowed codes.Code
}

func matrixCalls() map[string]matrixCall {
	key := matrixKey
	hsKeys := &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: key}}}
	sign := &pb.SignRequest{Key: key, Scheme: p256Scheme, Input: &pb.SignRequest_Message{Message: []byte("matrix")}}
	return map[string]matrixCall{
		pb.KeyVault_CreateKey_FullMethodName:         {needManage, &pb.CreateKeyRequest{Id: key, Algorithm: pb.Algorithm_ALGORITHM_ECDSA_P256}, codes.AlreadyExists},
		pb.KeyVault_ImportKey_FullMethodName:         {needManage, &pb.ImportKeyRequest{Id: key, PrivateKeyPem: []byte("not a key")}, codes.AlreadyExists},
		pb.KeyVault_GetKey_FullMethodName:            {needUseOrManage, &pb.GetKeyRequest{Key: key}, codes.OK},
		pb.KeyVault_ListKeys_FullMethodName:          {needCaller, &pb.ListKeysRequest{}, codes.OK},
		pb.KeyVault_RotateKey_FullMethodName:         {needManage, &pb.RotateKeyRequest{Key: key}, codes.OK},
		pb.KeyVault_EnableKeyVersion_FullMethodName:  {needManage, &pb.EnableKeyVersionRequest{Key: key, Version: 99}, codes.NotFound},
		pb.KeyVault_DisableKeyVersion_FullMethodName: {needManage, &pb.DisableKeyVersionRequest{Key: key, Version: 99}, codes.NotFound},
		pb.KeyVault_DestroyKeyVersion_FullMethodName: {needManage, &pb.DestroyKeyVersionRequest{Key: key, Version: 99}, codes.NotFound},
		pb.KeyVault_GetPublicKey_FullMethodName:      {needUseOrManage, &pb.GetPublicKeyRequest{Key: key}, codes.OK},
		pb.KeyVault_AttachCertificateChain_FullMethodName: {needManage,
			&pb.AttachCertificateChainRequest{Key: key, Version: 1, CertificateChain: [][]byte{[]byte("not a certificate")}}, codes.InvalidArgument},
		pb.KeyVault_CreateCertificateSigningRequest_FullMethodName: {needManage,
			&pb.CreateCertificateSigningRequestRequest{Key: key, Version: 99, CommonName: "matrix.test"}, codes.NotFound},
		pb.KeyVault_Decrypt_FullMethodName: {needUse,
			&pb.DecryptRequest{Key: key, Version: 99, Mode: pb.DecryptMode_DECRYPT_MODE_RSA_OAEP_SHA256, Ciphertext: []byte{1}}, codes.NotFound},
		pb.KeyVault_Sign_FullMethodName:       {needUse, sign, codes.OK},
		pb.KeyVault_SignStream_FullMethodName: {needUse, &pb.SignStreamRequest{Request: sign}, codes.OK},
		pb.KeyVault_SealTicket_FullMethodName: {needUse, &pb.SealTicketRequest{Key: key, Plaintext: []byte("matrix")}, codes.OK},
		pb.KeyVault_OpenTicket_FullMethodName: {needUse, &pb.OpenTicketRequest{Key: key, Ticket: []byte("not a ticket")}, codes.OK},
		pb.KeyVault_Batch_FullMethodName: {needUse,
			&pb.BatchRequest{Operations: []*pb.BatchOperation{{Operation: &pb.BatchOperation_Sign{Sign: sign}}}}, codes.OK},
		pb.KeyVault_BatchStream_FullMethodName: {needUse,
			&pb.BatchStreamRequest{Batch: &pb.BatchRequest{Operations: []*pb.BatchOperation{{Operation: &pb.BatchOperation_Sign{Sign: sign}}}}}, codes.OK},
		pb.Handshake_StartHandshake_FullMethodName: {needUse, &pb.StartHandshakeRequest{Config: hsKeys}, codes.FailedPrecondition},
		pb.Handshake_StepHandshake_FullMethodName:  {needCaller, &pb.StepHandshakeRequest{Id: "no-such-session"}, codes.NotFound},
		pb.Handshake_GetHandshake_FullMethodName:   {needCaller, &pb.GetHandshakeRequest{Id: "no-such-session"}, codes.NotFound},
		pb.Handshake_AbortHandshake_FullMethodName: {needCaller, &pb.AbortHandshakeRequest{Id: "no-such-session"}, codes.NotFound},
		pb.Handshake_Stream_FullMethodName: {needUse,
			&pb.StreamRequest{Request: &pb.StreamRequest_Start{Start: &pb.StartHandshakeRequest{Config: hsKeys}}}, codes.FailedPrecondition},
		pb.Handshake_Multiplex_FullMethodName: {needUse,
			&pb.MultiplexRequest{Request: &pb.MultiplexRequest_Start{Start: &pb.StartHandshakeRequest{Config: hsKeys}}}, codes.FailedPrecondition},
		pb.Admin_GetKEKStatus_FullMethodName: {needAdmin, &pb.GetKEKStatusRequest{}, codes.OK},
		pb.Admin_RotateKEK_FullMethodName:    {needAdmin, &pb.RotateKEKRequest{NewKek: []byte("short")}, codes.InvalidArgument},
		pb.Admin_Backup_FullMethodName:       {needAdmin, &pb.BackupRequest{}, codes.OK},
		pb.Admin_Restore_FullMethodName:      {needAdmin, &pb.RestoreRequest{Data: []byte("not a snapshot")}, codes.InvalidArgument},
	}
}

// matrixLevel is a kind of caller: the client certificate it presents and
// whether each need admits it.
type matrixLevel struct {
	name, cert string
	admits     func(need) bool
}

var matrixLevels = []matrixLevel{
	{"no identity", "", func(need) bool { return false }},
	{"no right", "nobody", func(n need) bool { return n == needCaller }},
	{"use", "edge", func(n need) bool { return n == needCaller || n == needUse || n == needUseOrManage }},
	{"manage", "manager", func(n need) bool { return n == needCaller || n == needManage || n == needUseOrManage }},
	{"admin", "admin", func(need) bool { return true }},
}

// serviceMethods lists every method of the API's services, from the
// generated descriptors.
func serviceMethods(t *testing.T) []protoreflect.MethodDescriptor {
	t.Helper()
	var out []protoreflect.MethodDescriptor
	for _, fd := range []protoreflect.FileDescriptor{pb.File_handshake_v1_keyvault_proto, pb.File_handshake_v1_handshake_proto, pb.File_handshake_v1_admin_proto} {
		for i := range fd.Services().Len() {
			sd := fd.Services().Get(i)
			for j := range sd.Methods().Len() {
				out = append(out, sd.Methods().Get(j))
			}
		}
	}
	require.NotEmpty(t, out)
	return out
}

func fullMethod(md protoreflect.MethodDescriptor) string {
	return fmt.Sprintf("/%s/%s", md.Parent().FullName(), md.Name())
}

// callCode makes one call of md with req on conn and returns its code. A
// stream gets the one request; its code is the stream's status, or for a
// SignStream or Multiplex answer (and a batch's first result) the
// per-request error it carries.
func callCode(t *testing.T, conn *grpc.ClientConn, md protoreflect.MethodDescriptor, req proto.Message, opts ...grpc.CallOption) codes.Code {
	t.Helper()
	ctx := context.Background()
	mt, err := protoregistry.GlobalTypes.FindMessageByName(md.Output().FullName())
	require.NoError(t, err)
	resp := mt.New().Interface()
	if !md.IsStreamingClient() && !md.IsStreamingServer() {
		err := conn.Invoke(ctx, fullMethod(md), req, resp, opts...)
		// A batch authorizes each operation: a refusal is in its result.
		if r, ok := resp.(*pb.BatchResponse); ok && err == nil && r.GetResults()[0].GetError() != nil {
			return codes.Code(r.GetResults()[0].GetError().GetCode())
		}
		return status.Code(err)
	}
	desc := &grpc.StreamDesc{StreamName: string(md.Name()), ClientStreams: md.IsStreamingClient(), ServerStreams: md.IsStreamingServer()}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cs, err := conn.NewStream(ctx, desc, fullMethod(md), opts...)
	if err != nil {
		return status.Code(err)
	}
	if err := cs.SendMsg(req); err != nil && !errors.Is(err, io.EOF) {
		return status.Code(err)
	}
	require.NoError(t, cs.CloseSend())
	if err := cs.RecvMsg(resp); err != nil {
		require.NotErrorIs(t, err, io.EOF, "%s ended without answering", md.Name())
		return status.Code(err)
	}
	if r, ok := resp.(*pb.SignStreamResponse); ok && r.GetError() != nil {
		return codes.Code(r.GetError().GetCode())
	}
	if r, ok := resp.(*pb.BatchStreamResponse); ok && r.GetBatch().GetResults()[0].GetError() != nil {
		return codes.Code(r.GetBatch().GetResults()[0].GetError().GetCode())
	}
	if r, ok := resp.(*pb.MultiplexResponse); ok && r.GetError() != nil {
		return codes.Code(r.GetError().GetCode())
	}
	return codes.OK
}

// TestAuthorizationMatrix calls every method of the three services, streams
// included, as a caller with no certificate, with no right on the key, with
// use, with manage and as admin, over mutual TLS through the production
// interceptors, and checks each answer against the hand-written rights
// above: the caller without a certificate is UNAUTHENTICATED, a caller
// without the right PERMISSION_DENIED, and one with it gets the handler's
// answer.
func TestAuthorizationMatrix(t *testing.T) {
	calls := matrixCalls()
	methods := serviceMethods(t)
	t.Run("expectations cover the services", func(t *testing.T) {
		var names []string
		for _, md := range methods {
			names = append(names, fullMethod(md))
		}
		var written []string
		for m := range calls {
			written = append(written, m)
		}
		assert.ElementsMatch(t, names, written, "the hand-written expectations must name every method of the service descriptors, and only those")
	})

	// Callers without a certificate share a small rate (past it they are
	// RESOURCE_EXHAUSTED); the matrix makes one such call per method.
	s := startSecure(t, secureOptions{policy: matrixPolicy, limits: service.Limits{UnauthenticatedRate: 40 * float64(len(methods))},
		tickets: &service.TicketOptions{Deployment: "matrix"}})
	s.adminImport(t, matrixKey, "p256-pkcs8.pem", nil)
	conns := map[string]*grpc.ClientConn{}
	for _, l := range matrixLevels {
		conns[l.name] = s.dial(t, l.cert)
	}
	for _, md := range methods {
		c, ok := calls[fullMethod(md)]
		if !ok {
			continue // reported above
		}
		for _, l := range matrixLevels {
			t.Run(string(md.Name())+"/"+l.name, func(t *testing.T) {
				want := c.allowed
				switch {
				case l.cert == "":
					want = codes.Unauthenticated
				case !l.admits(c.need):
					want = codes.PermissionDenied
				}
				assert.Equal(t, want.String(), callCode(t, conns[l.name], md, c.req).String(), "%s as %s", md.Name(), l.name)
			})
		}
	}

	// ListKeys is open to every authenticated caller; what it shows is not.
	t.Run("ListKeys shows only keys with a right", func(t *testing.T) {
		for _, l := range matrixLevels[1:] {
			resp, err := pb.NewKeyVaultClient(conns[l.name]).ListKeys(context.Background(), &pb.ListKeysRequest{})
			require.NoError(t, err, l.name)
			sees := slices.ContainsFunc(resp.GetKeys(), func(k *pb.Key) bool { return k.GetId() == matrixKey })
			assert.Equal(t, l.name != "no right", sees, "%s sees %s", l.name, matrixKey)
		}
	})

	// A handshake naming several keys needs use on every one of them.
	t.Run("handshake needs every key", func(t *testing.T) {
		both := &pb.StartHandshakeRequest{Config: &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: matrixKey}, {Key: matrixOther}}}}
		_, err := pb.NewHandshakeClient(conns["use"]).StartHandshake(context.Background(), both)
		assert.Equal(t, codes.PermissionDenied, status.Code(err), "use on %s only", matrixKey)
	})
}
