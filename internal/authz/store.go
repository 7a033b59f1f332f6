package authz

import (
	"fmt"
	"io"
	"os"
	"sync/atomic"
)

// Store holds the policy read from a file and swaps in a new one on Reload.
// Calls in flight keep the policy they started with; a policy that does not
// parse is refused and the previous one stays in force.
type Store struct {
	path string
	cur  atomic.Pointer[Policy]
}

// Open reads the policy file at path.
func Open(path string) (*Store, error) {
	s := &Store{path: path}
	if err := s.Reload(); err != nil {
		return nil, err
	}
	return s, nil
}

// Path is the policy file's path.
func (s *Store) Path() string { return s.path }

// Policy is the policy in force.
func (s *Store) Policy() *Policy { return s.cur.Load() }

// Reload reads the file again. On error the policy in force is kept.
func (s *Store) Reload() error {
	p, err := readFile(s.path)
	if err != nil {
		return err
	}
	s.cur.Store(p)
	return nil
}

func readFile(path string) (*Policy, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	// Whoever can write the policy can grant themselves every key.
	if fi.Mode().Perm()&0o002 != 0 {
		return nil, fmt.Errorf("policy %s: world-writable (mode %v); refusing it", path, fi.Mode().Perm())
	}
	data, err := io.ReadAll(io.LimitReader(f, maxPolicyBytes+1))
	if err != nil {
		return nil, fmt.Errorf("policy %s: %w", path, err)
	}
	p, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return p, nil
}
