// Package browsertest runs real headless Chromium for tests, through the
// Chrome DevTools Protocol (chromedp), and loads Courier's light client
// page in it. Tests skip with a clear message where chromium is absent;
// the demo uses Launch too.
package browsertest

import (
	"context"
	"encoding/json"
	"os/exec"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// New starts a headless Chromium with a fresh profile and returns a
// chromedp context for one tab, valid for at most timeout. The browser is
// stopped, and waited for, when the test ends.
func New(t testing.TB, timeout time.Duration) context.Context {
	t.Helper()
	execPath := FindChromium()
	if execPath == "" {
		t.Skip("chromium not installed: apt-get install chromium")
	}
	profile := t.TempDir() // registered first, so removed after the browser stopped

	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	tabCtx, stop := Launch(ctx, execPath, profile)
	t.Cleanup(func() {
		stop()
		cancel()
	})
	return tabCtx
}

// FindChromium returns the path of a Chromium (or Chrome) on PATH, or ""
// where there is none.
func FindChromium() string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

// Launch prepares headless Chromium at execPath with its profile in
// profileDir and returns a chromedp context for one tab, for programs
// other than tests (the demo). The browser starts at the first action run
// on the tab and lives at most as long as ctx. stop closes it and waits
// for its process to exit; call it before removing profileDir.
func Launch(ctx context.Context, execPath, profileDir string) (tab context.Context, stop func()) {
	allocCtx, allocCancel := chromedp.NewExecAllocator(ctx,
		chromedp.ExecPath(execPath),
		chromedp.Headless,
		chromedp.NoSandbox, // the tests run as root in CI
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		// This machine's network is closed: without these Chromium keeps
		// trying to reach Google's services.
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(profileDir),
		chromedp.WindowSize(1100, 900),
	)
	tabCtx, tabCancel := chromedp.NewContext(allocCtx)
	return tabCtx, func() {
		tabCancel()   // closes the browser gracefully
		allocCancel() // waits for the process to exit
	}
}

// OpenClient loads the light client page at baseURL+"/client/" and waits
// until its module has run (window.courier.ready).
func OpenClient(t testing.TB, ctx context.Context, baseURL string) {
	t.Helper()
	err := chromedp.Do(ctx,
		chromedp.Navigate(baseURL+"/client/"),
		Poll(`window.courier && window.courier.ready`),
	)
	if err != nil {
		t.Fatalf("open %s/client/: %v", baseURL, err)
	}
}

// Poll waits, in the page, until the JavaScript expression is truthy.
func Poll(expr string) chromedp.Action[chromedp.Void] {
	return chromedp.Poll[chromedp.Void](expr, chromedp.WithPollingInterval(20*time.Millisecond), chromedp.WithPollingTimeout(20*time.Second))
}

// Eval evaluates a JavaScript expression in the page, awaiting a promise,
// and decodes its JSON value into T.
func Eval[T any](t testing.TB, ctx context.Context, expr string) T {
	t.Helper()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr, chromedp.EvalAwaitPromise))
	if err != nil {
		t.Fatalf("evaluate %.120s: %v", expr, err)
	}
	return v
}

// JS encodes v as a JavaScript literal.
func JS(t testing.TB, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// NewTab opens another tab in the browser of ctx (a context from New, on
// which something has run already, so that the browser is up): a second
// page with its own window.courier, as a second person in the same browser
// would have. The tab is closed when the test ends, before the browser.
func NewTab(t testing.TB, ctx context.Context) context.Context {
	t.Helper()
	tabCtx, cancel := chromedp.NewContext(ctx)
	t.Cleanup(cancel) // runs before New's cleanup: tabs close before the browser
	return tabCtx
}
