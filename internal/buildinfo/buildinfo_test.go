package buildinfo

import (
	"runtime"
	"runtime/debug"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestFromBuildInfo(t *testing.T) {
	bi := &debug.BuildInfo{GoVersion: "go1.26.0", Main: debug.Module{Path: "github.com/handshaked/handshaked", Version: "v1.2.3"},
		Settings: []debug.BuildSetting{
			{Key: "vcs.revision", Value: "0123abcd"}, {Key: "vcs.time", Value: "2026-12-01T12:00:00Z"}, {Key: "vcs.modified", Value: "true"},
		}}
	info := fromBuildInfo(bi)
	assert.Equal(t, Info{Version: "v1.2.3", Revision: "0123abcd", Time: "2026-12-01T12:00:00Z", Modified: true, GoVersion: "go1.26.0"}, info)
	assert.Equal(t, "v1.2.3 (revision 0123abcd, 2026-12-01T12:00:00Z, modified) go1.26.0", info.String())

	clean := fromBuildInfo(&debug.BuildInfo{GoVersion: "go1.26.0", Settings: []debug.BuildSetting{{Key: "vcs.modified", Value: "false"}}})
	assert.Equal(t, Info{Version: "(devel)", GoVersion: "go1.26.0"}, clean)
	assert.Equal(t, "(devel) go1.26.0", clean.String())
}

// TestRead: a test binary carries build information too.
func TestRead(t *testing.T) {
	info := Read()
	assert.Equal(t, runtime.Version(), info.GoVersion)
	assert.NotEmpty(t, info.Version)
}
