package service_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	handshaked "github.com/handshaked/handshaked/clients/go"
	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/keyvault"
	"github.com/handshaked/handshaked/internal/testenv"
)

func randomKEK(t *testing.T) []byte {
	t.Helper()
	kek := make([]byte, 32)
	_, err := rand.Read(kek)
	require.NoError(t, err)
	return kek
}

// underKEK starts a service and rotates its vault to kek over the API, so
// that two services share a KEK as a snapshot's origin and its restore
// target must.
func underKEK(t *testing.T, kek []byte) (*testServer, *handshaked.Client) {
	t.Helper()
	s := startServer(t)
	c := handshaked.New(s.Conn)
	st, err := c.RotateKEK(context.Background(), bytes.Clone(kek))
	require.NoError(t, err)
	require.Equal(t, keyvault.KEKID(kek), st.GetKekId())
	return s, c
}

func signs(t *testing.T, s *testServer, id string) {
	t.Helper()
	_, err := s.kv.Sign(context.Background(), &pb.SignRequest{Key: id, Scheme: pb.SignatureScheme_SIGNATURE_SCHEME_ECDSA_SECP256R1_SHA256,
		Input: &pb.SignRequest_Message{Message: []byte("m")}})
	require.NoError(t, err, "key %s signs", id)
}

// TestAdminRotateKEK: RotateKEK over gRPC and REST rewraps the vault while
// its keys keep signing; a KEK of the wrong size is INVALID_ARGUMENT (400)
// and the current KEK FAILED_PRECONDITION; the status never shows a KEK,
// only its id.
func TestAdminRotateKEK(t *testing.T) {
	ctx := context.Background()
	s := startServer(t)
	importFixture(t, s, "web", "p256-pkcs8.pem")
	c := handshaked.New(s.Conn)
	before, err := c.KEKStatus(ctx)
	require.NoError(t, err)

	_, err = c.RotateKEK(ctx, []byte("short"))
	assert.Equal(t, codes.InvalidArgument, status.Code(err))
	_, err = c.RotateKEK(ctx, nil)
	assert.Equal(t, codes.FailedPrecondition, status.Code(err), "no KEK sent to a service that does not keep its KEK itself")
	kek := randomKEK(t)
	st, err := c.RotateKEK(ctx, bytes.Clone(kek))
	require.NoError(t, err)
	assert.Equal(t, keyvault.KEKID(kek), st.GetKekId())
	assert.NotEqual(t, before.GetKekId(), st.GetKekId())
	assert.Empty(t, st.GetRetiringKekId())
	assert.Zero(t, st.GetStaleRecords())
	signs(t, s, "web")
	_, err = c.RotateKEK(ctx, bytes.Clone(kek))
	assert.Equal(t, codes.FailedPrecondition, status.Code(err), "rotating to the current KEK")

	// REST: the status, a rotation, a bad one.
	var got map[string]any
	mustRest(t, s, http.MethodGet, "/v1/admin/kek", nil, &got)
	assert.Equal(t, keyvault.KEKID(kek), got["kekId"])
	next := randomKEK(t)
	mustRest(t, s, http.MethodPost, "/v1/admin/kek:rotate", map[string]string{"newKek": base64.StdEncoding.EncodeToString(next)}, &got)
	assert.Equal(t, keyvault.KEKID(next), got["kekId"])
	code, body := s.restCall(t, http.MethodPost, "/v1/admin/kek:rotate", map[string]string{"newKek": "AAAA"}, nil)
	assert.Equal(t, http.StatusBadRequest, code, "%s", body)
	assert.NotContains(t, string(body), base64.StdEncoding.EncodeToString(next))
	signs(t, s, "web")
}

