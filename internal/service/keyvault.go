package service

import (
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"time"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/audit"
	"github.com/handshaked/handshaked/internal/keyvault"
)

// Field limits. They sit well above any legitimate use and keep one request
// from making the vault parse or hash unbounded input.
const (
	maxPEMBytes        = 64 << 10
	maxCiphertextBytes = 1024 // RSA-8192; the vault checks the exact modulus size
	maxMessageBytes    = 256 << 10
	maxChainCerts      = 10
	maxChainBytes      = 256 << 10
	maxSANs            = 100
)

// KeyVault serves the KeyVault API over a vault.
type KeyVault struct {
	pb.UnimplementedKeyVaultServer
	vault *keyvault.Vault
	// visible says whether the caller may see a key in a listing.
	visible func(context.Context, *keyvault.Key) bool
	// pageTokens seals listing positions under the deployment's
	// page-token keys, which every replica holds: a token tells its holder
	// nothing, not even the id of a key it was not shown, and whichever
	// replica a client's next call reaches serves the next page.
	pageTokens *keyvault.TicketKeys
	// keys times the vault operations; New gives it the server's registry.
	keys *keyMetrics
	// tickets seals and opens session tickets (tickets.go); nil: off.
	tickets       *keyvault.TicketKeys
	ticketMetrics *ticketMetrics
	// batchItem admits and audits each operation of a Batch.
	batchItem batchItemGuard
	// helpers work on a Batch's operations (nil: its call does them).
	helpers *helpers
}

// pageTokenRotation is how long a page-token key seals new tokens, and
// how long a token is accepted after that.
const pageTokenRotation = time.Hour

// newKeyVault returns the KeyVault API over vault for deployment;
// listings show the keys for which visible holds. The page-token keys'
// changes are logged and audited in log (nil: logged only).
func newKeyVault(vault *keyvault.Vault, visible func(context.Context, *keyvault.Key) bool, deployment string, log *audit.Log) (*KeyVault, error) {
	pageTokens, err := keyvault.NewTicketKeys(vault, keyvault.TicketKeyOptions{
		Purpose: keyvault.PurposePageTokens, Deployment: deployment, Rotation: pageTokenRotation, Lifetime: pageTokenRotation,
		OnChange: func(e keyvault.TicketKeyEvent) { auditKeyChange(e, log) },
	})
	if err != nil {
		return nil, fmt.Errorf("page tokens: %w", err)
	}
	return &KeyVault{vault: vault, visible: visible, pageTokens: pageTokens, keys: newKeyMetrics(nil)}, nil
}

// keyResult converts the outcome of a vault call that yields a key.
func keyResult(ctx context.Context, k *keyvault.Key, err error) (*pb.Key, error) {
	if err != nil {
		return nil, toStatus(ctx, err)
	}
	return keyToProto(k), nil
}

func (s *KeyVault) CreateKey(ctx context.Context, req *pb.CreateKeyRequest) (*pb.Key, error) {
	alg, err := algorithmFromProto(req.GetAlgorithm())
	if err != nil {
		return nil, err
	}
	backend, err := backendFromProto(req.GetBackend())
	if err != nil {
		return nil, err
	}
	start := time.Now()
	k, err := s.vault.CreateInBackend(ctx, backend, req.GetId(), alg, req.GetLabels())
	s.keys.changed(ctx, s.vault, "create", start, alg, "", 0, err)
	return keyResult(ctx, k, err)
}

func (s *KeyVault) ImportKey(ctx context.Context, req *pb.ImportKeyRequest) (*pb.Key, error) {
	if n := len(req.GetPrivateKeyPem()); n == 0 || n > maxPEMBytes {
		return nil, invalid("private_key_pem: must be 1 to %d bytes, got %d", maxPEMBytes, n)
	}
	start := time.Now()
	k, err := s.vault.Import(ctx, req.GetId(), req.GetPrivateKeyPem(), req.GetLabels())
	// A failed import names no algorithm: the PEM may not parse, and a
	// key of that id already there is another key.
	id := ""
	if err == nil {
		id = k.ID
	}
	s.keys.changed(ctx, s.vault, "import", start, keyvault.AlgorithmUnspecified, id, 0, err)
	return keyResult(ctx, k, err)
}

