// Package cliflag holds what the client commands share on their command lines.
package cliflag

import "strings"

// List collects a repeatable or comma-separated flag.
type List []string

func (l *List) String() string { return strings.Join(*l, ",") }

// Set adds the comma-separated values of one occurrence of the flag.
func (l *List) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*l = append(*l, s)
		}
	}
	return nil
}
