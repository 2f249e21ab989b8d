package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"courier/internal/browsertest"
)

// TestDemo runs the demo as `make demo` does, with each kind of light
// client, and checks what it says happened and that it leaves no process
// of its own running.
func TestDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the demo builds the binaries and runs them")
	}
	kinds := []string{"scripted"}
	if browsertest.FindChromium() != "" {
		kinds = append(kinds, "browser")
	} else {
		t.Log("chromium not installed: only the scripted light client")
	}
	for _, kind := range kinds {
		t.Run(kind, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			var out bytes.Buffer
			start := time.Now()
			err := run(ctx, &out, kind)
			took := time.Since(start)
			t.Logf("the demo took %s:\n%s", took.Round(100*time.Millisecond), out.String())
			if err != nil {
				t.Fatal(err)
			}
			text := out.String()
			for _, want := range []string{
				"path INDIRECT: relay → sidecar B → node B; state delivered",
				"path OFFLINE: sidecar A handed it to node A's own OFFLINE endpoint",
				"node B received \"Are you there?\" at once",
				"the relay answered delivered after",
				"the relay answered offline after",
				"path OFFLINE: node C found it at its next poll",
				"node C opened it: \"Hi C, from a light client. Do you still sell the lamp?\"",
				"to node B (runs Courier): INDIRECT",
				"Stopped every process the demo started.",
			} {
				if !strings.Contains(text, want) {
					t.Errorf("the demo did not say %q", want)
				}
			}
			if kind == "browser" && !strings.Contains(text, "in headless Chromium") {
				t.Errorf("the browser demo does not say it used Chromium")
			}
			dir := regexp.MustCompile(`/[^ ]*courier-demo-[0-9]+`).FindString(text)
			if dir == "" {
				t.Fatal("the demo did not say where its files were")
			}
			if _, err := os.Stat(dir); !os.IsNotExist(err) {
				t.Errorf("the demo left %s behind (%v)", dir, err)
			}
			// Chromium's helpers may take a moment to exit after the browser.
			deadline := time.Now().Add(15 * time.Second)
			for {
				left := processesMentioning(t, dir)
				if len(left) == 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("still running after the demo: %q", left)
				}
				time.Sleep(100 * time.Millisecond)
			}
		})
	}
}

// processesMentioning lists the command lines, from /proc, that contain s.
func processesMentioning(t *testing.T, s string) []string {
	t.Helper()
	paths, err := filepath.Glob("/proc/[0-9]*/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) == 0 {
		t.Skip("no /proc here: cannot list processes")
	}
	var out []string
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // gone meanwhile
		}
		if cmd := string(bytes.ReplaceAll(b, []byte{0}, []byte{' '})); strings.Contains(cmd, s) {
			out = append(out, cmd)
		}
	}
	return out
}