// TestAdminBackupRestore: a snapshot streamed over gRPC from one service
// restores over gRPC into a fresh one under the same KEK, and over REST
// into another; the restored keys sign; a tampered snapshot is refused
// with INVALID_ARGUMENT (400) saying so; a second restore into a service
// that now holds keys is FAILED_PRECONDITION.
func TestAdminBackupRestore(t *testing.T) {
	ctx := context.Background()
	kek := randomKEK(t)
	src, srcClient := underKEK(t, kek)
	importFixture(t, src, "web", "p256-pkcs8.pem")
	_, err := src.kv.RotateKey(ctx, &pb.RotateKeyRequest{Key: "web"})
	require.NoError(t, err)
	importFixture(t, src, "api", "p256-pkcs8.pem")
	var snap bytes.Buffer
	n, err := srcClient.Backup(ctx, &snap)
	require.NoError(t, err)
	require.Equal(t, int64(snap.Len()), n)

	dst, dstClient := underKEK(t, kek)
	resp, err := dstClient.Restore(ctx, bytes.NewReader(snap.Bytes()))
	require.NoError(t, err)
	assert.Equal(t, uint32(2), resp.GetKeys())
	assert.Equal(t, keyvault.KEKID(kek), resp.GetKekId())
	for _, id := range []string{"web", "api"} {
		signs(t, dst, id)
	}
	k, err := dst.kv.GetKey(ctx, &pb.GetKeyRequest{Key: "web"})
	require.NoError(t, err)
	assert.Equal(t, uint32(2), k.GetPrimaryVersion())
	_, err = dstClient.Restore(ctx, bytes.NewReader(snap.Bytes()))
	assert.Equal(t, codes.FailedPrecondition, status.Code(err), "restore into a service holding keys")

	tampered := bytes.Clone(snap.Bytes())
	tampered[len(tampered)/2] ^= 1
	fresh, freshClient := underKEK(t, kek)
	_, err = freshClient.Restore(ctx, bytes.NewReader(tampered))
	assert.Equal(t, codes.InvalidArgument, status.Code(err))
	assert.Contains(t, status.Convert(err).Message(), "altered or truncated")
	_, otherClient := underKEK(t, randomKEK(t))
	_, err = otherClient.Restore(ctx, bytes.NewReader(snap.Bytes()))
	assert.Equal(t, codes.FailedPrecondition, status.Code(err), "a service under another KEK")
	assert.Contains(t, status.Convert(err).Message(), "made under KEK "+keyvault.KEKID(kek))

	// REST: the backup is newline-delimited JSON chunks; the restore body
	// is the same chunks as requests.
	req, err := http.NewRequest(http.MethodGet, src.rest+"/v1/admin/backup", nil)
	require.NoError(t, err)
	httpResp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer httpResp.Body.Close()
	require.Equal(t, http.StatusOK, httpResp.StatusCode)
	var restSnap bytes.Buffer
	var restoreBody strings.Builder
	sc := bufio.NewScanner(httpResp.Body)
	sc.Buffer(nil, 4<<20)
	for sc.Scan() {
		var line struct {
			Result struct {
				Data []byte `json:"data"`
			} `json:"result"`
		}
		require.NoError(t, json.Unmarshal(sc.Bytes(), &line), "%s", sc.Bytes())
		restSnap.Write(line.Result.Data)
		chunk, err := json.Marshal(map[string][]byte{"data": line.Result.Data})
		require.NoError(t, err)
		restoreBody.Write(chunk)
		restoreBody.WriteString("\n")
	}
	require.NoError(t, sc.Err())
	require.NotZero(t, restSnap.Len())
	code, body := fresh.restCall(t, http.MethodPost, "/v1/admin:restore", restoreBody.String(), nil)
	require.Equal(t, http.StatusOK, code, "%s", body)
	signs(t, fresh, "web")

	bad, _ := underKEK(t, kek)
	tamperedBody, err := json.Marshal(map[string][]byte{"data": tampered})
	require.NoError(t, err)
	code, body = bad.restCall(t, http.MethodPost, "/v1/admin:restore", tamperedBody, nil)
	assert.Equal(t, http.StatusBadRequest, code)
	assert.Contains(t, string(body), "altered or truncated")
}

// TestAdminBackupUnderWriteLoad: snapshots streamed over gRPC while
// callers keep creating keys each restore into a fresh service under the
// same KEK with every key acknowledged before the backup started, and
// each of those keys signs there.
func TestAdminBackupUnderWriteLoad(t *testing.T) {
	ctx := context.Background()
	kek := randomKEK(t)
	src, srcClient := underKEK(t, kek)
	pemKey := fixture(t, "p256-pkcs8.pem")
	load := testenv.StartWriteLoad(t, 3, "load-", func(id string, _ int) error {
		_, err := src.kv.ImportKey(ctx, &pb.ImportKeyRequest{Id: id, PrivateKeyPem: pemKey})
		return err
	})
	type snapshot struct {
		before []string
		data   []byte
	}
	var snaps []snapshot
	for range 3 {
		time.Sleep(50 * time.Millisecond)
		before := load.Acked()
		var buf bytes.Buffer
		_, err := srcClient.Backup(ctx, &buf)
		require.NoError(t, err)
		snaps = append(snaps, snapshot{before, buf.Bytes()})
	}
	load.Stop()
	for i, snap := range snaps {
		dst, dstClient := underKEK(t, kek)
		_, err := dstClient.Restore(ctx, bytes.NewReader(snap.data))
		require.NoError(t, err, "snapshot %d", i)
		for _, id := range snap.before {
			signs(t, dst, id)
		}
		t.Logf("snapshot %d: the %d keys acknowledged before it restored and sign", i, len(snap.before))
	}
}