func (s *KeyVault) GetKey(ctx context.Context, req *pb.GetKeyRequest) (*pb.Key, error) {
	k, err := s.vault.Get(ctx, req.GetKey())
	return keyResult(ctx, k, err)
}

// maxListScan bounds the keys one ListKeys call examines, so that a caller
// who may see few keys cannot make a call walk the whole vault. A page can
// come back short, or empty, with a next page token when it runs out.
const maxListScan = 1000

func (s *KeyVault) ListKeys(ctx context.Context, req *pb.ListKeysRequest) (*pb.ListKeysResponse, error) {
	if req.GetPageSize() < 0 {
		return nil, invalid("page_size: must not be negative")
	}
	size := int(req.GetPageSize())
	if size == 0 {
		size = defaultPageSize
	}
	size = min(size, maxPageSize)
	cursor, err := s.openPageToken(ctx, req.GetPageToken())
	if err != nil {
		return nil, err
	}
	// The vault's own token is the position after the last key it
	// returned; asking for exactly as many keys as the page still needs
	// makes that the last key shown, or the last one examined.
	resp := &pb.ListKeysResponse{Keys: make([]*pb.Key, 0, size)}
	for scanned := 0; len(resp.Keys) < size && scanned < maxListScan; {
		keys, next, err := s.vault.List(ctx, min(size-len(resp.Keys), maxListScan-scanned), cursor)
		if err != nil {
			return nil, toStatus(ctx, err)
		}
		scanned += len(keys)
		for _, k := range keys {
			if s.visible(ctx, k) {
				resp.Keys = append(resp.Keys, keyToProto(k))
			}
		}
		if cursor = next; cursor == "" {
			break
		}
	}
	if resp.NextPageToken, err = s.sealPageToken(ctx, cursor); err != nil {
		return nil, err
	}
	return resp, nil
}

const (
	defaultPageSize = 50
	maxPageSize     = 1000
	// maxPageTokenBytes is the longest page token, in base64.
	maxPageTokenBytes = (keyvault.MaxPageTokenBytes*8 + 5) / 6
)

// sealPageToken seals a vault position for the caller; "" stays "".
func (s *KeyVault) sealPageToken(ctx context.Context, cursor string) (string, error) {
	if cursor == "" {
		return "", nil
	}
	token, err := s.pageTokens.Seal(ctx, pageTokenScope(ctx), []byte(cursor))
	if err != nil {
		return "", toStatus(ctx, err)
	}
	return base64.RawURLEncoding.EncodeToString(token), nil
}

// openPageToken opens a token a replica of this deployment sealed for the
// same caller. One it cannot tell (the store unreachable while catching up
// with a page-token key another replica made) is that error, not the
// caller's.
func (s *KeyVault) openPageToken(ctx context.Context, token string) (string, error) {
	if token == "" {
		return "", nil
	}
	if len(token) > maxPageTokenBytes {
		return "", errPageToken
	}
	raw, err := base64.RawURLEncoding.DecodeString(token)
	if err != nil {
		return "", errPageToken
	}
	cursor, err := s.pageTokens.Open(ctx, pageTokenScope(ctx), raw)
	switch {
	case errors.Is(err, keyvault.ErrTicketRejected), errors.Is(err, keyvault.ErrInvalidArgument):
		return "", errPageToken
	case err != nil:
		return "", toStatus(ctx, err)
	}
	return string(cursor), nil
}

// pageTokenScope binds a page token to the listing and its caller.
func pageTokenScope(ctx context.Context) string { return "list keys for " + callerIdentity(ctx) }

var errPageToken = invalid("page_token: not a token this deployment gave this caller in the last hour")

func (s *KeyVault) RotateKey(ctx context.Context, req *pb.RotateKeyRequest) (*pb.Key, error) {
	start := time.Now()
	k, err := s.vault.Rotate(ctx, req.GetKey())
	s.keys.changed(ctx, s.vault, "rotate", start, keyvault.AlgorithmUnspecified, req.GetKey(), 0, err)
	return keyResult(ctx, k, err)
}

