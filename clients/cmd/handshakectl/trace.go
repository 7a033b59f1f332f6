package main

import (
	"context"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"github.com/handshaked/handshaked/clients/cmd/internal/cliflag"
	"github.com/handshaked/handshaked/clients/go/edge"
	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/engine/record"
)

// narration says, as a tutorial would, what each handshake message is for.
var narration = map[string]string{
	"ClientHello":         "the client offers versions, cipher suites, groups, key shares, SNI and ALPN",
	"ServerHello":         "the server picks the version, suite and group, and sends its key share",
	"HelloRetryRequest":   "the server asks for a key share in a group it supports",
	"EncryptedExtensions": "from here on encrypted (TLS 1.3): the server's extensions, ALPN among them",
	"Certificate":         "a certificate chain, leaf first",
	"CertificateRequest":  "the server asks the client for a certificate",
	"ServerKeyExchange":   "the server's ECDHE share, signed with its private key in the vault",
	"ServerHelloDone":     "the server's first flight is over",
	"CertificateVerify":   "a signature over the transcript so far, proving possession of the private key",
	"ClientKeyExchange":   "the client's key share, or the premaster secret encrypted to the server's RSA key",
	"ChangeCipherSpec":    "the sender switches to the negotiated keys",
	"Finished":            "a MAC over the whole transcript: both sides saw the same handshake",
	"NewSessionTicket":    "a ticket for resumption",
	"Alert":               "the handshake is over: an alert",
}

type traceFlags struct {
	listen, replay, alpn string
	keys                 cliflag.List
	hexInput             bool
	timeout              time.Duration
}

func cmdTrace(ctx context.Context, e *env, args []string) error {
	var o traceFlags
	if _, err := subcommand("trace", e, args, 0, func(fs *flag.FlagSet) {
		fs.Var(&o.keys, "key", "vault `key` with an attached chain (repeatable; SNI picks)")
		fs.StringVar(&o.listen, "listen", "127.0.0.1:8443", "accept one TLS client on this `address`")
		fs.StringVar(&o.replay, "replay", "", "instead, replay a capture of a client's bytes from `file`")
		fs.BoolVar(&o.hexInput, "hex", false, "the capture is hex (whitespace ignored)")
		fs.StringVar(&o.alpn, "alpn", "http/1.1", "ALPN `protocols`, comma-separated")
		fs.DurationVar(&o.timeout, "timeout", 60*time.Second, "how long to wait for the client")
	}); err != nil {
		return err
	}
	if len(o.keys) == 0 {
		return errors.New("trace: -key is required")
	}
	cfg := &pb.HandshakeConfig{}
	for _, k := range o.keys {
		cfg.Keys = append(cfg.Keys, &pb.KeyRef{Key: k})
	}
	if o.alpn != "" {
		cfg.AlpnProtocols = strings.Split(o.alpn, ",")
	}
	if o.replay != "" {
		return replay(ctx, e, cfg, o)
	}
	return traceLive(ctx, e, cfg, o)
}

// traceLive accepts one TLS client, runs its handshake through the service
// and narrates it. If the client then sends a request it gets a short HTTP
// answer, so `curl -k` works as the client.
func traceLive(ctx context.Context, e *env, cfg *pb.HandshakeConfig, o traceFlags) error {
	l, err := net.Listen("tcp", o.listen)
	if err != nil {
		return err
	}
	defer l.Close()
	fmt.Fprintf(e.stderr, "waiting for a TLS client on %s\n", l.Addr())
	if e.ready != nil {
		e.ready(l.Addr().String())
	}
	go func() {
		select {
		case <-ctx.Done():
			l.Close()
		case <-time.After(o.timeout):
			l.Close()
		}
	}()
	raw, err := l.Accept()
	if err != nil {
		return fmt.Errorf("trace: no client: %w", err)
	}
	start := time.Now()
	c, err := edge.Server(ctx, raw, &edge.Config{Client: e.client, Handshake: cfg, Trace: true})
	if err != nil {
		var herr *edge.HandshakeError
		if errors.As(err, &herr) {
			fmt.Fprintf(e.stdout, "FAILED: %s (%s)\n", herr.Alert, herr.Reason)
		}
		return err
	}
	defer c.Close()
	st := c.ConnectionState()
	printSteps(e.stdout, st.Steps)
	fmt.Fprintf(e.stdout, "COMPLETE after %v: %s, %s, group %s, signature %s, SNI %q, ALPN %q\n",
		time.Since(start).Round(time.Microsecond), tls.VersionName(st.Version), tls.CipherSuiteName(st.CipherSuite),
		st.CurveID, st.SignatureScheme, st.ServerName, st.NegotiatedProtocol)
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if n, _ := c.Read(make([]byte, 4096)); n > 0 {
		body := "handshake traced by handshakectl\n"
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body)
	}
	return nil
}

