package keyless_test

import (
	"context"
	"crypto/tls"
	"log"
	"net/http"

	handshaked "github.com/handshaked/handshaked/clients/go"
	"github.com/handshaked/handshaked/clients/go/keyless"
)

// An ordinary net/http HTTPS server whose certificate's private key stays
// in the vault: handshaked signs, and for RSA key exchange decrypts, for
// it, and seals its session tickets. clients/README.md quotes this example; a test keeps the two equal.
func ExampleCertificate() {
	client, err := handshaked.Dial("127.0.0.1:7070", handshaked.WithInsecure())
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	// The chain comes from the vault; the key stays there.
	cert, err := keyless.Certificate(context.Background(), client, "dev-rsa")
	if err != nil {
		log.Fatal(err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}}
	// Session tickets sealed by the vault: every server configured so
	// resumes the sessions of every other.
	keyless.NewSessionTickets(client, "dev-rsa").Configure(cfg)
	srv := &http.Server{
		Addr:      "127.0.0.1:8443", // loopback; ":443" would listen on every interface
		TLSConfig: cfg,
	}
	log.Fatal(srv.ListenAndServeTLS("", ""))
}
