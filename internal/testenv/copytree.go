package testenv

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// CopyTree copies the source tree at src to dst, as a fresh clone would
// have it: without .git, and without what a development instance or an
// earlier build leaves at the root. A test that runs a README's commands
// as written runs them there, so that what they leave (a development
// instance's handshaked-data/, a build's bin/) stays out of the checkout.
func CopyTree(t testing.TB, src, dst string) {
	t.Helper()
	skip := map[string]bool{".git": true, "handshaked-data": true, "bin": true, "fleet": true, "handshaked": true}
	err := filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		if !strings.Contains(rel, string(filepath.Separator)) && skip[rel] {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		if !d.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(target, b, 0o644)
	})
	if err != nil {
		t.Fatalf("copy the source tree: %v", err)
	}
}
