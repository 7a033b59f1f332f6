package keyvault

import (
	"errors"
	"fmt"
)

// The service maps the first four, ErrAborted and ErrUnavailable to gRPC codes with errors.Is. The vault
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

	// ErrConflict is wrapped by Store.Commit when a record named in
	// Write.If does not have the revision given: another writer changed
	// the store since the write was computed. The vault recomputes the
	// change on the new state and tries again.
	ErrConflict = errors.New("the store changed since it was read")
	// ErrAborted is returned by a change that kept conflicting with
	// changes of other replicas: the caller may retry it.
	ErrAborted = errors.New("aborted by concurrent changes")
	// ErrUnavailable is wrapped when the store cannot be reached or cannot
	// confirm its state (etcd without quorum), or takes no writes (out of
	// space, read-only), and by key use on a replica whose view it could
	// not confirm recently.
	ErrUnavailable = errors.New("unavailable")
	// ErrDeploymentConflict is wrapped, beside ErrUnavailable, by
	// SharedStore.Announce on a replica of one deployment while live
	// replicas of the store announced another (etcdstore's
	// Config.Deployment): it announced nothing, and the vault refuses key
	// use until it can announce (fresh), since the others could open none
	// of its step tokens, page tokens or tickets, nor it theirs.
	ErrDeploymentConflict = errors.New("replicas of another deployment are live on the key store")
)

// CommitTooLargeError is wrapped by Store.Commit, beside
// ErrFailedPrecondition, for a commit larger than the store takes (etcd's
// --max-request-bytes): it says by how much. What helps depends on the
// commit, which the store does not know: a restore cannot be made smaller.
type CommitTooLargeError struct {
	Bytes int    // the commit's size
	Limit string // the limit it passes, as the operator sets it
}

func (e *CommitTooLargeError) Error() string {
	return fmt.Sprintf("the commit is %d bytes, more than %s", e.Bytes, e.Limit)
}
