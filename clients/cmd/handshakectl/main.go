// Command handshakectl manages handshaked's keys and shows its handshakes:
//
//	handshakectl [-handshaked addr] <command> [flags] [args]
//
// Keys: list, get, create, import, rotate, enable, disable, destroy,
// attach-chain, csr, public-key. Operations: sign, decrypt, verify.
// Handshakes: trace (accept one TLS client, or replay a capture of a
// client's bytes, and narrate the handshake step by step). The vault as a
// whole: kek-status, kek-rotate, backup, restore. version (or -version)
// prints the build.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"
	"unicode"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/handshaked/handshaked/clients/cmd/internal/cliflag"
	handshaked "github.com/handshaked/handshaked/clients/go"
	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/buildinfo"
	"github.com/handshaked/handshaked/internal/logging"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	routeGRPC = logging.RouteGRPC
	os.Exit(report(run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr), os.Stderr))
}

// report prints err, if any, in plain words and returns the exit status:
// 0 for success and for -h, 1 for a failure.
func report(err error, w io.Writer) int {
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return 0
	}
	fmt.Fprintln(w, "handshakectl:", plainError(err))
	return 1
}

// plainError renders err for people: a gRPC status in it becomes its code
// in words and its message ("permission denied: ...") instead of gRPC's
// "rpc error: code = PermissionDenied desc = ...", with a hint where the
// usual cause is the command line.
func plainError(err error) string {
	var se interface{ GRPCStatus() *status.Status }
	if !errors.As(err, &se) {
		return err.Error()
	}
	st := se.GRPCStatus()
	// The vault's errors end with their kind ("...: failed precondition"),
	// the words of the code the service answers with: said once, first.
	words := codeWords(st.Code())
	msg := strings.Replace(err.Error(), st.Err().Error(), words+": "+strings.TrimSuffix(st.Message(), ": "+words), 1)
	switch st.Code() {
	case codes.Unavailable:
		switch {
		case strings.Contains(msg, "x509: "):
			msg += " (handshaked's certificate was not accepted: check -ca, and give -server-name when the address is not a name in the certificate)"
		case refusedAfterHandshake(msg):
			msg += " (handshaked ended the connection once the TLS handshake was done: it refused the client certificate, most likely; " +
				"check that -cert is issued by a CA of handshaked's -client-ca bundle, is valid now and has the clientAuth usage; " +
				"handshaked's log and audit log say why)"
		default:
			msg += " (is handshaked running at that address, and does it speak TLS (-ca) or plain text?)"
		}
	case codes.Unauthenticated:
		msg += " (give a client certificate with -cert and -key)"
	}
	return msg
}

// refusedAfterHandshake says whether msg, an UNAVAILABLE call's, is of a
// connection handshaked closed after its TLS handshake, as it does when it
// refuses the client's certificate: in TLS 1.3 the client's side of the
// handshake is done before the server checks its certificate, so the
// client learns of the refusal from the alert that follows (remote error),
// or from the closed connection its first write meets.
func refusedAfterHandshake(msg string) bool {
	if strings.Contains(msg, "authentication handshake failed") {
		return false // the handshake itself failed
	}
	return strings.Contains(msg, "remote error: tls: ") || strings.Contains(msg, "broken pipe") || strings.Contains(msg, "connection reset by peer")
}

// codeWords spells a gRPC code as words: PermissionDenied is "permission
// denied".
func codeWords(c codes.Code) string {
	var b strings.Builder
	for i, r := range c.String() {
		if unicode.IsUpper(r) && i > 0 {
			b.WriteByte(' ')
		}
		b.WriteRune(unicode.ToLower(r))
	}
	return b.String()
}

// env is what a command runs with.
type env struct {
	client *handshaked.Client
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	// ready, if set, is told where trace listens (for tests).
	ready func(addr string)
}

type command struct {
	usage string
	run   func(ctx context.Context, e *env, args []string) error
}

// commands is filled in init: the commands look their usage up in it.
var commands map[string]command

