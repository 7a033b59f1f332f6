package handshaked

import (
	"context"
	"errors"
	"fmt"
	"io"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
)

// restoreChunkBytes is the size of the messages Restore sends, under the
// 4 MiB a gRPC message may take.
const restoreChunkBytes = 3 << 20

// Admin is the raw Admin client.
func (c *Client) Admin() pb.AdminClient { return c.admin }

// KEKStatus says which key-encryption key seals the vault and whether a
// rotation is under way.
func (c *Client) KEKStatus(ctx context.Context) (*pb.KEKStatus, error) {
	return wrap(c.admin.GetKEKStatus(ctx, &pb.GetKEKStatusRequest{}))
}

// RotateKEK rewraps the vault under newKEK (32 bytes) and returns once the
// old KEK is refused. If it fails half-way, call it again with the same
// newKEK: the vault opens with either KEK until the rotation completes.
// A nil newKEK has the service make the KEK and keep it wrapped by its
// PKCS#11 token (-kek-pkcs11-file); call it again with nil to carry on.
func (c *Client) RotateKEK(ctx context.Context, newKEK []byte) (*pb.KEKStatus, error) {
	return wrap(c.admin.RotateKEK(ctx, &pb.RotateKEKRequest{NewKek: newKEK}))
}

// Backup writes a snapshot of the vault to w and returns its size.
func (c *Client) Backup(ctx context.Context, w io.Writer) (int64, error) {
	stream, err := c.admin.Backup(ctx, &pb.BackupRequest{})
	if err != nil {
		return 0, fmt.Errorf("handshaked: backup: %w", err)
	}
	var n int64
	for {
		chunk, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return n, nil
		}
		if err != nil {
			return n, fmt.Errorf("handshaked: backup: %w", err)
		}
		m, err := w.Write(chunk.GetData())
		n += int64(m)
		if err != nil {
			return n, fmt.Errorf("handshaked: backup: %w", err)
		}
	}
}

// Restore sends the snapshot read from r to a fresh vault started with the
// snapshot's key-encryption key.
func (c *Client) Restore(ctx context.Context, r io.Reader) (*pb.RestoreResponse, error) {
	stream, err := c.admin.Restore(ctx)
	if err != nil {
		return nil, fmt.Errorf("handshaked: restore: %w", err)
	}
	for {
		// A message must not change once sent: a buffer for each.
		buf := make([]byte, restoreChunkBytes)
		n, err := io.ReadFull(r, buf)
		if n > 0 {
			if serr := stream.Send(&pb.RestoreRequest{Data: buf[:n]}); serr != nil {
				// The service ended the stream: its status says why.
				break
			}
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("handshaked: restore: read the snapshot: %w", err)
		}
	}
	resp, err := stream.CloseAndRecv()
	if err != nil {
		return nil, fmt.Errorf("handshaked: restore: %w", err)
	}
	return resp, nil
}