func (s *KeyVault) EnableKeyVersion(ctx context.Context, req *pb.EnableKeyVersionRequest) (*pb.Key, error) {
	if req.GetVersion() == 0 {
		return nil, invalid("version is required")
	}
	start := time.Now()
	k, err := s.vault.SetVersionEnabled(ctx, req.GetKey(), req.GetVersion(), true)
	s.keys.changed(ctx, s.vault, "enable", start, keyvault.AlgorithmUnspecified, req.GetKey(), req.GetVersion(), err)
	return keyResult(ctx, k, err)
}

func (s *KeyVault) DisableKeyVersion(ctx context.Context, req *pb.DisableKeyVersionRequest) (*pb.Key, error) {
	if req.GetVersion() == 0 {
		return nil, invalid("version is required")
	}
	start := time.Now()
	k, err := s.vault.SetVersionEnabled(ctx, req.GetKey(), req.GetVersion(), false)
	s.keys.changed(ctx, s.vault, "disable", start, keyvault.AlgorithmUnspecified, req.GetKey(), req.GetVersion(), err)
	return keyResult(ctx, k, err)
}

func (s *KeyVault) DestroyKeyVersion(ctx context.Context, req *pb.DestroyKeyVersionRequest) (*pb.Key, error) {
	if req.GetVersion() == 0 {
		return nil, invalid("version is required")
	}
	start := time.Now()
	k, err := s.vault.DestroyVersion(ctx, req.GetKey(), req.GetVersion())
	s.keys.changed(ctx, s.vault, "destroy", start, keyvault.AlgorithmUnspecified, req.GetKey(), req.GetVersion(), err)
	return keyResult(ctx, k, err)
}

func (s *KeyVault) GetPublicKey(ctx context.Context, req *pb.GetPublicKeyRequest) (*pb.PublicKey, error) {
	k, err := s.vault.Get(ctx, req.GetKey())
	if err != nil {
		return nil, toStatus(ctx, err)
	}
	v, err := versionOf(k, req.GetVersion())
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKIXPublicKey(v.PublicKey)
	if err != nil {
		return nil, toStatus(ctx, err)
	}
	return &pb.PublicKey{
		Key:       k.ID,
		Version:   v.Number,
		Algorithm: algorithmToProto(v.Algorithm),
		Pem:       string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})),
	}, nil
}

// versionOf resolves version 0 to the key's primary version.
func versionOf(k *keyvault.Key, version uint32) (*keyvault.Version, error) {
	if version == 0 {
		version = k.Primary
	}
	for i := range k.Versions {
		if k.Versions[i].Number == version {
			return &k.Versions[i], nil
		}
	}
	return nil, toStatus(context.Background(), fmt.Errorf("key %q version %d: %w", k.ID, version, keyvault.ErrNotFound))
}

func (s *KeyVault) AttachCertificateChain(ctx context.Context, req *pb.AttachCertificateChainRequest) (*pb.Key, error) {
	chain := req.GetCertificateChain()
	if req.GetCertificateChainPem() != "" {
		if len(chain) > 0 {
			return nil, invalid("give certificate_chain or certificate_chain_pem, not both")
		}
		var err error
		if chain, err = certificatesFromPEM(req.GetCertificateChainPem()); err != nil {
			return nil, err
		}
	}
	if len(chain) == 0 || len(chain) > maxChainCerts {
		return nil, invalid("certificate chain: must hold 1 to %d certificates, got %d", maxChainCerts, len(chain))
	}
	total := 0
	for _, c := range chain {
		total += len(c)
	}
	if total > maxChainBytes {
		return nil, invalid("certificate chain: more than %d bytes", maxChainBytes)
	}
	start := time.Now()
	k, err := s.vault.AttachChain(ctx, req.GetKey(), req.GetVersion(), chain)
	s.keys.changed(ctx, s.vault, "attach_chain", start, keyvault.AlgorithmUnspecified, req.GetKey(), req.GetVersion(), err)
	return keyResult(ctx, k, err)
}

