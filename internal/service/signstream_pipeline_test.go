package service_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"io"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
)

// TestSignStreamPipelined: requests sent ahead of their answers (slow
// RSA-4096 signatures between fast P-256 ones and requests that fail) are
// worked on together but answered in request order, each answer being its
// own request's, and each audited with its own outcome, not its
// neighbour's.
func TestSignStreamPipelined(t *testing.T) {
	s := startSecure(t, secureOptions{})
	ctx := context.Background()
	s.adminImport(t, "key-rsa", "rsa4096-pkcs1.pem", nil)
	s.adminImport(t, "key-a", "p256-sec1.pem", nil)
	ecPub := vaultPublicKey(t, s, "key-a").(*ecdsa.PublicKey)

	pss := pb.SignatureScheme_SIGNATURE_SCHEME_RSA_PSS_RSAE_SHA256
	type want struct{ key, outcome string }
	var (
		reqs  []*pb.SignStreamRequest
		wants []want
	)
	for range 4 {
		reqs = append(reqs,
			&pb.SignStreamRequest{Request: signReq("key-rsa", pss)},
			&pb.SignStreamRequest{Request: signReq("key-a", p256Scheme)},
			&pb.SignStreamRequest{Request: signReq("key-a", edScheme)})
		wants = append(wants, want{"key-rsa", "OK"}, want{"key-a", "OK"}, want{"key-a", "INVALID_ARGUMENT"})
	}

	var rid requestID
	st, err := s.kv(t, "edge").SignStream(ctx, rid.opt())
	require.NoError(t, err)
	for _, r := range reqs {
		require.NoError(t, st.Send(r))
	}
	require.NoError(t, st.CloseSend())
	digest := sha256.Sum256([]byte("audited message"))
	for i, w := range wants {
		resp, err := st.Recv()
		require.NoError(t, err, "answer %d", i)
		switch {
		case w.outcome != "OK":
			assert.Equal(t, int32(codes.InvalidArgument), resp.GetError().GetCode(), "answer %d: %v", i, resp)
		case w.key == "key-rsa":
			assert.Len(t, resp.GetResponse().GetSignature(), 512, "answer %d: an RSA-4096 signature", i)
		default:
			assert.True(t, ecdsa.VerifyASN1(ecPub, digest[:], resp.GetResponse().GetSignature()), "answer %d: key-a's P-256 signature", i)
		}
	}
	_, err = st.Recv()
	require.ErrorIs(t, err, io.EOF)

	var got []want
	for _, e := range s.auditFor(t, rid.String()) {
		if e.Operation == "KeyVault.SignStream" {
			got = append(got, want{e.Key, e.Outcome})
		}
	}
	assert.Equal(t, wants, got, "one audit entry per request, in order, with its own outcome")
}
