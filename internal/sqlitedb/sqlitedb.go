// Package sqlitedb is the SQLite plumbing that the relay's store
// (relay/sqlitestore) and the sidecar's queue (sidecar/queue) share:
// opening one database file in WAL mode with the standard pragmas as one
// writer connection and a pool of read-only connections, the single-process
// lock beside the file, and numbered schema migrations embedded in the
// program. It holds no domain code: each store keeps its own schema,
// statements and group-commit writer.
package sqlitedb

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	_ "github.com/mattn/go-sqlite3" // registers the "sqlite3" driver
)

// ErrLocked is wrapped by Lock (and Open) when another process (or another
// Open in this one) holds the lock file.
var ErrLocked = errors.New("database locked")

// DefaultBusyTimeout is how long a connection waits for a lock held by
// another connection before its statement fails with SQLITE_BUSY.
const DefaultBusyTimeout = 5 * time.Second

// Options configures Open. The zero value is usable except for Migrations.
type Options struct {
	// Synchronous is SQLite's synchronous setting, "FULL" (the default; a
	// commit survives a power cut) or "NORMAL" (a commit survives a crash of
	// the process, not of the machine). Case does not matter.
	Synchronous string
	// BusyTimeout is every connection's busy_timeout. Default
	// DefaultBusyTimeout.
	BusyTimeout time.Duration
	// JournalSizeLimit, if positive, is the writer's journal_size_limit in
	// bytes: the size the WAL is truncated to after a checkpoint empties it.
	JournalSizeLimit int64
	// Migrations holds the schema as migrations/NNNN_name.sql; see
	// LoadMigrations.
	Migrations fs.FS
	// ReadConns is the size of the read pool. Default 4.
	ReadConns int
	// WriterParams and ReaderParams are extra go-sqlite3 DSN parameters
	// (such as "_stmt_cache_size=32") for the writer and the read pool.
	WriterParams, ReaderParams []string
	// Private creates a missing database file readable by its owner only
	// (SQLite gives its -wal and -shm files the same mode) and syncs the
	// directory so the new entry is durable.
	Private bool
}

// DB is an open database: W is its one writer connection, R its pool of
// read-only connections. Create it with Open; Close releases everything.
type DB struct {
	Path string  // as given to Open
	W    *sql.DB // exactly one connection; the only one that writes
	R    *sql.DB // read-only (mode=ro) connections, beside the writer (WAL)
	// FromVersion is the schema version found on opening, Version the one
	// after the migrations; Version-FromVersion migrations were applied.
	FromVersion, Version int

	lock *os.File
}

// Open takes the lock on path+".lock" (failing with an error wrapping
// ErrLocked and naming that file if another process holds it), opens the
// database at path (creating it if need be) in WAL mode, applies the
// migrations not applied yet and opens the read pool. On error everything
// opened is released again.
func Open(ctx context.Context, path string, o Options) (*DB, error) {
	var syncMode string
	switch strings.ToUpper(o.Synchronous) {
	case "", "FULL":
		syncMode = "FULL"
	case "NORMAL":
		syncMode = "NORMAL"
	default:
		return nil, fmt.Errorf("synchronous %q: want \"full\" or \"normal\"", o.Synchronous)
	}
	if o.BusyTimeout <= 0 {
		o.BusyTimeout = DefaultBusyTimeout
	}
	if o.ReadConns <= 0 {
		o.ReadConns = 4
	}
	if o.Migrations == nil {
		return nil, errors.New("no migrations given")
	}
	ms, err := LoadMigrations(o.Migrations)
	if err != nil {
		return nil, err
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	db := &DB{Path: path}
	if db.lock, err = Lock(abs + ".lock"); err != nil {
		return nil, err
	}
	if err := db.open(ctx, abs, syncMode, o, ms); err != nil {
		db.Close()
		return nil, err
	}
	return db, nil
}

func (db *DB) open(ctx context.Context, abs, syncMode string, o Options, ms []Migration) error {
	if o.Private {
		if err := createPrivate(abs); err != nil {
			return err
		}
	}
	busy := fmt.Sprintf("_busy_timeout=%d", o.BusyTimeout.Milliseconds())
	var err error
	db.W, err = sql.Open("sqlite3", dsn(abs, append([]string{
		"_journal_mode=WAL",
		"_synchronous=" + syncMode,
		busy,
		"_foreign_keys=1",
		"_txlock=immediate",
	}, o.WriterParams...)...))
	if err != nil {
		return err
	}
	db.W.SetMaxOpenConns(1)
	db.W.SetMaxIdleConns(1)
	db.W.SetConnMaxIdleTime(0)
	db.W.SetConnMaxLifetime(0)

	var mode string
	if err := db.W.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
		return err
	}
	if !strings.EqualFold(mode, "wal") {
		return fmt.Errorf("journal_mode is %q, not WAL: does the file system support shared memory?", mode)
	}
	if err := db.W.QueryRowContext(ctx, "PRAGMA user_version").Scan(&db.FromVersion); err != nil {
		return fmt.Errorf("read schema version: %w", err)
	}
	if db.Version, err = Migrate(ctx, db.W, ms); err != nil {
		return err
	}
	if o.JournalSizeLimit > 0 {
		if _, err := db.W.ExecContext(ctx, fmt.Sprintf("PRAGMA journal_size_limit = %d", o.JournalSizeLimit)); err != nil {
			return fmt.Errorf("set journal_size_limit: %w", err)
		}
	}

	// mode=ro: these connections can never write, whatever a bug asks of them.
	db.R, err = sql.Open("sqlite3", dsn(abs, append([]string{"mode=ro", busy}, o.ReaderParams...)...))
	if err != nil {
		return err
	}
	db.R.SetMaxOpenConns(o.ReadConns)
	db.R.SetMaxIdleConns(o.ReadConns)
	if err := db.R.PingContext(ctx); err != nil {
		return fmt.Errorf("read pool: %w", err)
	}
	return nil
}

// Close closes the read pool and the writer (closing the last connection
// checkpoints the WAL into the database) and releases the lock. Prepared
// statements on W must be closed first.
func (db *DB) Close() error {
	var errs []error
	if db.R != nil {
		errs = append(errs, db.R.Close())
	}
	if db.W != nil {
		errs = append(errs, db.W.Close())
	}
	if db.lock != nil {
		errs = append(errs, Unlock(db.lock))
		db.lock = nil
	}
	return errors.Join(errs...)
}

// dsn builds a go-sqlite3 URI for the absolute path abs. The characters a
// URI would misread ('?', '#', '%') are escaped, so they cannot be mistaken
// for the start of the parameters.
func dsn(abs string, params ...string) string {
	esc := strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23")
	return "file:" + esc.Replace(abs) + "?" + strings.Join(params, "&")
}

// createPrivate creates path, if it does not exist, readable by its owner
// only, and makes the new directory entry durable.
func createPrivate(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	dir, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer dir.Close()
	if err := dir.Sync(); err != nil {
		return fmt.Errorf("sync directory: %w", err)
	}
	return nil
}
