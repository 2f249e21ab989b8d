package wire

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"unicode/utf8"
)

// Frame types, as the "Type" field spells them.
const (
	TypeSubscribe     = "SubscribeMessage"
	TypeAck           = "AckMessage"
	TypePublish       = "EncryptedMessage"
	TypeAuthRequest   = "AuthRequest"
	TypeAuthChallenge = "AuthChallenge"
	TypePublishResult = "PublishResult"
	TypeDrained       = "Drained"
	TypeError         = "Error"
)

// Publish statuses of a level-2 PublishResult.
const (
	StatusDelivered = "delivered" // the recipient's authenticated connection acked it: the only ACK
	StatusQueued    = "queued"    // stored, not confirmed delivered: a NACK
	StatusOffline   = "offline"   // stored, and handed OFFLINE by the relay's bridge (only for a "fallback":"relay" publish)
	StatusRejected  = "rejected"  // not stored: a NACK, Reason says why
)

// Reason prefixes of a rejected publish (and of level-1 error frames).
const (
	ReasonInvalid     = "invalid: "
	ReasonTooLarge    = "too_large: "
	ReasonRateLimited = "rate_limited: "
	ReasonOverQuota   = "over_quota: "
)

// WebSocket close codes with a meaning in this protocol.
const (
	CloseServiceRestart = 1012 // server shutting down: reconnect at once, with jitter
	CloseReplaced       = 4409 // a newer authenticated connection for the same peer took over
)

// ProtocolLevel2 is the "protocol" value of an authenticated SubscribeMessage.
const ProtocolLevel2 = 2

// SubscribeOK is the exact success answer to a subscribe; a deployed client
// compares the string, space included.
var SubscribeOK = []byte(`{"subscribe": true}`)

// Subscribe is the Data of a SubscribeMessage. Protocol, PubKey and
// Signature are set only by level-2 clients.
type Subscribe struct {
	UserID          string `json:"userID"`
	SubscriptionKey string `json:"subscriptionKey"`
	Protocol        int    `json:"protocol,omitempty"`
	PubKey          string `json:"pubkey,omitempty"`
	Signature       string `json:"signature,omitempty"`
}

// Ack is the Data of an AckMessage.
type Ack struct {
	MessageID string `json:"messageID"`
}

// Publish is the Data of an EncryptedMessage sent by a client. Ref is a
// level-2 client's own string, echoed in the PublishResult. Fallback
// "relay" (FallbackRelay) asks the relay's OFFLINE bridge to hand the
// message OFFLINE if the recipient does not take it in time; a level-1
// publish always goes through the bridge, whatever it says.
type Publish struct {
	EncryptedMessage string `json:"encryptedMessage"`
	Recipient        string `json:"recipient"`
	Ref              string `json:"ref,omitempty"`
	Fallback         string `json:"fallback,omitempty"`
}

// FallbackRelay is the Publish.Fallback that asks for the relay's OFFLINE
// bridge.
const FallbackRelay = "relay"

// AuthRequest opens a level-2 handshake.
type AuthRequest struct {
	PeerID string `json:"peerID"`
}

// AuthChallenge is the server's answer to an AuthRequest.
type AuthChallenge struct {
	Nonce string `json:"nonce"`
	Host  string `json:"host"`
}

// PublishResult answers every level-2 publish.
type PublishResult struct {
	ID     string `json:"id"`
	Ref    string `json:"ref"`
	Status string `json:"status"`
	Reason string `json:"reason,omitempty"`
}

// Drained follows the replay after a level-2 subscribe.
type Drained struct {
	Count int `json:"count"`
}

// ErrorData is the Data of a level-2 per-frame Error.
type ErrorData struct {
	Reason string `json:"reason"`
}

// Delivery is the frame that carries a stored message to a subscriber.
type Delivery struct {
	ID               string `json:"id"`
	EncryptedMessage string `json:"encryptedMessage"`
}

// ErrMalformed is wrapped by every frame parse error.
var ErrMalformed = errors.New("malformed frame")

