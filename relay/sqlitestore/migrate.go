package sqlitestore

import "embed"

// migrationFS holds the schema, migrations/NNNN_name.sql, applied by
// sqlitedb.Open each in its own transaction and recorded in PRAGMA
// user_version.
//
//go:embed migrations/*.sql
var migrationFS embed.FS
