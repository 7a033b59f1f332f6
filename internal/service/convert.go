package service

import (
	"crypto/tls"

	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/keyvault"
)

// The proto enums and the vault's enums name the same values; the proto
// numbers never change, so an algorithm added later (ECDSA P-521) has the
// next proto number wherever the vault lists it. Signature schemes use the
// TLS code points on both sides.

func algorithmFromProto(a pb.Algorithm) (keyvault.Algorithm, error) {
	switch a {
	case pb.Algorithm_ALGORITHM_RSA_2048:
		return keyvault.RSA2048, nil
	case pb.Algorithm_ALGORITHM_RSA_3072:
		return keyvault.RSA3072, nil
	case pb.Algorithm_ALGORITHM_RSA_4096:
		return keyvault.RSA4096, nil
	case pb.Algorithm_ALGORITHM_ECDSA_P256:
		return keyvault.ECDSAP256, nil
	case pb.Algorithm_ALGORITHM_ECDSA_P384:
		return keyvault.ECDSAP384, nil
	case pb.Algorithm_ALGORITHM_ECDSA_P521:
		return keyvault.ECDSAP521, nil
	case pb.Algorithm_ALGORITHM_ED25519:
		return keyvault.Ed25519, nil
	}
	return 0, invalid("algorithm: %v is not a supported algorithm", a)
}

// backendFromProto names the vault's key backend for b.
func backendFromProto(b pb.KeyBackend) (string, error) {
	switch b {
	case pb.KeyBackend_KEY_BACKEND_UNSPECIFIED, pb.KeyBackend_KEY_BACKEND_SOFTWARE:
		return keyvault.BackendSoftware, nil
	case pb.KeyBackend_KEY_BACKEND_PKCS11:
		return keyvault.BackendPKCS11, nil
	}
	return "", invalid("backend: %v is not a key backend", b)
}

func backendToProto(name string) pb.KeyBackend {
	switch name {
	case keyvault.BackendSoftware:
		return pb.KeyBackend_KEY_BACKEND_SOFTWARE
	case keyvault.BackendPKCS11:
		return pb.KeyBackend_KEY_BACKEND_PKCS11
	}
	return pb.KeyBackend_KEY_BACKEND_UNSPECIFIED
}

func algorithmToProto(a keyvault.Algorithm) pb.Algorithm {
	switch a {
	case keyvault.RSA2048:
		return pb.Algorithm_ALGORITHM_RSA_2048
	case keyvault.RSA3072:
		return pb.Algorithm_ALGORITHM_RSA_3072
	case keyvault.RSA4096:
		return pb.Algorithm_ALGORITHM_RSA_4096
	case keyvault.ECDSAP256:
		return pb.Algorithm_ALGORITHM_ECDSA_P256
	case keyvault.ECDSAP384:
		return pb.Algorithm_ALGORITHM_ECDSA_P384
	case keyvault.ECDSAP521:
		return pb.Algorithm_ALGORITHM_ECDSA_P521
	case keyvault.Ed25519:
		return pb.Algorithm_ALGORITHM_ED25519
	}
	return pb.Algorithm_ALGORITHM_UNSPECIFIED
}

func stateToProto(s keyvault.VersionState) pb.KeyVersionState {
	switch s {
	case keyvault.StateEnabled:
		return pb.KeyVersionState_KEY_VERSION_STATE_ENABLED
	case keyvault.StateDisabled:
		return pb.KeyVersionState_KEY_VERSION_STATE_DISABLED
	case keyvault.StateDestroyed:
		return pb.KeyVersionState_KEY_VERSION_STATE_DESTROYED
	}
	return pb.KeyVersionState_KEY_VERSION_STATE_UNSPECIFIED
}

// schemeFromProto relies on the proto enum numbers being TLS code points.
func schemeFromProto(s pb.SignatureScheme) (tls.SignatureScheme, error) {
	if s == pb.SignatureScheme_SIGNATURE_SCHEME_UNSPECIFIED {
		return 0, invalid("scheme is required")
	}
	if _, known := pb.SignatureScheme_name[int32(s)]; !known {
		return 0, invalid("scheme: %d is not a supported signature scheme", s)
	}
	return tls.SignatureScheme(s), nil
}

func keyToProto(k *keyvault.Key) *pb.Key {
	out := &pb.Key{
		Id:             k.ID,
		Labels:         k.Labels,
		CreateTime:     timestamppb.New(k.CreateTime),
		PrimaryVersion: k.Primary,
		Versions:       make([]*pb.KeyVersion, 0, len(k.Versions)),
	}
	for _, v := range k.Versions {
		out.Versions = append(out.Versions, &pb.KeyVersion{
			Version:          v.Number,
			State:            stateToProto(v.State),
			Algorithm:        algorithmToProto(v.Algorithm),
			Imported:         v.Imported,
			CreateTime:       timestamppb.New(v.CreateTime),
			CertificateChain: v.Chain,
			Backend:          backendToProto(v.Backend),
		})
	}
	return out
}
