package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/testenv"
)

// TestREADMEReplicas runs the README's "Running several replicas" block
// verbatim after the production walkthrough it continues, in one shell, in
// a copy of the source tree, only the ports changed to free ones: three
// etcd members, three production replicas on them, a key made through one
// and attached through another, an edge in front of all three serving
// through a replica's kill -9, and a disabled version refused by another
// replica at once.
func TestREADMEReplicas(t *testing.T) {
	for _, tool := range []string{"bash", "go", "openssl", "curl", "grep"} {
		testenv.LookPath(t, tool)
	}
	production := readmeBlock(t, "production")
	for _, port := range []string{":7070", ":7443", ":8443"} {
		require.Contains(t, production, port, "the production walkthrough's ports")
		production = strings.ReplaceAll(production, port, ":"+strconv.Itoa(freePort(t)))
	}
	replicas := readmeBlock(t, "replicas")
	for _, port := range []string{"2379", "2380", "22379", "22380", "32379", "32380", "7171", "7172", "7173", "7481", "7482", "7483", "8453"} {
		word := regexp.MustCompile(`\b` + port + `\b`)
		require.Regexp(t, word, replicas, "the replicas block's ports")
		replicas = word.ReplaceAllString(replicas, strconv.Itoa(freePort(t)))
	}
	clone := filepath.Join(t.TempDir(), "handshaked")
	copyTree(t, filepath.Join("..", ".."), clone)

	cmd := exec.Command("bash", "-c", production+"\n"+replicas)
	cmd.Dir = clone
	cmd.Env = append(os.Environ(), "TMPDIR="+t.TempDir())
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // what it starts in the background ends with it
	var out testenv.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) })
	err := cmd.Wait()
	took := time.Since(start)
	logs := func() string {
		var b strings.Builder
		matches, _ := filepath.Glob(filepath.Join(clone, "fleet", "*.log"))
		for _, name := range matches {
			l, _ := os.ReadFile(name)
			b.WriteString("\n" + filepath.Base(name) + ":\n" + string(l))
		}
		return b.String()
	}
	require.NoError(t, err, "the README's replicas block failed:\n%s%s", out.String(), logs())
	t.Logf("the production walkthrough and the replicas block took %v", took.Round(100*time.Millisecond))
	got := out.String()
	_, afterKill, ok := strings.Cut(got, "Key: web-ec version 1") // the production block's echo page
	require.True(t, ok)
	assert.Equal(t, 12, strings.Count(afterKill, "Key: web-fleet version 1"), "the echo page through the edge with a replica dead:\n%s", got)
	assert.Contains(t, got, "disabled", "the refusal of the disabled version:\n%s", got)
}
