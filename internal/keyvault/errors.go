package keyvault

import "errors"

// The service maps the first four to gRPC codes with errors.Is. The vault
// wraps every error with context (key id, version number), never with key
// material, plaintexts or premasters.
var (
	ErrNotFound           = errors.New("not found")
	ErrAlreadyExists      = errors.New("already exists")
	ErrInvalidArgument    = errors.New("invalid argument")
	ErrFailedPrecondition = errors.New("failed precondition")

	// ErrWrongKEK is returned by New when the store's check record does not
	// open under the key-encryption key it was given.
	ErrWrongKEK = errors.New("wrong key-encryption key")
	// ErrCorrupted is returned by New when a record opens under no key, is
	// missing, or does not belong where it is stored. The error names the
	// record.
	ErrCorrupted = errors.New("record is corrupted or was tampered with")
	// ErrEmptyStore is returned by Open for a store that holds no vault.
	ErrEmptyStore = errors.New("the key store is empty")
	// ErrClosed is returned by every method of a closed Vault or store.
	ErrClosed = errors.New("key vault is closed")
)