// ClientFrame is a parsed client→server frame: Type names it and exactly
// the matching field is set.
type ClientFrame struct {
	Type        string
	Subscribe   *Subscribe
	Ack         *Ack
	Publish     *Publish
	AuthRequest *AuthRequest
}

type envelope struct {
	Type *string         `json:"Type"`
	Data json.RawMessage `json:"Data"`
	// Fields of the bare SubscribeMessage form.
	UserID          *string `json:"userID"`
	SubscriptionKey *string `json:"subscriptionKey"`
}

// ParseClientFrame parses one client frame. It accepts the wrapped form
// {"Type":…,"Data":{…}} and the bare subscribe {"userID":…,"subscriptionKey":…}
// an older published example sends. Unknown extra fields are ignored; wrong
// types, a missing Data or an unknown Type are errors.
//
// The frames clients send in the ordinary way (the wrapped form, plain
// strings, no unknown fields) are read in one pass by parseFast; anything
// else goes through encoding/json (parseSlow), which also words every
// error. Both give the same frame wherever parseFast succeeds (see
// FuzzParseClientFrame).
func ParseClientFrame(b []byte) (ClientFrame, error) {
	if f, ok := parseFast(b); ok {
		return f, nil
	}
	return parseSlow(b)
}

func parseSlow(b []byte) (ClientFrame, error) {
	var env envelope
	if err := json.Unmarshal(b, &env); err != nil {
		return ClientFrame{}, fmt.Errorf("%w: %v", ErrMalformed, jsonReason(err))
	}
	if env.Type == nil {
		if env.UserID != nil || env.SubscriptionKey != nil {
			var s Subscribe
			if err := json.Unmarshal(b, &s); err != nil {
				return ClientFrame{}, fmt.Errorf("%w: %v", ErrMalformed, jsonReason(err))
			}
			return ClientFrame{Type: TypeSubscribe, Subscribe: &s}, nil
		}
		return ClientFrame{}, fmt.Errorf("%w: missing \"Type\"", ErrMalformed)
	}
	if len(env.Data) == 0 || bytes.Equal(env.Data, []byte("null")) {
		return ClientFrame{}, fmt.Errorf("%w: %s without \"Data\"", ErrMalformed, *env.Type)
	}
	f := ClientFrame{Type: *env.Type}
	var target any
	switch f.Type {
	case TypeSubscribe:
		f.Subscribe = new(Subscribe)
		target = f.Subscribe
	case TypeAck:
		f.Ack = new(Ack)
		target = f.Ack
	case TypePublish:
		f.Publish = new(Publish)
		target = f.Publish
	case TypeAuthRequest:
		f.AuthRequest = new(AuthRequest)
		target = f.AuthRequest
	default:
		return ClientFrame{}, fmt.Errorf("%w: unknown Type %q", ErrMalformed, f.Type)
	}
	if err := json.Unmarshal(env.Data, target); err != nil {
		return ClientFrame{}, fmt.Errorf("%w: %s Data: %v", ErrMalformed, f.Type, jsonReason(err))
	}
	return f, nil
}

// The Data fields parseFast knows, one bit each.
const (
	fUserID uint16 = 1 << iota
	fSubscriptionKey
	fProtocol
	fPubKey
	fSignature
	fMessageID
	fEncryptedMessage
	fRecipient
	fRef
	fPeerID
	fFallback
)

// dataFields is the Data of any client frame, as parseFast reads it
// before it knows the Type (which may come after Data).
type dataFields struct {
	seen                                                uint16
	userID, subscriptionKey, pubKey, signature          string
	messageID, encryptedMessage, recipient, ref, peerID string
	fallback                                            string
	protocol                                            int
}

