package oauth2upstream

import (
	"slices"
	"sync"
)

// liveSet is the modules of one kind that are live in the process, between
// their Provision and their Cleanup, in the order they were provisioned.
// Caddy provisions a new config before it cleans up the old one, so during
// a reload the modules of both configs are in it.
type liveSet[T comparable] struct {
	mu      sync.Mutex // guards modules
	modules []T
}

// add puts m in the set, once.
func (s *liveSet[T]) add(m T) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !slices.Contains(s.modules, m) {
		s.modules = append(s.modules, m)
	}
}

// remove takes m out of the set.
func (s *liveSet[T]) remove(m T) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.modules = slices.DeleteFunc(s.modules, func(x T) bool { return x == m })
}

// all returns a snapshot of the set.
func (s *liveSet[T]) all() []T {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.modules)
}
