//go:build !unix

package sqlitedb

import (
	"errors"
	"os"
)

// Lock is only implemented on Unix systems.
func Lock(name string) (*os.File, error) {
	return nil, errors.New("single-instance lock (flock) is only implemented on Unix systems")
}

// Unlock closes f.
func Unlock(f *os.File) error { return f.Close() }