// parseFast reads a wrapped client frame in one pass, without reflection:
// {"Type":"…","Data":{…}} with whitespace anywhere JSON allows it, every
// Data field one that some client frame has, strings without escapes
// and in valid UTF-8, and "protocol" a small non-negative integer (Data
// fields of another Type are read and ignored, as encoding/json does). It
// reports false for anything else (which may still be a valid frame, or
// an error for parseSlow to word): it never decides that a frame is bad.
func parseFast(b []byte) (ClientFrame, bool) {
	s := scanner{b: b}
	if !s.skip('{') {
		return ClientFrame{}, false
	}
	var (
		typ              string
		haveType, haveDt bool
		d                dataFields
	)
	for {
		k, ok := s.rawString()
		if !ok || !s.skip(':') {
			return ClientFrame{}, false
		}
		switch string(k) {
		case "Type":
			if haveType {
				return ClientFrame{}, false
			}
			haveType = true
			v, ok := s.rawString()
			if !ok {
				return ClientFrame{}, false
			}
			typ = string(v)
		case "Data":
			if haveDt || !s.data(&d) {
				return ClientFrame{}, false
			}
			haveDt = true
		default:
			return ClientFrame{}, false
		}
		if s.skip(',') {
			continue
		}
		if s.skip('}') {
			break
		}
		return ClientFrame{}, false
	}
	if s.ws(); s.i != len(b) || !haveType || !haveDt {
		return ClientFrame{}, false
	}
	// Fields of another Type are ignored, as encoding/json ignores them.
	f := ClientFrame{Type: typ}
	switch typ {
	case TypeSubscribe:
		f.Subscribe = &Subscribe{UserID: d.userID, SubscriptionKey: d.subscriptionKey, Protocol: d.protocol, PubKey: d.pubKey, Signature: d.signature}
	case TypeAck:
		f.Ack = &Ack{MessageID: d.messageID}
	case TypePublish:
		f.Publish = &Publish{EncryptedMessage: d.encryptedMessage, Recipient: d.recipient, Ref: d.ref, Fallback: d.fallback}
	case TypeAuthRequest:
		f.AuthRequest = &AuthRequest{PeerID: d.peerID}
	default:
		return ClientFrame{}, false
	}
	return f, true
}

// scanner is parseFast's cursor.
type scanner struct {
	b []byte
	i int
}

func (s *scanner) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// skip consumes c after optional whitespace, if it is there.
func (s *scanner) skip(c byte) bool {
	s.ws()
	if s.i < len(s.b) && s.b[s.i] == c {
		s.i++
		return true
	}
	return false
}

// rawString reads a string without escapes or control characters, in
// valid UTF-8, and returns its bytes (a slice of the input).
func (s *scanner) rawString() ([]byte, bool) {
	if !s.skip('"') {
		return nil, false
	}
	rest := s.b[s.i:]
	n := bytes.IndexByte(rest, '"')
	if n < 0 {
		return nil, false
	}
	v := rest[:n]
	ascii := true
	for _, c := range v {
		if c < 0x20 || c == '\\' {
			return nil, false
		}
		if c >= 0x80 {
			ascii = false
		}
	}
	if !ascii && !utf8.Valid(v) {
		return nil, false
	}
	s.i += n + 1
	return v, true
}

// data reads the Data object into d.
func (s *scanner) data(d *dataFields) bool {
	if !s.skip('{') {
		return false
	}
	if s.skip('}') {
		return true
	}
	for {
		k, ok := s.rawString()
		if !ok || !s.skip(':') {
			return false
		}
		var (
			bit uint16
			dst *string
		)
		switch string(k) {
		case "userID":
			bit, dst = fUserID, &d.userID
		case "subscriptionKey":
			bit, dst = fSubscriptionKey, &d.subscriptionKey
		case "protocol":
			bit = fProtocol
		case "pubkey":
			bit, dst = fPubKey, &d.pubKey
		case "signature":
			bit, dst = fSignature, &d.signature
		case "messageID":
			bit, dst = fMessageID, &d.messageID
		case "encryptedMessage":
			bit, dst = fEncryptedMessage, &d.encryptedMessage
		case "recipient":
			bit, dst = fRecipient, &d.recipient
		case "ref":
			bit, dst = fRef, &d.ref
		case "peerID":
			bit, dst = fPeerID, &d.peerID
		case "fallback":
			bit, dst = fFallback, &d.fallback
		default:
			return false
		}
		if d.seen&bit != 0 {
			return false
		}
		d.seen |= bit
		if dst != nil {
			v, ok := s.rawString()
			if !ok {
				return false
			}
			*dst = string(v)
		} else if d.protocol, ok = s.smallInt(); !ok {
			return false
		}
		if s.skip(',') {
			continue
		}
		return s.skip('}')
	}
}

