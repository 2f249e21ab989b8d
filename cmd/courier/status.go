package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

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
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/v1/status", nil)
	if err != nil {
		return err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("is courier running? %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("read status: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status: %s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	if *asJSON {
		_, err := stdout.Write(body)
		return err
	}
	var st sidecar.Status
	if err := json.Unmarshal(body, &st); err != nil {
		return fmt.Errorf("decode status: %w", err)
	}
	printStatus(stdout, st)
	return nil
}

func printStatus(w io.Writer, st sidecar.Status) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "relay\t%s since %s\n", st.Relay.State, st.Relay.Since.Format(time.RFC3339))
	if st.Relay.PeerID != "" {
		fmt.Fprintf(tw, "peer ID\t%s\n", st.Relay.PeerID)
	}
	if st.Relay.LastError != "" {
		fmt.Fprintf(tw, "relay error\t%s\n", st.Relay.LastError)
	}
	fmt.Fprintf(tw, "outbox\t%s\n", joinCounts(st.Outbox))
	fmt.Fprintf(tw, "inbox\t%d pending for the node\n", st.Inbox.Pending)
	fmt.Fprintf(tw, "delivered\t%s\n", joinCounts(st.Paths))
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
	tw.Flush()
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
