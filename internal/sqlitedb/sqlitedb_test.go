package sqlitedb

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"
	"time"
)

// schema is a two-step schema; step 2 depends on step 1 having run first.
var schema = fstest.MapFS{
	"migrations/0001_a.sql": {Data: []byte("CREATE TABLE a (x INTEGER PRIMARY KEY);")},
	"migrations/0002_b.sql": {Data: []byte("CREATE TABLE b (x INTEGER REFERENCES a(x)); INSERT INTO a VALUES (1);")},
}

func openTest(t *testing.T, path string, o Options) *DB {
	t.Helper()
	if o.Migrations == nil {
		o.Migrations = schema
	}
	db, err := Open(context.Background(), path, o)
	if err != nil {
		t.Fatalf("Open %s: %v", path, err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func userVersion(t *testing.T, db *DB) int {
	t.Helper()
	var v int
	if err := db.W.QueryRow("PRAGMA user_version").Scan(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

func TestMigrationsAppliedOnceInOrder(t *testing.T) {
	path := filepath.Join(t.TempDir(), "t.db")
	db := openTest(t, path, Options{})
	if db.FromVersion != 0 || db.Version != 2 || userVersion(t, db) != 2 {
		t.Fatalf("first Open: from %d to %d, user_version %d; want 0 to 2", db.FromVersion, db.Version, userVersion(t, db))
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	// A second Open applies nothing: step 2's INSERT would fail on a
	// duplicate key if it ran again.
	db = openTest(t, path, Options{})
	if db.FromVersion != 2 || db.Version != 2 {
		t.Fatalf("second Open: from %d to %d, want 2 to 2", db.FromVersion, db.Version)
	}
	// A third step is applied alone, on top.
	db.Close()
	more := fstest.MapFS{"migrations/0003_c.sql": {Data: []byte("INSERT INTO a VALUES (2);")}}
	for k, v := range schema {
		more[k] = v
	}
	db = openTest(t, path, Options{Migrations: more})
	var n int
	if err := db.R.QueryRow("SELECT count(*) FROM a").Scan(&n); err != nil || n != 2 || db.Version != 3 {
		t.Fatalf("after step 3: %d rows in a (%v), version %d; want 2, 3", n, err, db.Version)
	}
}

func TestLoadMigrations(t *testing.T) {
	for _, tt := range []struct {
		name string
		fs   fstest.MapFS
		want string // "" = accepted
	}{
		{"in order", fstest.MapFS{"migrations/0002_b.sql": {}, "migrations/0001_a.sql": {}}, ""},
		{"gap", fstest.MapFS{"migrations/0001_a.sql": {}, "migrations/0003_c.sql": {}}, "0003_c.sql"},
		{"no number", fstest.MapFS{"migrations/init.sql": {}}, "init.sql"},
		{"zero", fstest.MapFS{"migrations/0000_a.sql": {}}, "0000_a.sql"},
		{"duplicate", fstest.MapFS{"migrations/0001_a.sql": {}, "migrations/0001_b.sql": {}}, "0001_"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ms, err := LoadMigrations(tt.fs)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("LoadMigrations: %v", err)
			case tt.want == "":
				if len(ms) != 2 || ms[0].Name != "0001_a.sql" || ms[1].Version != 2 {
					t.Errorf("LoadMigrations = %+v, want 0001_a then 0002_b", ms)
				}
			case err == nil || !strings.Contains(err.Error(), tt.want):
				t.Errorf("LoadMigrations = %v, want an error naming %s", err, tt.want)
			}
		})
	}
}

// TestFailingMigrationRollsBack: a step that fails half-way leaves neither
// its statements nor its version behind, and Open says which step failed.
func TestFailingMigrationRollsBack(t *testing.T) {
	path := filepath.Join(t.TempDir(), "t.db")
	db := openTest(t, path, Options{})
	db.Close()
	broken := fstest.MapFS{"migrations/0003_broken.sql": {Data: []byte("CREATE TABLE half (x); INSERT INTO no_such_table VALUES (1);")}}
	for k, v := range schema {
		broken[k] = v
	}
	if _, err := Open(context.Background(), path, Options{Migrations: broken}); err == nil || !strings.Contains(err.Error(), "0003_broken.sql") {
		t.Fatalf("Open with a broken step: %v, want an error naming 0003_broken.sql", err)
	}
	// The failed Open released the lock; the database is at version 2.
	db = openTest(t, path, Options{})
	var n int
	if err := db.W.QueryRow("SELECT count(*) FROM sqlite_schema WHERE name = 'half'").Scan(&n); err != nil || n != 0 {
		t.Errorf("table of the failed migration exists: %d, %v", n, err)
	}
	if v := userVersion(t, db); v != 2 {
		t.Errorf("user_version = %d, want 2", v)
	}
	// Migrate itself reports the version it stopped at.
	ms, err := LoadMigrations(broken)
	if err != nil {
		t.Fatal(err)
	}
	if v, err := Migrate(context.Background(), db.W, ms); err == nil || v != 2 {
		t.Errorf("Migrate = %d, %v; want 2 and an error", v, err)
	}
}

func TestNewerSchemaRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "t.db")
	db := openTest(t, path, Options{})
	if _, err := db.W.Exec("PRAGMA user_version = 9"); err != nil {
		t.Fatal(err)
	}
	db.Close()
	_, err := Open(context.Background(), path, Options{Migrations: schema})
	if !errors.Is(err, ErrTooNew) || !strings.Contains(err.Error(), "9") {
		t.Fatalf("Open of a newer schema = %v, want ErrTooNew naming version 9", err)
	}
}

func TestLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "t.db")
	db := openTest(t, path, Options{})
	_, err := Open(context.Background(), path, Options{Migrations: schema})
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), path+".lock") {
		t.Fatalf("second Open = %v, want ErrLocked naming %s.lock", err, path)
	}
	// The first one is unharmed, and after Close the file opens again.
	if _, err := db.W.Exec("INSERT INTO a VALUES (5)"); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	openTest(t, path, Options{})
	// A bare Lock of a held lock file fails the same way.
	f, err := Lock(path + ".lock")
	if !errors.Is(err, ErrLocked) {
		if f != nil {
			Unlock(f)
		}
		t.Fatalf("Lock of a held file = %v, want ErrLocked", err)
	}
}

