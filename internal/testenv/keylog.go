package testenv

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"strings"
	"testing"
)

// KeyLog parses the NSS key log a TLS peer wrote into b (crypto/tls's
// Config.KeyLogWriter; lines "LABEL client_random secret") by label: the
// client random and the secret of each, so that a test can read or write a
// connection's records itself.
func KeyLog(t testing.TB, b *Buffer) map[string][2][]byte {
	t.Helper()
	out := make(map[string][2][]byte)
	sc := bufio.NewScanner(bytes.NewReader(b.Bytes()))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 3 {
			t.Fatalf("bad key log line %q", sc.Text())
		}
		random, err1 := hex.DecodeString(f[1])
		secret, err2 := hex.DecodeString(f[2])
		if err1 != nil || err2 != nil {
			t.Fatalf("bad key log line %q", sc.Text())
		}
		out[f[0]] = [2][]byte{random, secret}
	}
	return out
}

// KeyLogSecret is the secret labelled label in the key log in b.
func KeyLogSecret(t testing.TB, b *Buffer, label string) []byte {
	t.Helper()
	e, ok := KeyLog(t, b)[label]
	if !ok {
		t.Fatalf("no %s in the key log", label)
	}
	return e[1]
}
