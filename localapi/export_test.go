package localapi

// LongPolls is how many GET /v1/inbox?wait= requests are in progress.
func (s *Server) LongPolls() int { return int(s.waiting.Load()) }
