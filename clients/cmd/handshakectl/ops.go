package main

import (
	"context"
	"crypto"
	"encoding/base64"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/sigscheme"
)

// schemeByName accepts TLS names ("ecdsa_secp256r1_sha256", as in the IANA
// registry and internal/sigscheme's table) and the proto enum names.
func schemeByName(name string) (sigscheme.Scheme, error) {
	if s, ok := sigscheme.ByName(strings.TrimPrefix(strings.ToUpper(name), "SIGNATURE_SCHEME_")); ok {
		if _, known := pb.SignatureScheme_name[int32(s.ID)]; known {
			return s, nil
		}
	}
	return sigscheme.Scheme{}, fmt.Errorf("unknown signature scheme %q (e.g. rsa_pss_rsae_sha256, ecdsa_secp256r1_sha256, ed25519)", name)
}

func readInput(e *env, file string) ([]byte, error) {
	if file == "" || file == "-" {
		return io.ReadAll(e.stdin)
	}
	return os.ReadFile(file)
}

// writeOutput writes raw bytes to file, or base64 to stdout.
func writeOutput(e *env, file string, b []byte) error {
	if file != "" {
		return os.WriteFile(file, b, 0o600)
	}
	_, err := fmt.Fprintln(e.stdout, base64.StdEncoding.EncodeToString(b))
	return err
}

type opFlags struct {
	scheme, in, out string
	digest          bool
	version         uint
}

func (o *opFlags) define(fs *flag.FlagSet) {
	fs.StringVar(&o.scheme, "scheme", "", "TLS signature `scheme`, e.g. ecdsa_secp256r1_sha256")
	fs.StringVar(&o.in, "in", "", "input `file` (default: standard input)")
	fs.BoolVar(&o.digest, "digest", false, "the input is already the digest of the message (not for ed25519)")
	fs.UintVar(&o.version, "version", 0, "key version (0: primary)")
}

func cmdSign(ctx context.Context, e *env, args []string) error {
	var o opFlags
	fs, err := subcommand("sign", e, args, 1, func(fs *flag.FlagSet) {
		o.define(fs)
		fs.StringVar(&o.out, "o", "", "write the raw signature to `file` (default: base64 on standard output)")
	})
	if err != nil {
		return err
	}
	scheme, err := schemeByName(o.scheme)
	if err != nil {
		return err
	}
	in, err := readInput(e, o.in)
	if err != nil {
		return err
	}
	var sig []byte
	if o.digest {
		sig, _, err = e.client.Sign(ctx, fs.Arg(0), uint32(o.version), pb.SignatureScheme(scheme.ID), nil, in)
	} else {
		sig, _, err = e.client.Sign(ctx, fs.Arg(0), uint32(o.version), pb.SignatureScheme(scheme.ID), in, nil)
	}
	if err != nil {
		return err
	}
	return writeOutput(e, o.out, sig)
}

func cmdVerify(ctx context.Context, e *env, args []string) error {
	var o opFlags
	var sigFile string
	fs, err := subcommand("verify", e, args, 1, func(fs *flag.FlagSet) {
		o.define(fs)
		fs.StringVar(&sigFile, "sig", "", "raw signature `file`")
	})
	if err != nil {
		return err
	}
	scheme, err := schemeByName(o.scheme)
	if err != nil {
		return err
	}
	in, err := readInput(e, o.in)
	if err != nil {
		return err
	}
	sig, err := os.ReadFile(sigFile)
	if err != nil {
		return err
	}
	pub, version, err := e.client.PublicKey(ctx, fs.Arg(0), uint32(o.version))
	if err != nil {
		return err
	}
	if err := verify(pub, scheme, in, o.digest, sig); err != nil {
		return fmt.Errorf("verify with %s version %d: %w", fs.Arg(0), version, err)
	}
	fmt.Fprintf(e.stdout, "signature OK (%s version %d, %s)\n", fs.Arg(0), version, scheme)
	return nil
}

// verify checks sig over in (a message, or its digest) with pub.
func verify(pub crypto.PublicKey, scheme sigscheme.Scheme, in []byte, isDigest bool, sig []byte) error {
	if isDigest {
		return scheme.VerifyDigest(pub, in, sig)
	}
	return scheme.Verify(pub, in, sig)
}

func cmdDecrypt(ctx context.Context, e *env, args []string) error {
	var mode, in, out string
	var version, clientVersion uint
	fs, err := subcommand("decrypt", e, args, 1, func(fs *flag.FlagSet) {
		fs.StringVar(&mode, "mode", "premaster", "premaster (TLS 1.2 RSA premaster, implicit rejection) or oaep (RSA-OAEP SHA-256)")
		fs.StringVar(&in, "in", "", "ciphertext `file` (default: standard input)")
		fs.StringVar(&out, "o", "", "write the plaintext to `file` (default: base64 on standard output)")
		fs.UintVar(&version, "version", 0, "key version (0: primary)")
		fs.UintVar(&clientVersion, "client-version", 0, "premaster: the client_version the ClientHello offered (771 for TLS 1.2)")
	})
	if err != nil {
		return err
	}
	req := &pb.DecryptRequest{Key: fs.Arg(0), Version: uint32(version), ExpectedClientVersion: uint32(clientVersion)}
	switch mode {
	case "premaster":
		req.Mode = pb.DecryptMode_DECRYPT_MODE_RSA_PKCS1_TLS_PREMASTER
	case "oaep":
		req.Mode = pb.DecryptMode_DECRYPT_MODE_RSA_OAEP_SHA256
	default:
		return fmt.Errorf("decrypt: unknown mode %q", mode)
	}
	if req.Ciphertext, err = readInput(e, in); err != nil {
		return err
	}
	resp, err := e.client.KeyVault().Decrypt(ctx, req)
	if err != nil {
		return err
	}
	return writeOutput(e, out, resp.GetPlaintext())
}