// smallInt reads a non-negative integer of at most 9 digits without a
// leading zero; what follows it must end the number.
func (s *scanner) smallInt() (int, bool) {
	s.ws()
	start, n := s.i, 0
	for s.i < len(s.b) && s.b[s.i] >= '0' && s.b[s.i] <= '9' {
		n = n*10 + int(s.b[s.i]-'0')
		s.i++
	}
	digits := s.i - start
	if digits == 0 || digits > 9 || (digits > 1 && s.b[start] == '0') {
		return 0, false
	}
	if s.i < len(s.b) {
		switch s.b[s.i] {
		case '.', 'e', 'E':
			return 0, false
		}
	}
	return n, true
}

// jsonReason turns a decoding error into words that name the field.
func jsonReason(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		if te.Field != "" {
			return fmt.Sprintf("field %q must be a %s, not %s", te.Field, te.Type, te.Value)
		}
		return fmt.Sprintf("want a JSON object, not %s", te.Value)
	}
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return "invalid JSON: " + se.Error()
	}
	return err.Error()
}

// ClientFrameBytes encodes a client frame in the wrapped form.
func ClientFrameBytes(typ string, data any) []byte {
	return typedFrame(typ, data)
}

// ServerFrame is a parsed server→client frame; Kind says which field is set.
type ServerFrame struct {
	Kind          ServerKind
	Error         string // KindError: level-1 {"error": …}; KindLevel2Error: Data.reason
	Delivery      *Delivery
	AuthChallenge *AuthChallenge
	PublishResult *PublishResult
	Drained       *Drained
}

// ServerKind classifies a server frame.
type ServerKind int

// Server frame kinds.
const (
	KindSubscribed ServerKind = iota + 1
	KindError
	KindDelivery
	KindAuthChallenge
	KindPublishResult
	KindDrained
	KindLevel2Error
)

type serverEnvelope struct {
	Type             string          `json:"Type"`
	Data             json.RawMessage `json:"Data"`
	Subscribe        *bool           `json:"subscribe"`
	Error            *string         `json:"error"`
	ID               string          `json:"id"`
	EncryptedMessage *string         `json:"encryptedMessage"`
}

// ParseServerFrame parses one frame sent by a relay, for clients and tests.
func ParseServerFrame(b []byte) (ServerFrame, error) {
	var env serverEnvelope
	if err := json.Unmarshal(b, &env); err != nil {
		return ServerFrame{}, fmt.Errorf("%w: %v", ErrMalformed, jsonReason(err))
	}
	decode := func(v any) error {
		if err := json.Unmarshal(env.Data, v); err != nil {
			return fmt.Errorf("%w: %s Data: %v", ErrMalformed, env.Type, jsonReason(err))
		}
		return nil
	}
	switch {
	case env.Subscribe != nil && *env.Subscribe:
		return ServerFrame{Kind: KindSubscribed}, nil
	case env.Error != nil:
		return ServerFrame{Kind: KindError, Error: *env.Error}, nil
	case env.EncryptedMessage != nil && env.Type == "":
		return ServerFrame{Kind: KindDelivery, Delivery: &Delivery{ID: env.ID, EncryptedMessage: *env.EncryptedMessage}}, nil
	case env.Type == TypeAuthChallenge:
		f := ServerFrame{Kind: KindAuthChallenge, AuthChallenge: new(AuthChallenge)}
		return f, decode(f.AuthChallenge)
	case env.Type == TypePublishResult:
		f := ServerFrame{Kind: KindPublishResult, PublishResult: new(PublishResult)}
		return f, decode(f.PublishResult)
	case env.Type == TypeDrained:
		f := ServerFrame{Kind: KindDrained, Drained: new(Drained)}
		return f, decode(f.Drained)
	case env.Type == TypeError:
		var d ErrorData
		err := decode(&d)
		return ServerFrame{Kind: KindLevel2Error, Error: d.Reason}, err
	}
	return ServerFrame{}, fmt.Errorf("%w: unknown server frame", ErrMalformed)
}

