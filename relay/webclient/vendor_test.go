package webclient_test

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io/fs"
	"os"
	"path"
	"strings"
	"testing"

	"courier/relay/webclient"
)

// vendorTooling are the files in vendor/ that are not vendored code.
var vendorTooling = map[string]bool{
	"MANIFEST": true, "package.json": true, "package-lock.json": true, "update.sh": true, "collect.mjs": true,
}

// TestVendorManifest checks the vendored libraries, as embedded, against
// vendor/MANIFEST (written by vendor/update.sh from an npm ci of the lock
// file): every file listed, with its sha256, nothing else, and each from
// the version package.json pins and package-lock.json locks.
func TestVendorManifest(t *testing.T) {
	f, err := os.Open("vendor/MANIFEST")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var lock struct {
		Packages map[string]struct {
			Version   string `json:"version"`
			Integrity string `json:"integrity"`
		} `json:"packages"`
	}
	var pkg struct {
		Dependencies map[string]string `json:"dependencies"`
	}
	for name, v := range map[string]any{"vendor/package-lock.json": &lock, "vendor/package.json": &pkg} {
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(b, v); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	for name, want := range pkg.Dependencies {
		got := lock.Packages["node_modules/"+name]
		if got.Version != want || !strings.HasPrefix(got.Integrity, "sha512-") {
			t.Errorf("package.json pins %s %s; the lock has %q (integrity %q)", name, want, got.Version, got.Integrity)
		}
	}

	listed := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) != 3 {
			t.Fatalf("MANIFEST line %q: want <sha256> <path> <package>@<version>", sc.Text())
		}
		sum, p, from := fields[0], fields[1], fields[2]
		listed[p] = true
		b, err := fs.ReadFile(webclient.FS(), path.Join("vendor", p))
		if err != nil {
			t.Errorf("%s is in MANIFEST but not embedded: %v", p, err)
			continue
		}
		got := sha256.Sum256(b)
		if hex.EncodeToString(got[:]) != sum {
			t.Errorf("%s: sha256 %x, MANIFEST says %s: run relay/webclient/vendor/update.sh", p, got, sum)
		}
		name, version, _ := strings.Cut(from[1:], "@")
		name = from[:1] + name
		if !strings.HasPrefix(p, name+"/") || pkg.Dependencies[name] != version {
			t.Errorf("%s: from %s, but package.json pins %s %q", p, from, name, pkg.Dependencies[name])
		}
	}
	if len(listed) == 0 {
		t.Fatal("MANIFEST lists nothing")
	}
	err = fs.WalkDir(webclient.FS(), "vendor", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel := strings.TrimPrefix(p, "vendor/")
		if !listed[rel] && !vendorTooling[rel] {
			t.Errorf("%s is embedded but not in MANIFEST", p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
