package service

import (
	"context"
	"errors"
	"log/slog"

	"google.golang.org/grpc"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/keyvault"
)

// backupChunkBytes is the size of a Backup stream's messages, well under
// the 4 MiB a gRPC message may take.
const backupChunkBytes = 1 << 20

// Admin serves the Admin API over a vault. Every method is for admins only:
// none has a rule in auth.go.
type Admin struct {
	pb.UnimplementedAdminServer
	vault *keyvault.Vault
}

// NewAdmin returns the Admin API over vault.
func NewAdmin(vault *keyvault.Vault) *Admin { return &Admin{vault: vault} }

func kekStatusToProto(st keyvault.KEKStatus) *pb.KEKStatus {
	return &pb.KEKStatus{KekId: st.ID, RetiringKekId: st.Retiring, StaleRecords: uint32(st.Stale), Records: uint32(st.Records)}
}

func (s *Admin) GetKEKStatus(ctx context.Context, _ *pb.GetKEKStatusRequest) (*pb.KEKStatus, error) {
	return kekStatusToProto(s.vault.KEKStatus()), nil
}

func (s *Admin) RotateKEK(ctx context.Context, req *pb.RotateKEKRequest) (*pb.KEKStatus, error) {
	kek := req.GetNewKek()
	defer clear(kek)
	switch len(kek) {
	case 0:
		// The vault makes the KEK, where it keeps its KEK itself (a
		// token-wrapped one), and refuses otherwise.
		kek = nil
		slog.InfoContext(ctx, "KEK rotation to a KEK the vault makes: rewrapping every record")
	case 32:
		slog.InfoContext(ctx, "KEK rotation: rewrapping every record", "kek_id", keyvault.KEKID(kek))
	default:
		return nil, invalid("new_kek: want 32 bytes, or none for a KEK the service makes (-kek-pkcs11-file), not %d", len(kek))
	}
	st, err := s.vault.RotateKEK(ctx, kek)
	if err != nil {
		return nil, toStatus(ctx, err)
	}
	slog.InfoContext(ctx, "KEK rotation complete: the store opens with the new KEK only", "kek_id", st.ID, "records", st.Records)
	return kekStatusToProto(st), nil
}

func (s *Admin) Backup(_ *pb.BackupRequest, stream grpc.ServerStreamingServer[pb.BackupChunk]) error {
	ctx := stream.Context()
	w := &chunkSender{stream: stream}
	info, err := s.vault.Backup(ctx, w)
	if err == nil {
		err = w.flush()
	}
	if err != nil {
		return toStatus(ctx, err)
	}
	slog.InfoContext(ctx, "backup sent", "kek_id", info.KEKID, "records", info.Records, "keys", info.Keys, "bytes", info.Bytes)
	return nil
}

// chunkSender sends what is written to it as BackupChunks of
// backupChunkBytes.
type chunkSender struct {
	stream grpc.ServerStreamingServer[pb.BackupChunk]
	buf    []byte
}

func (c *chunkSender) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		take := min(len(p), backupChunkBytes-len(c.buf))
		c.buf = append(c.buf, p[:take]...)
		p = p[take:]
		if len(c.buf) == backupChunkBytes {
			if err := c.flush(); err != nil {
				return 0, err
			}
		}
	}
	return n, nil
}

func (c *chunkSender) flush() error {
	if len(c.buf) == 0 {
		return nil
	}
	err := c.stream.Send(&pb.BackupChunk{Data: c.buf})
	c.buf = make([]byte, 0, backupChunkBytes)
	return err
}

func (s *Admin) Restore(stream grpc.ClientStreamingServer[pb.RestoreRequest, pb.RestoreResponse]) error {
	ctx := stream.Context()
	info, err := s.vault.Restore(ctx, &chunkReader{stream: stream})
	if err != nil {
		if errors.Is(err, keyvault.ErrSnapshotRefused) {
			slog.WarnContext(ctx, "restore refused", "err", err)
		}
		return toStatus(ctx, err)
	}
	slog.InfoContext(ctx, "snapshot restored", "kek_id", info.KEKID, "records", info.Records, "keys", info.Keys, "bytes", info.Bytes)
	return stream.SendAndClose(&pb.RestoreResponse{KekId: info.KEKID, Records: uint32(info.Records), Keys: uint32(info.Keys), Bytes: uint64(info.Bytes)})
}

// chunkReader reads the data of a Restore stream's messages in order.
type chunkReader struct {
	stream grpc.ClientStreamingServer[pb.RestoreRequest, pb.RestoreResponse]
	rest   []byte
}

func (c *chunkReader) Read(p []byte) (int, error) {
	for len(c.rest) == 0 {
		req, err := c.stream.Recv()
		if err != nil {
			return 0, err // io.EOF at the end of the stream
		}
		c.rest = req.GetData()
	}
	n := copy(p, c.rest)
	c.rest = c.rest[n:]
	return n, nil
}
