package relay

import "time"

// SetClock replaces the server's clock (nonce expiry, TTL sweep cutoff).
func SetClock(s *Server, now func() time.Time) { s.clock.Store(&now) }

// Sweep runs one TTL sweep now.
func Sweep(s *Server) { s.sweep() }