// printSteps narrates a handshake step by step.
func printSteps(w io.Writer, steps []edge.Step) {
	for i, s := range steps {
		fmt.Fprintf(w, "step %d: %d bytes from the client, %d bytes back (service %v)\n", i+1, s.In, s.Out, s.Duration.Round(time.Microsecond))
		printEvents(w, s.Trace)
	}
}

func printEvents(w io.Writer, events []*pb.TraceEvent) {
	for _, ev := range events {
		who := "client → server"
		if ev.GetDirection() == "sent" {
			who = "server → client"
		}
		var fields []string
		for _, f := range ev.GetFields() {
			fields = append(fields, f.GetKey()+"="+f.GetValue())
		}
		fmt.Fprintf(w, "  %s  %-20s %s\n", who, ev.GetMessage(), strings.Join(fields, " "))
		if n, ok := narration[ev.GetMessage()]; ok {
			fmt.Fprintf(w, "  %17s  %s\n", "", n)
		}
	}
}

// replay feeds a capture of a client's bytes to a new handshake, one
// record per step. The server's answer differs from the one captured
// (fresh randoms and key shares), so a capture replays only up to the
// client's first encrypted message; what the engine makes of the rest is
// narrated too.
func replay(ctx context.Context, e *env, cfg *pb.HandshakeConfig, o traceFlags) error {
	capture, err := os.ReadFile(o.replay)
	if err != nil {
		return err
	}
	if o.hexInput {
		if capture, err = hex.DecodeString(strings.Join(strings.Fields(string(capture)), "")); err != nil {
			return fmt.Errorf("trace: capture: %w", err)
		}
	}
	// Stateless steps: with -handshaked naming several replicas, each step
	// may land on any of them.
	var (
		id    string
		token []byte
	)
	for step := 1; len(capture) > 0; step++ {
		_, _, _, n, err := record.Parse(capture, record.MaxCiphertextTLS12)
		if err != nil {
			return fmt.Errorf("trace: capture: %w", err)
		}
		if n == 0 {
			return fmt.Errorf("trace: capture ends inside a record (%d bytes left)", len(capture))
		}
		in := capture[:n]
		capture = capture[n:]
		start := time.Now()
		var out *pb.HandshakeStep
		if id == "" {
			out, err = e.client.StartStatelessHandshake(ctx, cfg, in)
		} else {
			out, err = e.client.StepStatelessHandshake(ctx, id, token, in)
		}
		id, token = out.GetId(), out.GetStateToken()
		if err != nil {
			return fmt.Errorf("trace: step %d: %w", step, err)
		}
		fmt.Fprintf(e.stdout, "step %d: %d bytes from the capture, %d bytes back (service %v)\n", step, len(in), len(out.GetOutput()), time.Since(start).Round(time.Microsecond))
		printEvents(e.stdout, out.GetTrace())
		switch out.GetState() {
		case pb.HandshakeState_HANDSHAKE_STATE_FAILED:
			fmt.Fprintf(e.stdout, "FAILED: %s (%s)\n", out.GetAlert().GetName(), out.GetAlert().GetReason())
			return nil
		case pb.HandshakeState_HANDSHAKE_STATE_COMPLETE:
			fmt.Fprintln(e.stdout, "COMPLETE")
			return nil
		}
	}
	fmt.Fprintln(e.stdout, "capture exhausted: the handshake waits for more input")
	return nil
}
