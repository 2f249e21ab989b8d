package relay

import "time"

// SetClock replaces the server's clock (nonce expiry, TTL sweep cutoff).
func SetClock(s *Server, now func() time.Time) { s.clock.Store(&now) }

// Sweep runs one TTL sweep now.
func Sweep(s *Server) { s.sweep() }

// PeerConnected reports whether the hub holds an authenticated connection
// of the peer (canonical peer ID).
func PeerConnected(s *Server, peer string) bool { return s.hub.peerConnected(peer) }

// AnySubscriber reports whether the hub holds a level-1 subscriber of key.
func AnySubscriber(s *Server, key string) bool {
	s.hub.mu.RLock()
	defer s.hub.mu.RUnlock()
	return len(s.hub.byKey[key]) > 0
}
