package keyvault

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestKeepUpWhileAChangeHoldsWriteMu: a replica whose view is current
// goes on confirming it and announcing while a change holds writeMu, as a
// KEK rotation's step does while it waits for every replica's
// announcement (allHold): were keepUp to wait for writeMu, the rotation
// would wait for ever, and the replica would refuse key use once its view
// was older than the staleness bound.
func TestKeepUpWhileAChangeHoldsWriteMu(t *testing.T) {
	s := newMemShared()
	v, _ := newSharedVault(t, s, WithStalenessBound(400*time.Millisecond))
	require.NoError(t, v.Sync(ctx))
	v.writeMu.Lock()
	defer v.writeMu.Unlock()
	first := v.follow.confirmed.Load()
	// keepUp runs every quarter of the bound: a few rounds.
	assert.Eventually(t, func() bool {
		return v.follow.confirmed.Load() > first
	}, 2*time.Second, 10*time.Millisecond, "keepUp confirmed the view once")
	second := v.follow.confirmed.Load()
	assert.Eventually(t, func() bool {
		return v.follow.confirmed.Load() > second
	}, 2*time.Second, 10*time.Millisecond, "keepUp went on confirming the view while writeMu was held")
}
