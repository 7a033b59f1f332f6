//go:build !openssl

package keyvault

import "crypto"

// memoryKey returns what does the private-key operations of a software
// key, one the vault holds in memory: the key itself, whose operations are
// the standard library's. A build with the openssl tag does RSA in
// OpenSSL's libcrypto instead (memorykey_openssl.go).
func memoryKey(key crypto.Signer) (crypto.Signer, error) { return key, nil }

// RSAImplementation names what does the private-key operations of software
// RSA keys in this build, for the operator.
func RSAImplementation() string { return "crypto/rsa" }
