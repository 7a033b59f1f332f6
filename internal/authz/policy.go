// Package authz decides which caller identities may do what with which keys.
//
// A policy is a list of grants read from a JSON file. Each grant gives a set
// of identities rights on a set of keys: "use" (decrypt, sign, run
// handshakes), "manage" (create, import, rotate, enable, disable, destroy,
// attach certificates) or "admin" (everything, on every key). Whatever no
// grant allows is denied.
package authz

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Right is a set of rights.
type Right uint8

const (
	// Use is decrypting, signing and running handshakes with a key.
	Use Right = 1 << iota
	// Manage is changing a key: create, import, rotate, enable, disable,
	// destroy, attach certificates.
	Manage
	// Admin is every right on every key, and whatever the service keeps
	// from everyone else (methods no rule names).
	Admin
)

var rightNames = []struct {
	r    Right
	name string
}{{Use, "use"}, {Manage, "manage"}, {Admin, "admin"}}

func (r Right) String() string {
	var names []string
	for _, n := range rightNames {
		if r&n.r != 0 {
			names = append(names, n.name)
		}
	}
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, "|")
}

// Key is what a grant can select a key by.
type Key struct {
	ID     string
	Labels map[string]string
}

// Policy is a parsed policy. It is immutable and safe for concurrent use.
type Policy struct {
	// exact holds grants by literal identity, so evaluation looks at the
	// caller's grants and the wildcard ones, not at every grant.
	exact    map[string][]*grant
	wildcard []*grant
	grants   int
	// labels is whether any grant selects keys by label, that is whether
	// evaluation needs a key's labels at all.
	labels bool
}

type grant struct {
	identities []pattern // for the wildcard list; exact ones are indexed
	rights     Right
	keys       []pattern
	labels     map[string]string
}

// pattern is a literal, or a prefix when it ends in '*' ("*" matches all).
type pattern struct {
	text   string
	prefix bool
}

func parsePattern(s string) pattern {
	if p, ok := strings.CutSuffix(s, "*"); ok {
		return pattern{text: p, prefix: true}
	}
	return pattern{text: s}
}

func (p pattern) match(s string) bool {
	if p.prefix {
		return strings.HasPrefix(s, p.text)
	}
	return s == p.text
}

// file is the JSON form of a policy.
type file struct {
	Grants []fileGrant `json:"grants"`
}

type fileGrant struct {
	// Identities are caller identities (a certificate's URI SAN, else DNS
	// SAN, else subject CN); a trailing '*' makes a prefix.
	Identities []string `json:"identities"`
	// Rights are "use", "manage" or "admin".
	Rights []string `json:"rights"`
	// Keys are key ids; a trailing '*' makes a prefix, "*" is every key.
	Keys []string `json:"keys"`
	// Labels select keys carrying every one of these labels.
	Labels map[string]string `json:"labels"`
}

// maxPolicyBytes bounds a policy file; a real one is a few kilobytes.
const maxPolicyBytes = 4 << 20

// Parse reads a policy from its JSON form. Unknown fields are errors, so a
// misspelt field cannot silently widen or narrow a grant.
func Parse(data []byte) (*Policy, error) {
	if len(data) > maxPolicyBytes {
		return nil, fmt.Errorf("policy: more than %d bytes", maxPolicyBytes)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var f file
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("policy: trailing data after the JSON object")
	}
	p := &Policy{exact: map[string][]*grant{}, grants: len(f.Grants)}
	for i, fg := range f.Grants {
		g, err := newGrant(fg)
		if err != nil {
			return nil, fmt.Errorf("policy: grant %d: %w", i, err)
		}
		p.labels = p.labels || len(g.labels) > 0
		wild := false
		for _, id := range fg.Identities {
			if ip := parsePattern(id); ip.prefix {
				g.identities = append(g.identities, ip)
				wild = true
			} else {
				p.exact[id] = append(p.exact[id], g)
			}
		}
		if wild {
			p.wildcard = append(p.wildcard, g)
		}
	}
	return p, nil
}

func newGrant(fg fileGrant) (*grant, error) {
	if len(fg.Identities) == 0 {
		return nil, errors.New("no identities")
	}
	for _, id := range fg.Identities {
		if id == "" || strings.Contains(strings.TrimSuffix(id, "*"), "*") {
			return nil, fmt.Errorf("identity %q: must be non-empty, with '*' only at the end", id)
		}
	}
	g := &grant{labels: fg.Labels}
	for _, name := range fg.Rights {
		found := false
		for _, n := range rightNames {
			if name == n.name {
				g.rights |= n.r
				found = true
			}
		}
		if !found {
			return nil, fmt.Errorf("unknown right %q (want use, manage or admin)", name)
		}
	}
	if g.rights == 0 {
		return nil, errors.New("no rights")
	}
	selects := len(fg.Keys) > 0 || len(fg.Labels) > 0
	if g.rights&Admin != 0 {
		// Admin is global by definition; a scoped admin would read as a
		// restriction that does not exist.
		if selects || g.rights != Admin {
			return nil, errors.New(`"admin" stands alone: no other rights, keys or labels`)
		}
		return g, nil
	}
	if !selects {
		// No implicit "every key": that must be written "*".
		return nil, errors.New(`name keys or labels (keys: ["*"] for every key)`)
	}
	for _, k := range fg.Keys {
		if !validKeyPattern(k) {
			return nil, fmt.Errorf("key %q: key ids are a-z, 0-9 and '-', with an optional '*' at the end", k)
		}
		g.keys = append(g.keys, parsePattern(k))
	}
	for k := range fg.Labels {
		if k == "" {
			return nil, errors.New("empty label name")
		}
	}
	return g, nil
}

func validKeyPattern(k string) bool {
	body := strings.TrimSuffix(k, "*")
	if body == "" {
		return k == "*"
	}
	for i := 0; i < len(body); i++ {
		c := body[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// selects reports whether the grant covers key.
func (g *grant) selects(key Key) bool {
	if g.rights == Admin {
		return true
	}
	if len(g.keys) > 0 {
		matched := false
		for _, p := range g.keys {
			if p.match(key.ID) {
				matched = true
				break
			}
		}
		if !matched {
			return false
		}
	}
	for name, want := range g.labels {
		if got, ok := key.Labels[name]; !ok || got != want {
			return false
		}
	}
	return true
}

// Rights returns what identity may do with key. An admin has every right.
// The empty identity (an unauthenticated caller) has none.
func (p *Policy) Rights(identity string, key Key) Right {
	if identity == "" {
		return 0
	}
	var r Right
	add := func(g *grant) {
		if g.rights == Admin {
			r |= Use | Manage | Admin
		} else if g.selects(key) {
			r |= g.rights
		}
	}
	for _, g := range p.exact[identity] {
		add(g)
	}
	for _, g := range p.wildcard {
		for _, ip := range g.identities {
			if ip.match(identity) {
				add(g)
				break
			}
		}
	}
	return r
}

// Allows reports whether identity holds at least one of the rights in want
// on key.
func (p *Policy) Allows(identity string, key Key, want Right) bool {
	return p.Rights(identity, key)&want != 0
}

// UsesLabels reports whether any grant selects keys by label; if none does,
// callers need not look a key's labels up.
func (p *Policy) UsesLabels() bool { return p.labels }

// Len is the number of grants.
func (p *Policy) Len() int { return p.grants }
