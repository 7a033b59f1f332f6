package keyvault

import (
	"bufio"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// rotationChildEnv makes the test binary the crash test's child: it names
// the store; HANDSHAKED_CHILD_OPEN and HANDSHAKED_CHILD_ROTATE hold the KEK
// to open it with and the one to rotate to, in hex.
const rotationChildEnv = "HANDSHAKED_ROTATION_CHILD_STORE"

// rotationChild opens the store, writes keys from three goroutines and
// rotates the KEK meanwhile, printing "ack ID" once a key's writes are
// acknowledged, "begun" once the rotation record is committed and "rotated"
// once the rotation completed. It runs until it is killed.
func rotationChild() int {
	fail := func(err error) int { fmt.Fprintln(os.Stderr, "child:", err); return 1 }
	openKEK, err1 := hex.DecodeString(os.Getenv("HANDSHAKED_CHILD_OPEN"))
	nextKEK, err2 := hex.DecodeString(os.Getenv("HANDSHAKED_CHILD_ROTATE"))
	if err := errors.Join(err1, err2); err != nil {
		return fail(err)
	}
	rewrapBatch = 8 // many steps, so that a kill lands inside the rotation
	store, err := OpenBolt(os.Getenv(rotationChildEnv))
	if err != nil {
		return fail(err)
	}
	v, err := Open(context.Background(), store, openKEK)
	if err != nil {
		return fail(err)
	}
	var mu sync.Mutex
	say := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Printf(format+"\n", args...)
	}
	say("open")
	prefix := os.Getenv("HANDSHAKED_CHILD_PREFIX")
	for w := range 3 {
		go func() {
			for i := 0; ; i++ {
				id := fmt.Sprintf("%s-w%d-%d", prefix, w, i)
				_, err := v.Create(ctx, id, Ed25519, nil)
				if err == nil && i%4 == 0 {
					// A rotated key whose first version is destroyed: the
					// destroy rewrites the file while the rotation runs.
					_, err = v.Rotate(ctx, id)
					if err == nil {
						_, err = v.SetVersionEnabled(ctx, id, 1, false)
					}
					if err == nil {
						_, err = v.DestroyVersion(ctx, id, 1)
					}
				}
				if err != nil {
					say("error %v", err)
					return
				}
				say("ack %s", id)
			}
		}()
	}
	time.Sleep(time.Duration(rand.IntN(20)) * time.Millisecond)
	next, err := newSealKeys(nextKEK)
	if err == nil {
		err = v.beginRotation(ctx, next)
	}
	if err != nil {
		return fail(err)
	}
	say("begun")
	if _, err := v.ResumeKEKRotation(ctx); err != nil {
		return fail(err)
	}
	say("rotated")
	select {}
}

// TestKEKRotationSurvivesKill9 runs the vault in a child process that
// writes keys and rotates the KEK, kills it with SIGKILL at a random
// moment, many rounds, and checks what the store holds after each: it
// opens with the new KEK once the rotation began, with the old one too
// exactly while the rotation is incomplete, with the old one only if it
// never began; every acknowledged key is there and signs. Each round
// starts from what the last left: it finishes an interrupted rotation
// (opening with either KEK) or begins a new one.
func TestKEKRotationSurvivesKill9(t *testing.T) {
	path := filepath.Join(t.TempDir(), "vault.db")
	cur, next := newKEK(t), newKEK(t)
	v, err := openVault(path, cur)
	require.NoError(t, err)
	require.NoError(t, v.Close())
	var acked []string
	const rounds = 24
	completed, interrupted := 0, 0
	openWith := cur
	for round := range rounds {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), rotationChildEnv+"="+path,
			"HANDSHAKED_CHILD_OPEN="+hex.EncodeToString(openWith), "HANDSHAKED_CHILD_ROTATE="+hex.EncodeToString(next),
			fmt.Sprintf("HANDSHAKED_CHILD_PREFIX=r%d", round))
		stdout, err := cmd.StdoutPipe()
		require.NoError(t, err)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		require.NoError(t, cmd.Start())
		lines := make(chan string)
		go func() {
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				lines <- sc.Text()
			}
			io.Copy(io.Discard, stdout)
			close(lines)
		}()
		var begun, rotated bool
		var killed atomic.Bool
		for line := range lines {
			switch {
			case line == "open":
				time.AfterFunc(time.Duration(rand.IntN(800))*time.Millisecond, func() {
					killed.Store(true)
					cmd.Process.Kill()
				})
			case line == "begun":
				begun = true
			case line == "rotated":
				rotated = true
			case strings.HasPrefix(line, "ack "):
				acked = append(acked, strings.TrimPrefix(line, "ack "))
			default:
				require.FailNow(t, "child", "round %d: %s\n%s", round, line, stderr.String())
			}
		}
		err = cmd.Wait()
		require.True(t, killed.Load(), "round %d: the child exited by itself: %v\n%s", round, err, stderr.String())

		// What the store holds now.
		vNew, errNew := openVault(path, next)
		var st KEKStatus
		if errNew == nil {
			st = vNew.KEKStatus()
			require.NoError(t, vNew.Close())
		}
		vOld, errOld := openVault(path, cur)
		if errOld == nil {
			require.NoError(t, vOld.Close())
		}
		switch {
		case errNew != nil:
			require.ErrorIs(t, errNew, ErrWrongKEK, "round %d", round)
			require.False(t, begun, "round %d: the rotation began but the store does not open with the new KEK", round)
			require.NoError(t, errOld, "round %d: the store opens with neither KEK", round)
		case st.Retiring != "":
			require.Equal(t, KEKID(cur), st.Retiring, "round %d", round)
			require.False(t, rotated, "round %d: the rotation completed but the status says otherwise", round)
			require.NoError(t, errOld, "round %d: mid-rotation, the store does not open with the old KEK", round)
		default:
			require.ErrorIs(t, errOld, ErrWrongKEK, "round %d: the rotation completed, the old KEK must be refused", round)
		}
		working := cur
		if errNew == nil {
			working = next
		}
		v := openTestVault(t, path, working)
		for _, id := range acked {
			signEd25519(t, v, id)
		}
		require.NoError(t, v.Close())

		switch {
		case errNew == nil && st.Retiring == "":
			completed++
			cur, next, openWith = next, newKEK(t), next
		case errNew == nil:
			// Mid-rotation: the next round finishes it, opened with
			// either KEK.
			interrupted++
			openWith = []([]byte){cur, next}[rand.IntN(2)]
		}
	}
	t.Logf("%d rounds: %d rotations completed, %d interrupted mid-way, %d acknowledged keys all sign", rounds, completed, interrupted, len(acked))
	require.NotZero(t, interrupted, "no kill landed inside a rotation: the test proves little")
}
