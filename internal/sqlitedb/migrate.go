package sqlitedb

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strconv"
	"strings"
)

// ErrTooNew is wrapped by Migrate (and Open) when the database's schema
// version is higher than the migrations this program has: it was written by
// a newer version, and is refused rather than guessed at.
var ErrTooNew = errors.New("the database was written by a newer version of this program")

// Migration is one numbered schema step, migrations/NNNN_name.sql.
type Migration struct {
	Version int    // NNNN
	Name    string // the file's base name
	SQL     string
}

// LoadMigrations returns the migrations in fsys's directory migrations/ in
// order (files migrations/NNNN_name.sql). Their numbers must run 1, 2, 3…
// without gaps: the schema version (PRAGMA user_version) is the number of
// the last one applied.
func LoadMigrations(fsys fs.FS) ([]Migration, error) {
	names, err := fs.Glob(fsys, "migrations/*.sql")
	if err != nil {
		return nil, err
	}
	var ms []Migration
	for _, name := range names {
		base := path.Base(name)
		num, _, ok := strings.Cut(base, "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || v <= 0 {
			return nil, fmt.Errorf("migration %s: name must be NNNN_what.sql", base)
		}
		b, err := fs.ReadFile(fsys, name)
		if err != nil {
			return nil, fmt.Errorf("migration %s: %w", base, err)
		}
		ms = append(ms, Migration{Version: v, Name: base, SQL: string(b)})
	}
	slices.SortFunc(ms, func(a, b Migration) int { return a.Version - b.Version })
	for i, m := range ms {
		if m.Version != i+1 {
			return nil, fmt.Errorf("migration %s: want number %d (numbers run 1, 2, 3… without gaps)", m.Name, i+1)
		}
	}
	return ms, nil
}

// Migrate brings the schema of db up to date: each migration not applied
// yet runs in its own transaction together with the user_version bump that
// records it, so a crash leaves either all of a step or none of it. It
// returns the schema version the database ends at (on error, the version of
// the last step that committed).
func Migrate(ctx context.Context, db *sql.DB, ms []Migration) (int, error) {
	var current int
	if err := db.QueryRowContext(ctx, "PRAGMA user_version").Scan(&current); err != nil {
		return 0, fmt.Errorf("read schema version: %w", err)
	}
	if current > len(ms) {
		return current, fmt.Errorf("%w: schema version %d is newer than this program knows (%d)", ErrTooNew, current, len(ms))
	}
	for _, m := range ms[current:] {
		if err := apply(ctx, db, m); err != nil {
			return current, fmt.Errorf("migration %s: %w", m.Name, err)
		}
		current = m.Version
	}
	return current, nil
}

func apply(ctx context.Context, db *sql.DB, m Migration) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback() //nolint:errcheck // a no-op after Commit
	if _, err := tx.ExecContext(ctx, m.SQL); err != nil {
		return err
	}
	// PRAGMA takes no bound parameters; the version is an int we parsed.
	if _, err := tx.ExecContext(ctx, "PRAGMA user_version = "+strconv.Itoa(m.Version)); err != nil {
		return err
	}
	return tx.Commit()
}
