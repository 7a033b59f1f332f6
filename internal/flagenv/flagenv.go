// Package flagenv lets environment variables set a command's flags: -tls-cert
// of handshaked is HANDSHAKED_TLS_CERT. Containers and service managers pass
// settings this way, and it keeps secrets' paths off the command line.
package flagenv

import (
	"errors"
	"flag"
	"fmt"
	"strings"
)

// Name is the environment variable that sets flagName under prefix:
// Name("HANDSHAKE_EDGE_", "client-ca") is HANDSHAKE_EDGE_CLIENT_CA.
func Name(prefix, flagName string) string {
	return prefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// Apply sets every flag of fs that the command line did not set (fs is
// parsed) from its environment variable, when that is set. The command line
// wins: a variable left in a shell cannot silently override what an
// operator typed. It returns the names of the flags it set; except names
// flags no variable may set (-version, -config...).
func Apply(fs *flag.FlagSet, prefix string, lookupEnv func(string) (string, bool), except ...string) ([]string, error) {
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	for _, name := range except {
		given[name] = true
	}
	var set []string
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] {
			return
		}
		v, ok := lookupEnv(Name(prefix, f.Name))
		if !ok {
			return
		}
		if err := fs.Set(f.Name, v); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", Name(prefix, f.Name), err))
			return
		}
		set = append(set, f.Name)
	})
	return set, errors.Join(errs...)
}
