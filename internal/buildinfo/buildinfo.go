// Package buildinfo says which build of handshaked is running: the module
// version, the VCS revision and time and whether the tree was modified, and
// the Go version, as the Go toolchain records them in every binary
// (runtime/debug.ReadBuildInfo). The binaries print it for -version; the
// service reports it in /healthz and as the handshaked_build_info metric.
package buildinfo

import (
	"fmt"
	"runtime/debug"
	"strings"
)

// Info is one binary's build.
type Info struct {
	// Version is the main module's version: a tag for "go install
	// module@version", a pseudo-version or "(devel)" for a build from a
	// checkout.
	Version string `json:"version"`
	// Revision, Time and Modified describe the VCS checkout the binary was
	// built from; empty or false when the build did not record them (go
	// test, -buildvcs=false).
	Revision  string `json:"revision"`
	Time      string `json:"time"`
	Modified  bool   `json:"modified"`
	GoVersion string `json:"goVersion"`
}

// Read returns the running binary's build.
func Read() Info {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return Info{Version: "unknown"}
	}
	return fromBuildInfo(bi)
}

func fromBuildInfo(bi *debug.BuildInfo) Info {
	info := Info{Version: bi.Main.Version, GoVersion: bi.GoVersion}
	if info.Version == "" {
		info.Version = "(devel)"
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			info.Revision = s.Value
		case "vcs.time":
			info.Time = s.Value
		case "vcs.modified":
			info.Modified = s.Value == "true"
		}
	}
	return info
}

// String is what -version prints after the program's name:
// "v1.2.3 (revision 0123abcd, 2026-12-01T12:00:00Z, modified) go1.26.0".
func (i Info) String() string {
	var vcs []string
	if i.Revision != "" {
		vcs = append(vcs, "revision "+i.Revision)
	}
	if i.Time != "" {
		vcs = append(vcs, i.Time)
	}
	if i.Modified {
		vcs = append(vcs, "modified")
	}
	s := i.Version
	if len(vcs) > 0 {
		s += " (" + strings.Join(vcs, ", ") + ")"
	}
	return fmt.Sprintf("%s %s", s, i.GoVersion)
}
