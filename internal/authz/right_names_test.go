package authz_test

import (
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/handshaked/handshaked/internal/authz"
)

// TestRightNames: a denial says which rights a call needed ("needs
// use|manage on key ..."), so the names must be the policy file's names.
func TestRightNames(t *testing.T) {
	for r, want := range map[authz.Right]string{
		0:                          "none",
		authz.Use:                  "use",
		authz.Manage:               "manage",
		authz.Admin:                "admin",
		authz.Use | authz.Manage:   "use|manage",
		authz.Manage | authz.Admin: "manage|admin",
	} {
		assert.Equal(t, want, r.String(), "%d", uint8(r))
	}
}
