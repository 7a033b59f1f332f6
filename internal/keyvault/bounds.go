package keyvault

import (
	"context"
	"fmt"
	"time"
)

// boundsAnnounced is a SharedStore whose replicas announce their staleness
// bounds (etcdstore), so that a revocation waits for the longest.
type boundsAnnounced interface {
	// LongestStalenessBound is the longest bound the live replicas
	// announced; 0 when none did.
	LongestStalenessBound(ctx context.Context) (time.Duration, error)
}

// revocationWait is how long a revocation waits for the replicas that have
// not applied it: the longest staleness bound of the live replicas, past
// which each of them refuses key use on the view it could not confirm.
// Every replica must have the same bound; one given a longer one by
// mistake would otherwise use a revoked version after the revocation
// returned. A store that does not say, or replicas that announce none
// (releases before bounds), leave this replica's own bound.
func (v *Vault) revocationWait(ctx context.Context) (time.Duration, error) {
	f := v.follow
	b, ok := f.store.(boundsAnnounced)
	if !ok {
		return f.bound, nil
	}
	longest, err := b.LongestStalenessBound(ctx)
	if err != nil {
		return 0, fmt.Errorf("keyvault: the change is committed; how long replicas that have not applied it may use keys is unknown: %w", err)
	}
	return max(f.bound, longest), nil
}
