package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/keyvault"
)

func printKEKStatus(w io.Writer, st *pb.KEKStatus) {
	fmt.Fprintf(w, "KEK %s\t%s\n", st.GetKekId(), count(st.GetRecords(), "record"))
	if st.GetRetiringKekId() != "" {
		fmt.Fprintf(w, "rotation from KEK %s under way: %s still under it (run kek-rotate again with the new KEK, or none for a token-wrapped KEK, to finish)\n",
			st.GetRetiringKekId(), count(st.GetStaleRecords(), "record"))
	}
}

func cmdKEKStatus(ctx context.Context, e *env, args []string) error {
	var asJSON bool
	if _, err := subcommand("kek-status", e, args, 0, jsonFlag(&asJSON)); err != nil {
		return err
	}
	st, err := e.client.KEKStatus(ctx)
	if err != nil {
		return err
	}
	if asJSON {
		return printJSON(e.stdout, st)
	}
	printKEKStatus(e.stdout, st)
	return nil
}

func cmdKEKRotate(ctx context.Context, e *env, args []string) error {
	var file string
	if _, err := subcommand("kek-rotate", e, args, 0, func(fs *flag.FlagSet) {
		fs.StringVar(&file, "new-kek-file", "", "`file` holding the new KEK, 64 hex digits (as -kek-file of handshaked); "+
			"without it the service makes the KEK and keeps it wrapped by its PKCS#11 token (-kek-pkcs11-file)")
	}); err != nil {
		return err
	}
	var kek []byte // none: the service makes it
	if file != "" {
		data, err := os.ReadFile(file)
		if err != nil {
			return err
		}
		kek, err = keyvault.ParseKEK(data)
		clear(data)
		if err != nil {
			return fmt.Errorf("%s: %w", file, err)
		}
		defer clear(kek)
	}
	st, err := e.client.RotateKEK(ctx, kek)
	if err != nil {
		return err
	}
	printKEKStatus(e.stdout, st)
	if file == "" {
		fmt.Fprintln(e.stdout, "every record is rewrapped: the store opens with the new KEK only, which every replica keeps wrapped by the token in its -kek-pkcs11-file")
		return nil
	}
	fmt.Fprintf(e.stdout, "every record is rewrapped: the store opens with the new KEK only; make %s handshaked's -kek-file (or $HANDSHAKED_KEK) before it restarts\n", file)
	return nil
}

func cmdBackup(ctx context.Context, e *env, args []string) error {
	var out string
	if _, err := subcommand("backup", e, args, 0, func(fs *flag.FlagSet) {
		fs.StringVar(&out, "o", "", "write the snapshot to `file` (mode 0600; created, never overwritten)")
	}); err != nil {
		return err
	}
	if out == "" {
		return errors.New("backup: -o is required")
	}
	// Written beside the target and renamed into place once complete, so a
	// failed backup never leaves a partial snapshot under the name.
	tmp, err := os.CreateTemp(filepath.Dir(out), ".snapshot-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	n, err := e.client.Backup(ctx, tmp)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if _, err := os.Lstat(out); err == nil {
		return fmt.Errorf("backup: %s exists; not overwritten", out)
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "snapshot of %s written to %s\n", count(n, "byte"), out)
	return nil
}

func cmdRestore(ctx context.Context, e *env, args []string) error {
	fs, err := subcommand("restore", e, args, 1, nil)
	if err != nil {
		return err
	}
	f, err := os.Open(fs.Arg(0))
	if err != nil {
		return err
	}
	defer f.Close()
	resp, err := e.client.Restore(ctx, f)
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "restored %s (%s, %s) under KEK %s\n",
		count(resp.GetKeys(), "key"), count(resp.GetRecords(), "record"), count(resp.GetBytes(), "byte"), resp.GetKekId())
	return nil
}

// count is n and noun, in the plural unless n is 1: "1 key", "2 keys".
func count[N int64 | uint32 | uint64](n N, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
