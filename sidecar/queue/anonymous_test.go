package queue

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"courier/wire"
)

// MetaOrInit stores the first init and returns it ever after, across a
// close and reopen: the anonymous userID survives a restart.
func TestMetaOrInitPersists(t *testing.T) {
	path := filepath.Join(t.TempDir(), "courier.db")
	ctx := context.Background()
	q, err := Open(path, Options{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	if v, err := q.MetaOrInit(ctx, "anonymous_user_id", "first"); err != nil || v != "first" {
		t.Fatalf("first MetaOrInit = %q, %v", v, err)
	}
	if v, err := q.MetaOrInit(ctx, "anonymous_user_id", "second"); err != nil || v != "first" {
		t.Fatalf("second MetaOrInit = %q, %v; want the first value kept", v, err)
	}
	if _, err := q.MetaOrInit(ctx, "", "x"); err == nil {
		t.Error("empty key accepted")
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	q, err = Open(path, Options{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if v, err := q.MetaOrInit(ctx, "anonymous_user_id", "third"); err != nil || v != "first" {
		t.Fatalf("after reopening MetaOrInit = %q, %v; want the first value", v, err)
	}
}

// not_for_node is a state of its own: counted apart from refused, not
// listed for attention, pruned like the other finished states, never
// offered again; a polling node may still ack it.
func TestInboundNotForNode(t *testing.T) {
	q, _ := openTest(t)
	ctx := context.Background()
	var ids []string
	for i := range 3 {
		ct := ciphertext(uint64(200+i), 512)
		ids = append(ids, wire.MessageID(ct))
		if _, err := q.AddInbound(ctx, ids[i], ct, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	if err := q.MarkInboundNotForNode(ctx, ids[0], "node answered 400"); err != nil {
		t.Fatal(err)
	}
	if err := q.MarkInboundNotForNode(ctx, ids[1], "node answered 400"); err != nil {
		t.Fatal(err)
	}
	if m, _ := q.GetInbound(ctx, ids[0]); m.State != InboxNotForNode || m.Attempts != 1 || m.LastError != "node answered 400" || m.DeliveredAt.IsZero() {
		t.Errorf("not_for_node: %+v", m)
	}
	if err := q.MarkInboundRefused(ctx, ids[0], "late"); err != nil {
		t.Fatal(err)
	}
	if m, _ := q.GetInbound(ctx, ids[0]); m.State != InboxNotForNode {
		t.Errorf("a not_for_node message became %s", m.State)
	}
	if err := q.MarkInboundDelivered(ctx, ids[1]); err != nil {
		t.Fatal(err)
	}
	c, err := q.Counts(ctx)
	if err != nil || c.InboxPending != 1 || c.InboxDelivered != 1 || c.InboxRefused != 0 || c.InboxNotForNode != 1 {
		t.Errorf("Counts = %+v, %v", c, err)
	}
	if p, err := q.PendingInbound(ctx, farFutureTest, 0, 10); err != nil || len(p) != 1 || p[0].ID != ids[2] {
		t.Errorf("PendingInbound = %v, %v; want only the pending one", p, err)
	}
	a, err := q.Attention(ctx, time.Now().Add(time.Hour), 10)
	if err != nil || len(a.Refused) != 0 {
		t.Errorf("Attention refused = %v, %v; want none", a.Refused, err)
	}
	if _, in, err := q.Prune(ctx, time.Now().Add(time.Second)); err != nil || in != 2 {
		t.Errorf("Prune inbox = %d, %v; want the not_for_node and the delivered one", in, err)
	}
}

var farFutureTest = time.Now().Add(100 * 365 * 24 * time.Hour)

// A not_for_node message keeps its ID (a redelivery is recognised) but not
// its ciphertext: the node cannot open it and it is never offered again,
// so other peers' messages flooding a shared key cost the disk an ID
// each until they are pruned, not their size.
func TestNotForNodeDropsCiphertext(t *testing.T) {
	q, _ := openTest(t)
	ctx := context.Background()
	ct := ciphertext(300, 64<<10)
	id := wire.MessageID(ct)
	if _, err := q.AddInbound(ctx, id, ct, time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := q.MarkInboundNotForNode(ctx, id, "node answered 400"); err != nil {
		t.Fatal(err)
	}
	m, err := q.GetInbound(ctx, id)
	if err != nil || m.State != InboxNotForNode || len(m.Ciphertext) != 0 {
		t.Errorf("not_for_node message: state %s, %d bytes of ciphertext, %v; want none kept", m.State, len(m.Ciphertext), err)
	}
	if created, err := q.AddInbound(ctx, id, ct, time.Now()); err != nil || created {
		t.Errorf("redelivered: created %v, %v; want it recognised", created, err)
	}
	if err := q.MarkInboundDelivered(ctx, id); err != nil { // a polling node's ack
		t.Fatal(err)
	}
}