func init() {
	commands = map[string]command{
		"list":         {"list [-json]: show the keys", cmdList},
		"get":          {"get [-json] ID: show a key and its versions", cmdGet},
		"create":       {"create [-algorithm rsa2048|rsa3072|rsa4096|p256|p384|p521|ed25519] [-backend software|pkcs11] [-label k=v] ID: create a key in the vault (default p256, software)", cmdCreate},
		"import":       {"import -pem FILE [-label k=v] ID: import a private key into the vault", cmdImport},
		"rotate":       {"rotate ID: add a new primary version", cmdRotate},
		"enable":       {"enable ID VERSION: let a disabled version be used again", cmdEnable},
		"disable":      {"disable ID VERSION: stop a version from being used", cmdDisable},
		"destroy":      {"destroy -confirm ID ID VERSION: erase a disabled version for good", cmdDestroy},
		"attach-chain": {"attach-chain [-version N] -chain FILE.pem ID: attach a certificate chain (leaf first) to a version", cmdAttach},
		"csr":          {"csr [-version N] -cn NAME [-dns a,b] [-ip a,b] [-org O] ID: print a PEM CSR signed in the vault", cmdCSR},
		"public-key":   {"public-key [-version N] [-json] ID: print the PEM public key", cmdPublicKey},
		"sign":         {"sign -scheme SCHEME [-version N] [-in FILE] [-digest] [-o FILE] ID: sign in the vault", cmdSign},
		"decrypt":      {"decrypt -mode premaster|oaep [-version N] [-in FILE] [-o FILE] ID: decrypt with an RSA key in the vault", cmdDecrypt},
		"verify":       {"verify -scheme SCHEME -sig FILE [-version N] [-in FILE] ID: check a signature locally with the vault's public key", cmdVerify},
		"trace":        {"trace -key ID [-listen ADDR | -replay FILE] [handshake flags]: narrate a handshake", cmdTrace},
		"kek-status":   {"kek-status [-json]: show which KEK seals the vault and whether a rotation is under way", cmdKEKStatus},
		"kek-rotate":   {"kek-rotate [-new-kek-file FILE]: rewrap every record under a new KEK, online (none given: one the service makes, for a token-wrapped KEK)", cmdKEKRotate},
		"backup":       {"backup -o FILE: write a snapshot of the vault, online", cmdBackup},
		"restore":      {"restore FILE: load a snapshot into a fresh instance started with its KEK", cmdRestore},
	}
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: handshakectl [-handshaked ADDR] [-ca FILE] [-cert FILE -key FILE] [-server-name NAME] COMMAND [flags] [args]")
	fmt.Fprintln(w, "The connection flags can come from the environment instead:")
	for _, f := range connFlags {
		fmt.Fprintf(w, "  %-14s $%s\n", "-"+f.name, f.env)
	}
	fmt.Fprintln(w, "Commands (handshakectl COMMAND -h for a command's flags):")
	names := make([]string, 0, len(commands))
	for name := range commands {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		fmt.Fprintf(w, "  %s\n", commands[name].usage)
	}
	fmt.Fprintln(w, "  version: print the build")
	fmt.Fprintln(w, "Flags:")
}

// connFlags are the flags that say how to reach handshaked; each can be set
// by an environment variable instead, so that a shell session or a script
// names the service and its credentials once. A flag given on the command
// line wins.
var connFlags = []struct{ name, env string }{
	{"handshaked", "HANDSHAKED_ADDR"},
	{"ca", "HANDSHAKED_CA"},
	{"cert", "HANDSHAKED_CERT"},
	{"key", "HANDSHAKED_KEY"},
	{"server-name", "HANDSHAKED_SERVER_NAME"},
}

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	return runEnv(ctx, args, &env{stdin: stdin, stdout: stdout, stderr: stderr})
}

// globals are the flags before the command.
type globals struct {
	addr, ca, cert, key, serverName *string
	timeout                         *time.Duration
	version                         *bool
	log                             *logging.Options
}

// newFlagSet defines the flags before the command.
func newFlagSet() (*flag.FlagSet, globals) {
	fs := flag.NewFlagSet("handshakectl", flag.ContinueOnError)
	var g globals
	g.addr = fs.String("handshaked", "127.0.0.1:7070", "gRPC `target` of handshaked: host:port, the replicas host:port,host:port,... (calls are balanced over them, reads retried on another when one is unavailable) or dns:///name:port")
	g.ca = fs.String("ca", "", "roots (`PEM`) for handshaked's certificate (default: plain text, for a loopback development instance)")
	g.cert = fs.String("cert", "", "client certificate (`PEM`) for mutual TLS")
	g.key = fs.String("key", "", "client certificate key (`PEM`)")
	g.serverName = fs.String("server-name", "", "`name` handshaked's certificate must carry, when it is not the host of -handshaked (implies TLS)")
	g.timeout = fs.Duration("timeout", 30*time.Second, "bound on each call")
	g.version = fs.Bool("version", false, "print the build (version, VCS revision, Go version) and exit; also the version command")
	// What handshakectl logs on stderr is gRPC's own diagnostics: only
	// errors unless asked, as grpc-go does by default; a failed call's
	// cause is in handshakectl's own message already.
	g.log = logging.AddFlags(fs, slog.LevelError, logging.FormatText)
	return fs, g
}

