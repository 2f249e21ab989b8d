package relay

import (
	"context"
	"errors"
	"sync"

	"github.com/coder/websocket"
)

// frameKind tells the writer what a queued frame is, for metrics.
type frameKind uint8

const (
	frameControl frameKind = iota // answers, errors, challenges, results
	frameLive                     // a live delivery
	frameReplay                   // a delivery from the replay
)

type outFrame struct {
	b    []byte
	kind frameKind
}

// closeRequest asks the writer to end the connection.
type closeRequest struct {
	code   websocket.StatusCode
	reason string
	flush  bool // write what is queued first
}

var (
	errQueueFull   = errors.New("send queue full")
	errQueueClosed = errors.New("connection closing")
)

// sendQueue is the bounded queue between a connection's producers (reader,
// processor, replay, other connections' publishes) and its one writer. It
// holds nothing while idle: idle connections are cheap.
type sendQueue struct {
	maxFrames, maxBytes int

	mu     sync.Mutex
	frames []outFrame
	bytes  int
	close  *closeRequest // set once

	notify chan struct{} // cap 1: frames or a close request are waiting
	space  chan struct{} // cap 1: the writer took frames
}

func newSendQueue(maxFrames, maxBytes int) *sendQueue {
	return &sendQueue{
		maxFrames: maxFrames,
		maxBytes:  maxBytes,
		notify:    make(chan struct{}, 1),
		space:     make(chan struct{}, 1),
	}
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// push queues f, or fails with errQueueFull without waiting. A frame always
// fits an empty queue, however large.
func (q *sendQueue) push(f outFrame) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.pushLocked(f)
}

func (q *sendQueue) pushLocked(f outFrame) error {
	if q.close != nil {
		return errQueueClosed
	}
	if len(q.frames) > 0 && (len(q.frames) >= q.maxFrames || q.bytes+len(f.b) > q.maxBytes) {
		return errQueueFull
	}
	q.frames = append(q.frames, f)
	q.bytes += len(f.b)
	signal(q.notify)
	return nil
}

// pushWait queues f, waiting for room.
func (q *sendQueue) pushWait(ctx context.Context, f outFrame) error {
	return q.pushWaitBelow(ctx, f, q.maxFrames, q.maxBytes)
}

// pushReplay queues a frame of the replay, waiting until the queue is
// below its low-water mark: half its frames and a quarter of its bytes.
// The replay never fills the queue itself, so the room above the mark is
// kept for the connection's answers (PublishResult, errors) and for live
// pushes, and an answer waits behind half a queue at most, never behind
// the whole replay.
//
// The frame is built by build once there is room for size bytes, so that
// a replay waiting for a slow client holds the message, not its frame too.
func (q *sendQueue) pushReplay(ctx context.Context, size int, build func() outFrame) error {
	frames, bytes := max(q.maxFrames/2, 1), max(q.maxBytes/4, 1)
	if err := q.waitBelow(ctx, size, frames, bytes); err != nil {
		return err
	}
	return q.pushWaitBelow(ctx, build(), frames, bytes)
}

// below reports whether a frame of size bytes fits under the mark of
// frames and bytes (it always fits an empty queue), or the queue closes.
func (q *sendQueue) below(size, frames, bytes int) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.close != nil || len(q.frames) == 0 || (len(q.frames) < frames && q.bytes+size <= bytes)
}

// waitBelow waits until below holds.
func (q *sendQueue) waitBelow(ctx context.Context, size, frames, bytes int) error {
	for !q.below(size, frames, bytes) {
		select {
		case <-q.space:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

func (q *sendQueue) pushWaitBelow(ctx context.Context, f outFrame, frames, bytes int) error {
	for {
		q.mu.Lock()
		var err error
		if q.close == nil && len(q.frames) > 0 && (len(q.frames) >= frames || q.bytes+len(f.b) > bytes) {
			err = errQueueFull
		} else {
			err = q.pushLocked(f)
		}
		q.mu.Unlock()
		if !errors.Is(err, errQueueFull) {
			return err
		}
		select {
		case <-q.space:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// requestClose records the first close request and wakes the writer. It
// reports whether this request was the first.
func (q *sendQueue) requestClose(r closeRequest) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.close != nil {
		return false
	}
	q.close = &r
	signal(q.notify)
	signal(q.space)
	return true
}

// take returns what the writer should write now, appending to buf, and the
// close request if there is one. Frames queued before a non-flushing close
// are dropped.
func (q *sendQueue) take(buf []outFrame) ([]outFrame, *closeRequest) {
	q.mu.Lock()
	defer q.mu.Unlock()
	cr := q.close
	if cr == nil || cr.flush {
		buf = append(buf, q.frames...)
	}
	clear(q.frames)
	if cap(q.frames) > 64 {
		q.frames = nil // let a burst's backing array go
	} else {
		q.frames = q.frames[:0]
	}
	q.bytes = 0
	signal(q.space)
	return buf, cr
}

// closing reports whether the connection is closing.
func (q *sendQueue) closing() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.close != nil
}