func TestPragmas(t *testing.T) {
	for _, tt := range []struct {
		name string
		o    Options
		sync string
		busy time.Duration
		jsl  string
	}{
		{"defaults", Options{}, "2", DefaultBusyTimeout, "-1"},
		{"full", Options{Synchronous: "full"}, "2", DefaultBusyTimeout, "-1"},
		{"normal", Options{Synchronous: "NORMAL", BusyTimeout: 750 * time.Millisecond, JournalSizeLimit: 1 << 20}, "1", 750 * time.Millisecond, fmt.Sprint(1 << 20)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			db := openTest(t, filepath.Join(t.TempDir(), "t.db"), tt.o)
			for _, p := range []struct{ pragma, want string }{
				{"journal_mode", "wal"},
				{"synchronous", tt.sync},
				{"foreign_keys", "1"},
				{"busy_timeout", fmt.Sprint(tt.busy.Milliseconds())},
				{"journal_size_limit", tt.jsl},
			} {
				var got string
				if err := db.W.QueryRow("PRAGMA " + p.pragma).Scan(&got); err != nil {
					t.Fatal(err)
				}
				if got != p.want {
					t.Errorf("writer PRAGMA %s = %s, want %s", p.pragma, got, p.want)
				}
			}
			var busy int64
			if err := db.R.QueryRow("PRAGMA busy_timeout").Scan(&busy); err != nil || busy != tt.busy.Milliseconds() {
				t.Errorf("reader busy_timeout = %d, %v", busy, err)
			}
			// Foreign keys are enforced on the writer.
			if _, err := db.W.Exec("INSERT INTO b VALUES (42)"); err == nil {
				t.Errorf("a dangling foreign key was accepted")
			}
			if _, err := db.R.Exec("INSERT INTO a VALUES (3)"); err == nil {
				t.Errorf("the read pool can write")
			}
		})
	}
}

func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	for _, tt := range []struct {
		name string
		path string
		o    Options
		want string
	}{
		{"synchronous", filepath.Join(dir, "a.db"), Options{Synchronous: "off", Migrations: schema}, "synchronous"},
		{"no migrations", filepath.Join(dir, "b.db"), Options{}, "migrations"},
		{"missing directory", filepath.Join(dir, "no", "such", "c.db"), Options{Migrations: schema}, "no/such/c.db"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if db, err := Open(context.Background(), tt.path, tt.o); err == nil || !strings.Contains(err.Error(), tt.want) {
				if db != nil {
					db.Close()
				}
				t.Errorf("Open = %v, want an error naming %q", err, tt.want)
			}
		})
	}
}

func TestPathNeedingEscapesAndPrivate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a?b#c%20d.db")
	db := openTest(t, path, Options{Private: true})
	if _, err := db.W.Exec("INSERT INTO a VALUES (7)"); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{path, path + "-wal", path + "-shm", path + ".lock"} {
		fi, err := os.Stat(name)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if fi.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s has mode %v, want readable by its owner only", name, fi.Mode())
		}
	}
}