// routeGRPC sends grpc-go's log lines to handshakectl's logger. Only main
// sets it: grpc-go has one logger per process, which tests running
// commands at once must leave alone.
var routeGRPC = func(*slog.Logger) {}

func runEnv(ctx context.Context, args []string, e *env) error {
	fs, g := newFlagSet()
	fs.SetOutput(e.stderr)
	fs.Usage = func() { usage(e.stderr); fs.PrintDefaults() }
	for _, f := range connFlags {
		if v, ok := os.LookupEnv(f.env); ok {
			if err := fs.Set(f.name, v); err != nil {
				return fmt.Errorf("$%s: %w", f.env, err)
			}
		}
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *g.version || fs.Arg(0) == "version" {
		_, err := fmt.Fprintln(e.stdout, "handshakectl", buildinfo.Read())
		return err
	}
	logger, err := logging.New(e.stderr, *g.log)
	if err != nil {
		return err
	}
	routeGRPC(logger)
	if fs.NArg() == 0 {
		usage(e.stderr)
		return errors.New("no command")
	}
	cmd, ok := commands[fs.Arg(0)]
	if !ok {
		usage(e.stderr)
		return fmt.Errorf("unknown command %q", fs.Arg(0))
	}
	opts := []handshaked.Option{handshaked.WithTimeout(*g.timeout), handshaked.WithRetries(2, 100*time.Millisecond)}
	if (*g.cert == "") != (*g.key == "") {
		return errors.New("-cert and -key go together")
	}
	if *g.ca == "" && *g.cert == "" && *g.serverName == "" {
		opts = append(opts, handshaked.WithInsecure())
	} else {
		cfg, err := handshaked.TLSConfigFromFiles(*g.ca, *g.cert, *g.key)
		if err != nil {
			return err
		}
		cfg.ServerName = *g.serverName
		opts = append(opts, handshaked.WithTLS(cfg))
	}
	c, err := handshaked.Dial(*g.addr, opts...)
	if err != nil {
		return err
	}
	defer c.Close()
	e.client = c
	return cmd.run(ctx, e, fs.Args()[1:])
}

// subcommand parses a command's flags and checks its positional arguments.
func subcommand(name string, e *env, args []string, nargs int, define func(fs *flag.FlagSet)) (*flag.FlagSet, error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	if define != nil {
		define(fs)
	}
	fs.Usage = func() { fmt.Fprintln(e.stderr, "usage: handshakectl", commands[name].usage); fs.PrintDefaults() }
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() != nargs {
		fs.Usage()
		return nil, fmt.Errorf("%s: want %d argument(s), got %d", name, nargs, fs.NArg())
	}
	return fs, nil
}

// labels is a repeatable k=v flag.
type labels map[string]string

func (l labels) String() string { return fmt.Sprint(map[string]string(l)) }
func (l labels) Set(v string) error {
	k, val, ok := strings.Cut(v, "=")
	if !ok || k == "" {
		return fmt.Errorf("label %q: want key=value", v)
	}
	l[k] = val
	return nil
}

var algorithms = map[string]pb.Algorithm{
	"rsa2048": pb.Algorithm_ALGORITHM_RSA_2048, "rsa3072": pb.Algorithm_ALGORITHM_RSA_3072, "rsa4096": pb.Algorithm_ALGORITHM_RSA_4096,
	"p256": pb.Algorithm_ALGORITHM_ECDSA_P256, "p384": pb.Algorithm_ALGORITHM_ECDSA_P384, "p521": pb.Algorithm_ALGORITHM_ECDSA_P521,
	"ed25519": pb.Algorithm_ALGORITHM_ED25519,
}

// printKey renders a key for people.
func printKey(w io.Writer, k *pb.Key) {
	fmt.Fprintf(w, "%s\tprimary version %d", k.GetId(), k.GetPrimaryVersion())
	if len(k.GetLabels()) > 0 {
		fmt.Fprintf(w, "\tlabels %v", k.GetLabels())
	}
	fmt.Fprintln(w)
	for _, v := range k.GetVersions() {
		state := strings.ToLower(strings.TrimPrefix(v.GetState().String(), "KEY_VERSION_STATE_"))
		alg := strings.ToLower(strings.TrimPrefix(v.GetAlgorithm().String(), "ALGORITHM_"))
		fmt.Fprintf(w, "  version %d\t%s\t%s", v.GetVersion(), alg, state)
		if v.GetImported() {
			fmt.Fprint(w, "\timported")
		}
		if v.GetBackend() == pb.KeyBackend_KEY_BACKEND_PKCS11 {
			fmt.Fprint(w, "\tin pkcs11")
		}
		if n := len(v.GetCertificateChain()); n > 0 {
			fmt.Fprintf(w, "\tchain of %d", n)
		}
		fmt.Fprintf(w, "\tcreated %s\n", v.GetCreateTime().AsTime().Format(time.RFC3339))
	}
}

// printJSON renders m as the REST API does (proto JSON field names, every
// field present), for scripts.
func printJSON(w io.Writer, m proto.Message) error {
	b, err := protojson.MarshalOptions{Multiline: true, Indent: "  ", EmitUnpopulated: true}.Marshal(m)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

func jsonFlag(asJSON *bool) func(fs *flag.FlagSet) {
	return func(fs *flag.FlagSet) {
		fs.BoolVar(asJSON, "json", false, "print JSON, as the REST API answers")
	}
}

func cmdList(ctx context.Context, e *env, args []string) error {
	var asJSON bool
	if _, err := subcommand("list", e, args, 0, jsonFlag(&asJSON)); err != nil {
		return err
	}
	keys, err := e.client.ListKeys(ctx)
	if err != nil {
		return err
	}
	if asJSON {
		return printJSON(e.stdout, &pb.ListKeysResponse{Keys: keys})
	}
	for _, k := range keys {
		printKey(e.stdout, k)
	}
	return nil
}

func cmdGet(ctx context.Context, e *env, args []string) error {
	var asJSON bool
	fs, err := subcommand("get", e, args, 1, jsonFlag(&asJSON))
	if err != nil {
		return err
	}
	k, err := e.client.GetKey(ctx, fs.Arg(0))
	if err != nil {
		return err
	}
	if asJSON {
		return printJSON(e.stdout, k)
	}
	printKey(e.stdout, k)
	return nil
}

// backends are the -backend values of create.
var backends = map[string]pb.KeyBackend{"software": pb.KeyBackend_KEY_BACKEND_SOFTWARE, "pkcs11": pb.KeyBackend_KEY_BACKEND_PKCS11}

func cmdCreate(ctx context.Context, e *env, args []string) error {
	var alg, backend string
	l := labels{}
	fs, err := subcommand("create", e, args, 1, func(fs *flag.FlagSet) {
		fs.StringVar(&alg, "algorithm", "p256", "rsa2048, rsa3072, rsa4096, p256, p384, p521 or ed25519")
		fs.StringVar(&backend, "backend", "software", "software (sealed in the vault's store) or pkcs11 (inside the service's HSM, never extractable)")
		fs.Var(l, "label", "`key=value` label (repeatable)")
	})
	if err != nil {
		return err
	}
	a, ok := algorithms[alg]
	if !ok {
		return fmt.Errorf("create: unknown algorithm %q", alg)
	}
	b, ok := backends[backend]
	if !ok {
		return fmt.Errorf("create: unknown backend %q (software or pkcs11)", backend)
	}
	k, err := e.client.CreateKeyInBackend(ctx, fs.Arg(0), a, b, l)
	if err != nil {
		return err
	}
	printKey(e.stdout, k)
	return nil
}

func cmdImport(ctx context.Context, e *env, args []string) error {
	var file string
	l := labels{}
	fs, err := subcommand("import", e, args, 1, func(fs *flag.FlagSet) {
		fs.StringVar(&file, "pem", "", "private key `file` (PEM: PKCS#1, PKCS#8 or SEC1)")
		fs.Var(l, "label", "`key=value` label (repeatable)")
	})
	if err != nil {
		return err
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	k, err := e.client.ImportKey(ctx, fs.Arg(0), b, l)
	clear(b)
	if err != nil {
		return err
	}
	printKey(e.stdout, k)
	return nil
}

func cmdRotate(ctx context.Context, e *env, args []string) error {
	fs, err := subcommand("rotate", e, args, 1, nil)
	if err != nil {
		return err
	}
	k, err := e.client.RotateKey(ctx, fs.Arg(0))
	if err != nil {
		return err
	}
	printKey(e.stdout, k)
	return nil
}

// versionArgs reads the ID VERSION arguments.
func versionArgs(fs *flag.FlagSet) (string, uint32, error) {
	var v uint32
	if _, err := fmt.Sscan(fs.Arg(1), &v); err != nil || v == 0 {
		return "", 0, fmt.Errorf("version %q: want a positive number", fs.Arg(1))
	}
	return fs.Arg(0), v, nil
}

// versionCommand runs a call that takes ID VERSION and prints the key.
func versionCommand(ctx context.Context, e *env, args []string, name string, call func(*handshaked.Client, context.Context, string, uint32) (*pb.Key, error)) error {
	fs, err := subcommand(name, e, args, 2, nil)
	if err != nil {
		return err
	}
	id, v, err := versionArgs(fs)
	if err != nil {
		return err
	}
	k, err := call(e.client, ctx, id, v)
	if err != nil {
		return err
	}
	printKey(e.stdout, k)
	return nil
}

func cmdEnable(ctx context.Context, e *env, args []string) error {
	return versionCommand(ctx, e, args, "enable", (*handshaked.Client).EnableKeyVersion)
}

func cmdDisable(ctx context.Context, e *env, args []string) error {
	return versionCommand(ctx, e, args, "disable", (*handshaked.Client).DisableKeyVersion)
}

func cmdDestroy(ctx context.Context, e *env, args []string) error {
	var confirm string
	fs, err := subcommand("destroy", e, args, 2, func(fs *flag.FlagSet) {
		fs.StringVar(&confirm, "confirm", "", "the key `ID` again: destroying cannot be undone")
	})
	if err != nil {
		return err
	}
	id, v, err := versionArgs(fs)
	if err != nil {
		return err
	}
	if confirm != id {
		return fmt.Errorf("destroy: pass -confirm %s to erase version %d for good", id, v)
	}
	k, err := e.client.DestroyKeyVersion(ctx, id, v)
	if err != nil {
		return err
	}
	printKey(e.stdout, k)
	return nil
}

func cmdAttach(ctx context.Context, e *env, args []string) error {
	var file string
	var version uint
	fs, err := subcommand("attach-chain", e, args, 1, func(fs *flag.FlagSet) {
		fs.StringVar(&file, "chain", "", "certificate chain `file` (PEM, leaf first)")
		fs.UintVar(&version, "version", 0, "key version (0: primary)")
	})
	if err != nil {
		return err
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	k, err := e.client.KeyVault().AttachCertificateChain(ctx, &pb.AttachCertificateChainRequest{Key: fs.Arg(0), Version: uint32(version), CertificateChainPem: string(b)})
	if err != nil {
		return err
	}
	printKey(e.stdout, k)
	return nil
}

func cmdCSR(ctx context.Context, e *env, args []string) error {
	var cn string
	var dns, ips, org cliflag.List
	var version uint
	fs, err := subcommand("csr", e, args, 1, func(fs *flag.FlagSet) {
		fs.StringVar(&cn, "cn", "", "subject common `name`")
		fs.Var(&dns, "dns", "DNS `names` (comma-separated, repeatable)")
		fs.Var(&ips, "ip", "IP `addresses`")
		fs.Var(&org, "org", "`organization`")
		fs.UintVar(&version, "version", 0, "key version (0: primary)")
	})
	if err != nil {
		return err
	}
	csr, err := e.client.CreateCertificateSigningRequest(ctx, &pb.CreateCertificateSigningRequestRequest{
		Key: fs.Arg(0), Version: uint32(version), CommonName: cn, DnsNames: dns, IpAddresses: ips, Organization: org})
	if err != nil {
		return err
	}
	_, err = io.WriteString(e.stdout, csr.GetPem())
	return err
}

func cmdPublicKey(ctx context.Context, e *env, args []string) error {
	var version uint
	var asJSON bool
	fs, err := subcommand("public-key", e, args, 1, func(fs *flag.FlagSet) {
		fs.UintVar(&version, "version", 0, "key version (0: primary)")
		jsonFlag(&asJSON)(fs)
	})
	if err != nil {
		return err
	}
	resp, err := e.client.KeyVault().GetPublicKey(ctx, &pb.GetPublicKeyRequest{Key: fs.Arg(0), Version: uint32(version)})
	if err != nil {
		return err
	}
	if asJSON {
		return printJSON(e.stdout, resp)
	}
	_, err = io.WriteString(e.stdout, resp.GetPem())
	return err
}
