package devnode

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"

	"courier/wire"
)

// OfflineStore is the simulated OFFLINE network: a stand-in for
// OpenBazaar's native OFFLINE path (ciphertext stored in IPFS, a pointer
// in the DHT) that devnodes of one demo or test share. An OFFLINE publish
// (POST /courier/offline on a devnode given the store) puts the ciphertext
// into it; each recipient devnode polls it for its own peer ID at an
// interval, as openbazaar-go polls its push nodes and the DHT, so the
// message arrives with the OFFLINE path's real delay, whether the sender
// was a node's sidecar or a relay's OFFLINE bridge.
//
// It is a directory on disk, <dir>/<recipient Qm… peer ID>/<message ID>:
// the simplest real shared store. Several devnode processes share it by
// path, with no extra service to start or stop; a file appears whole
// (written aside, synced, renamed into place), so a poll never reads a
// half-written message; and what is in it survives a restart of any node,
// as a DHT record outlives its publisher. A message ID names its file, so
// publishing the same ciphertext twice while it waits stores it once.
type OfflineStore struct {
	dir string
}

// OpenOfflineStore opens (creating it if needed) the store in dir.
func OpenOfflineStore(dir string) (*OfflineStore, error) {
	if dir == "" {
		return nil, errors.New("offline store: no directory given")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("offline store: %w", err)
	}
	return &OfflineStore{dir: dir}, nil
}

// Dir is the store's directory.
func (s *OfflineStore) Dir() string { return s.dir }

// peerDir is the directory of a recipient, named by its canonical (Qm…)
// peer ID so that both forms of one peer's ID meet in one place.
func (s *OfflineStore) peerDir(recipient string) (string, error) {
	p, err := wire.ParsePeerID(recipient)
	if err != nil {
		return "", fmt.Errorf("recipient: %w", err)
	}
	return filepath.Join(s.dir, p.Canonical()), nil
}

// Publish stores ciphertext for recipient and returns its message ID. The
// message is durable in the store when Publish returns nil.
func (s *OfflineStore) Publish(recipient string, ciphertext []byte) (string, error) {
	dir, err := s.peerDir(recipient)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("offline store: %w", err)
	}
	id := wire.MessageID(ciphertext)
	final := filepath.Join(dir, id)
	tmp, err := os.CreateTemp(dir, ".publish-*")
	if err != nil {
		return "", fmt.Errorf("offline store: %w", err)
	}
	defer os.Remove(tmp.Name()) // after the rename, a no-op
	if _, err := tmp.Write(ciphertext); err != nil {
		tmp.Close()
		return "", fmt.Errorf("offline store: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return "", fmt.Errorf("offline store: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return "", fmt.Errorf("offline store: %w", err)
	}
	if err := os.Rename(tmp.Name(), final); err != nil {
		return "", fmt.Errorf("offline store: %w", err)
	}
	return id, nil
}

// StoredOffline is one message waiting in the store.
type StoredOffline struct {
	ID          string
	Ciphertext  []byte
	PublishedAt time.Time // when it was put into the store
}

// maxStoredOffline bounds what one poll reads, so that a flooded store costs
// a poll bounded memory; the rest waits for the next poll.
const maxStoredOffline = 1000

// Fetch returns up to maxStoredOffline messages waiting for recipient,
// oldest first. Files whose name is not a message ID, or whose content
// does not hash to it, are skipped (and left alone).
func (s *OfflineStore) Fetch(recipient string, maxBytes int64) ([]StoredOffline, error) {
	dir, err := s.peerDir(recipient)
	if err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("offline store: %w", err)
	}
	var out []StoredOffline
	for _, e := range entries {
		if !e.Type().IsRegular() || !wire.ValidMessageID(e.Name()) {
			continue
		}
		info, err := e.Info()
		if err != nil || info.Size() > maxBytes {
			continue // removed under us, or more than a node takes
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil || wire.MessageID(b) != e.Name() {
			continue
		}
		out = append(out, StoredOffline{ID: e.Name(), Ciphertext: b, PublishedAt: info.ModTime()})
		if len(out) == maxStoredOffline {
			break
		}
	}
	slices.SortStableFunc(out, func(a, b StoredOffline) int { return a.PublishedAt.Compare(b.PublishedAt) })
	return out, nil
}

// Remove deletes a message the recipient has taken, as openbazaar-go's
// OFFLINE_ACK lets the sender's copy go. A message already gone is fine.
func (s *OfflineStore) Remove(recipient, id string) error {
	dir, err := s.peerDir(recipient)
	if err != nil {
		return err
	}
	if !wire.ValidMessageID(id) {
		return fmt.Errorf("offline store: %q is not a message ID", id)
	}
	if err := os.Remove(filepath.Join(dir, id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("offline store: %w", err)
	}
	return nil
}

// Pending reports whether a message for recipient is in the store.
func (s *OfflineStore) Pending(recipient, id string) bool {
	dir, err := s.peerDir(recipient)
	if err != nil || !wire.ValidMessageID(id) {
		return false
	}
	b, err := os.ReadFile(filepath.Join(dir, id))
	return err == nil && bytes.Equal([]byte(wire.MessageID(b)), []byte(id))
}
