//go:build !unix

package sqlitestore

import (
	"errors"
	"os"
)

func lockFile(name string) (*os.File, error) {
	return nil, errors.New("single-instance lock (flock) is only implemented on Unix systems")
}

func unlockFile(f *os.File) error { return f.Close() }