// ErrorFrame encodes a level-1 error answer: {"error": "<reason>"}.
func ErrorFrame(reason string) []byte {
	r, _ := json.Marshal(reason) // a string always marshals
	return append(append([]byte(`{"error": `), r...), '}')
}

// DeliveryFrame encodes a delivery of a stored message.
func DeliveryFrame(id string, ciphertext []byte) []byte {
	b := make([]byte, 0, len(`{"id":"","encryptedMessage":""}`)+len(id)+base64.StdEncoding.EncodedLen(len(ciphertext)))
	b = append(b, `{"id":"`...)
	b = append(b, id...) // hex: nothing to escape
	b = append(b, `","encryptedMessage":"`...)
	b = base64.StdEncoding.AppendEncode(b, ciphertext)
	return append(b, `"}`...)
}

// ChallengeFrame, PublishResultFrame, DrainedFrame and Level2ErrorFrame
// encode the level-2 server frames.
func ChallengeFrame(c AuthChallenge) []byte { return typedFrame(TypeAuthChallenge, c) }
func DrainedFrame(count int) []byte         { return typedFrame(TypeDrained, Drained{Count: count}) }
func Level2ErrorFrame(reason string) []byte { return typedFrame(TypeError, ErrorData{Reason: reason}) }

// PublishResultFrame encodes the answer to a level-2 publish.
func PublishResultFrame(r PublishResult) []byte {
	if !plainJSON(r.ID) || !plainJSON(r.Ref) || !plainJSON(r.Status) || !plainJSON(r.Reason) {
		return typedFrame(TypePublishResult, r)
	}
	// One per publish: built by hand, byte for byte what typedFrame makes.
	b := make([]byte, 0, 64+len(r.ID)+len(r.Ref)+len(r.Status)+len(r.Reason))
	b = append(b, `{"Type":"PublishResult","Data":{"id":"`...)
	b = append(b, r.ID...)
	b = append(b, `","ref":"`...)
	b = append(b, r.Ref...)
	b = append(b, `","status":"`...)
	b = append(b, r.Status...)
	if r.Reason != "" {
		b = append(b, `","reason":"`...)
		b = append(b, r.Reason...)
	}
	return append(b, `"}}`...)
}

// plainJSON reports whether encoding/json writes s as is between quotes:
// printable ASCII without the characters it escapes.
func plainJSON(s string) bool {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c < 0x20 || c >= 0x7f, c == '"', c == '\\', c == '<', c == '>', c == '&':
			return false
		}
	}
	return true
}

func typedFrame(typ string, data any) []byte {
	b, err := json.Marshal(struct {
		Type string `json:"Type"`
		Data any    `json:"Data"`
	}{typ, data})
	if err != nil {
		panic(fmt.Sprintf("wire: encode %s: %v", typ, err)) // only our own plain structs reach here
	}
	return b
}

// ErrTooLarge is returned by DecodeCiphertext for a message over the limit.
var ErrTooLarge = errors.New("message too large")

// DecodeCiphertext decodes standard padded base64 and enforces the decoded
// size limit before allocating for it. Errors say what is wrong in words a
// client can act on.
func DecodeCiphertext(s string, maxBytes int) ([]byte, error) {
	if s == "" {
		return nil, errors.New("encryptedMessage is empty")
	}
	if n := base64.StdEncoding.DecodedLen(len(s)); maxBytes > 0 && n-2 > maxBytes {
		return nil, fmt.Errorf("%w: about %d bytes, the limit is %d", ErrTooLarge, n, maxBytes)
	}
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("encryptedMessage is not standard padded base64: %v", err)
	}
	if maxBytes > 0 && len(b) > maxBytes {
		return nil, fmt.Errorf("%w: %d bytes, the limit is %d", ErrTooLarge, len(b), maxBytes)
	}
	return b, nil
}

// MaxFrameBytes is the largest frame a reader must accept to carry a
// message of maxMessageBytes: its base64 plus room for the JSON around it.
func MaxFrameBytes(maxMessageBytes int) int64 {
	return int64(base64.StdEncoding.EncodedLen(maxMessageBytes)) + 16<<10
}
