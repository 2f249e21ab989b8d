package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"courier/localapi/apiclient"
	"courier/sidecar"
)

// runStatus asks a running sidecar for its status and prints it for a
// person. It finds the sidecar through the same config file.
func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("courier status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "courier.toml", "the sidecar's TOML configuration `file`")
	api := fs.String("api", "", "the sidecar's API address (host:port), instead of reading it from -config")
	asJSON := fs.Bool("json", false, "print the raw JSON")
	if err := fs.Parse(args); err != nil {
		return err
	}
	addr, token := *api, ""
	if addr == "" {
		cfg, err := sidecar.LoadConfig(*configPath)
		if err != nil {
			return err
		}
		addr, token = cfg.API.Listen, cfg.API.Token
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c, err := apiclient.New(addr, apiclient.Options{Token: token})
	if err != nil {
		return err
	}
	st, err := c.Status(ctx)
	if err != nil {
		var e *apiclient.Error
		if errors.As(err, &e) {
			return fmt.Errorf("status: %w", err)
		}
		return fmt.Errorf("is courier running? %w", err)
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	}
	printStatus(stdout, st)
	return nil
}

func printStatus(w io.Writer, st apiclient.Status) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "relay\t%s since %s\n", st.Relay.State, st.Relay.Since.Format(time.RFC3339))
	if st.Relay.Proxy != "" {
		fmt.Fprintf(tw, "via proxy\t%s\n", st.Relay.Proxy)
	}
	if st.Relay.PeerID != "" {
		fmt.Fprintf(tw, "peer ID\t%s\n", st.Relay.PeerID)
	}
	if st.Relay.Identity == "anonymous" {
		fmt.Fprintf(tw, "identity\tanonymous (level 1 by subscription key; the relay does not learn the peer ID)\n")
	}
	if st.Relay.LastError != "" {
		fmt.Fprintf(tw, "relay error\t%s\n", st.Relay.LastError)
	}
	fmt.Fprintf(tw, "outbox\t%s\n", joinCounts(st.Outbox))
	fmt.Fprintf(tw, "inbox\t%d pending for the node, %d refused by it", st.Inbox.Pending, st.Inbox.Refused)
	if st.Inbox.NotForNode > 0 {
		fmt.Fprintf(tw, ", %d not for it (anonymous mode: other peers' under the same key)", st.Inbox.NotForNode)
	}
	fmt.Fprintln(tw)
	fmt.Fprintf(tw, "delivered\t%s\n", joinCounts(st.Paths))
	for i, path := range []string{"INDIRECT", "OFFLINE"} {
		label := ""
		if i == 0 {
			label = "last hour"
		}
		h := st.LastHour[path]
		if h.Delivered == 0 {
			fmt.Fprintf(tw, "%s\t%-8s  none\n", label, path)
			continue
		}
		fmt.Fprintf(tw, "%s\t%-8s  %d, p50 %s, p99 %s  %s\n", label, path, h.Delivered, fmtMs(h.P50Ms), fmtMs(h.P99Ms), sparkline(h.PerMinute))
	}
	names := make([]string, 0, len(st.Node))
	for n := range st.Node {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		h := st.Node[n]
		line := "ok"
		if h.ConsecutiveFailures > 0 {
			line = fmt.Sprintf("%d failures in a row: %s", h.ConsecutiveFailures, h.LastError)
		}
		fmt.Fprintf(tw, "node %s\t%s\n", n, line)
	}
	if len(st.Attention) == 0 {
		fmt.Fprintf(tw, "attention\tnothing needs attention\n")
	} else {
		fmt.Fprintf(tw, "attention\t%d messages:\n", len(st.Attention))
	}
	tw.Flush()
	// One line each, outside the table: reasons are long.
	for _, a := range st.Attention {
		path := a.Path
		if path == "" {
			path = "-"
		}
		fmt.Fprintf(w, "  %-8s %.12s…  %s %s, %d attempts, since %s: %s\n", a.Direction, a.ID, a.State, path, a.Attempts,
			a.Since.Format(time.RFC3339), a.Reason)
	}
}

func joinCounts[K ~string](m map[K]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, string(k))
	}
	sort.Strings(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[K(k)]))
	}
	if len(parts) == 0 {
		return "empty"
	}
	return strings.Join(parts, ", ")
}

// fmtMs prints a latency in milliseconds for a person.
func fmtMs(ms float64) string {
	switch {
	case ms < 10:
		return fmt.Sprintf("%.2f ms", ms)
	case ms < 1000:
		return fmt.Sprintf("%.0f ms", ms)
	default:
		return fmt.Sprintf("%.1f s", ms/1000)
	}
}

// sparkline draws counts per minute as a line of block characters, the
// oldest first.
func sparkline(counts []int) string {
	const bars = "▁▂▃▄▅▆▇█"
	top := 0
	for _, n := range counts {
		top = max(top, n)
	}
	var b strings.Builder
	for _, n := range counts {
		switch {
		case n == 0:
			b.WriteRune(' ')
		default:
			r := []rune(bars)
			b.WriteRune(r[min(len(r)-1, (n*len(r)-1)/top)])
		}
	}
	return "[" + b.String() + "]"
}