func certificatesFromPEM(s string) ([][]byte, error) {
	if len(s) > maxChainBytes {
		return nil, invalid("certificate_chain_pem: more than %d bytes", maxChainBytes)
	}
	var chain [][]byte
	rest := []byte(s)
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, invalid("certificate_chain_pem: unexpected PEM block %q", block.Type)
		}
		chain = append(chain, block.Bytes)
	}
	if len(chain) == 0 {
		return nil, invalid("certificate_chain_pem: no CERTIFICATE block")
	}
	return chain, nil
}

func (s *KeyVault) CreateCertificateSigningRequest(ctx context.Context, req *pb.CreateCertificateSigningRequestRequest) (*pb.CertificateSigningRequest, error) {
	if len(req.GetDnsNames())+len(req.GetIpAddresses()) > maxSANs {
		return nil, invalid("at most %d subject alternative names", maxSANs)
	}
	ips := make([]net.IP, 0, len(req.GetIpAddresses()))
	for _, s := range req.GetIpAddresses() {
		ip := net.ParseIP(s)
		if ip == nil {
			return nil, invalid("ip_addresses: %q is not an IP address", s)
		}
		ips = append(ips, ip)
	}
	subject := pkix.Name{CommonName: req.GetCommonName(), Organization: req.GetOrganization()}
	der, err := s.vault.CreateCSR(ctx, req.GetKey(), req.GetVersion(), subject, req.GetDnsNames(), ips)
	if err != nil {
		return nil, toStatus(ctx, err)
	}
	return &pb.CertificateSigningRequest{
		Der: der,
		Pem: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})),
	}, nil
}

func (s *KeyVault) Decrypt(ctx context.Context, req *pb.DecryptRequest) (*pb.DecryptResponse, error) {
	var mode keyvault.DecryptMode
	switch req.GetMode() {
	case pb.DecryptMode_DECRYPT_MODE_RSA_PKCS1_TLS_PREMASTER:
		mode = keyvault.DecryptRSAPKCS1TLSPremaster
	case pb.DecryptMode_DECRYPT_MODE_RSA_OAEP_SHA256:
		mode = keyvault.DecryptRSAOAEPSHA256
	default:
		return nil, invalid("mode: %v is not a supported decrypt mode", req.GetMode())
	}
	if n := len(req.GetCiphertext()); n == 0 || n > maxCiphertextBytes {
		return nil, invalid("ciphertext: must be 1 to %d bytes, got %d", maxCiphertextBytes, n)
	}
	if v := req.GetExpectedClientVersion(); v > 0xffff {
		return nil, invalid("expected_client_version: %d is not a TLS version", v)
	}
	plaintext, version, err := s.keys.decrypt(ctx, s.vault, sourceAPI, req.GetKey(), req.GetVersion(), mode, req.GetCiphertext(), uint16(req.GetExpectedClientVersion()))
	if err != nil {
		return nil, toStatus(ctx, err)
	}
	return &pb.DecryptResponse{Plaintext: plaintext, Version: version}, nil
}

func (s *KeyVault) Sign(ctx context.Context, req *pb.SignRequest) (*pb.SignResponse, error) {
	scheme, err := schemeFromProto(req.GetScheme())
	if err != nil {
		return nil, err
	}
	var input []byte
	isDigest := false
	switch in := req.GetInput().(type) {
	case *pb.SignRequest_Message:
		input = in.Message
	case *pb.SignRequest_Digest:
		input, isDigest = in.Digest, true
	default:
		return nil, invalid("one of message or digest is required")
	}
	if len(input) > maxMessageBytes {
		return nil, invalid("message: more than %d bytes", maxMessageBytes)
	}
	sig, version, err := s.keys.sign(ctx, s.vault, sourceAPI, req.GetKey(), req.GetVersion(), scheme, input, isDigest)
	if err != nil {
		return nil, toStatus(ctx, err)
	}
	return &pb.SignResponse{Signature: sig, Version: version}, nil
}
