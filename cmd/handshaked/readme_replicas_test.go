package main

import (
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/handshaked/handshaked/internal/testenv"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// replicasBlock is the README's "Running several replicas" block, its
// ports changed to free ones: TestREADMEProduction runs it after the
// production walkthrough it continues (its binaries, CA, certificates,
// policy and KEK). Three etcd members, three production replicas on them,
// a key made through one and its chain attached through another, an edge
// in front of all three serving through a replica's kill -9, and a disabled
// version refused by another replica as soon as the call returned.
func replicasBlock(t *testing.T) string {
	t.Helper()
	script := readmeBlock(t, "replicas")
	for _, port := range []string{"2379", "2380", "22379", "22380", "32379", "32380", "7171", "7172", "7173", "7481", "7482", "7483", "8453"} {
		word := regexp.MustCompile(`\b` + port + `\b`)
		require.Regexp(t, word, script, "the replicas block's ports")
		script = word.ReplaceAllString(script, strconv.Itoa(testenv.FreePort(t)))
	}
	return script
}

// checkReplicasOutput checks what the replicas block printed, after the
// production walkthrough's output.
func checkReplicasOutput(t *testing.T, out string) {
	t.Helper()
	_, fleet, ok := strings.Cut(out, `{"health":"true"`) // etcd's health: the replicas block starts
	require.True(t, ok, "the replicas block did not start etcd:\n%s", out)
	assert.Equal(t, 12, strings.Count(fleet, "Key: web-fleet version 1"), "the echo page through the edge, a replica dead:\n%s", fleet)
	assert.Contains(t, fleet, "chain of 1", "the chain attached through the second replica")
	assert.Regexp(t, `(?m)^handshakectl: handshaked: sign with web-fleet: failed precondition: keyvault: key "web-fleet" version 1 is DISABLED$`, fleet, "version 1 refused on the second replica")
}
