package devnode

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"time"
	"unicode/utf8"
)

// This file is a small protobuf codec for the few messages of openbazaar-go's
// pb/protos/message.proto that a chat needs (Envelope, Message, Chat) plus the
// well-known google.protobuf.Any and Timestamp. Protobuf varints are exactly
// encoding/binary's Uvarint, so no protobuf library is needed.
//
// Encoding follows what Go's proto.Marshal produces for these messages:
// fields in field-number order, proto3 zero values left out, a set embedded
// message always written (an empty one as a zero-length field). Signatures
// are over these bytes, so the encoding must stay byte-for-byte canonical.

// MessageType is openbazaar-go's pb.Message.MessageType.
type MessageType int32

// The message types of openbazaar-go's pb.Message.
const (
	TypePing                   MessageType = 0
	TypeChat                   MessageType = 1
	TypeFollow                 MessageType = 2
	TypeUnfollow               MessageType = 3
	TypeOrder                  MessageType = 4
	TypeOrderReject            MessageType = 5
	TypeOrderCancel            MessageType = 6
	TypeOrderConfirmation      MessageType = 7
	TypeOrderFulfillment       MessageType = 8
	TypeOrderCompletion        MessageType = 9
	TypeDisputeOpen            MessageType = 10
	TypeDisputeUpdate          MessageType = 11
	TypeDisputeClose           MessageType = 12
	TypeRefund                 MessageType = 13
	TypeOfflineAck             MessageType = 14
	TypeOfflineRelay           MessageType = 15
	TypeModeratorAdd           MessageType = 16
	TypeModeratorRemove        MessageType = 17
	TypeStore                  MessageType = 18
	TypeBlock                  MessageType = 19
	TypeVendorFinalizedPayment MessageType = 20
	TypeOrderPayment           MessageType = 21
	TypeError                  MessageType = 500
	TypeOrderProcessingFailure MessageType = 501
)

var messageTypeNames = map[MessageType]string{
	TypePing: "PING", TypeChat: "CHAT", TypeFollow: "FOLLOW", TypeUnfollow: "UNFOLLOW",
	TypeOrder: "ORDER", TypeOrderReject: "ORDER_REJECT", TypeOrderCancel: "ORDER_CANCEL",
	TypeOrderConfirmation: "ORDER_CONFIRMATION", TypeOrderFulfillment: "ORDER_FULFILLMENT",
	TypeOrderCompletion: "ORDER_COMPLETION", TypeDisputeOpen: "DISPUTE_OPEN",
	TypeDisputeUpdate: "DISPUTE_UPDATE", TypeDisputeClose: "DISPUTE_CLOSE", TypeRefund: "REFUND",
	TypeOfflineAck: "OFFLINE_ACK", TypeOfflineRelay: "OFFLINE_RELAY", TypeModeratorAdd: "MODERATOR_ADD",
	TypeModeratorRemove: "MODERATOR_REMOVE", TypeStore: "STORE", TypeBlock: "BLOCK",
	TypeVendorFinalizedPayment: "VENDOR_FINALIZED_PAYMENT", TypeOrderPayment: "ORDER_PAYMENT",
	TypeError: "ERROR", TypeOrderProcessingFailure: "ORDER_PROCESSING_FAILURE",
}

// String returns the protobuf enum name, or the number for an unknown type.
func (t MessageType) String() string {
	if s, ok := messageTypeNames[t]; ok {
		return s
	}
	return strconv.Itoa(int(t))
}

// ChatFlag is openbazaar-go's pb.Chat.Flag.
type ChatFlag int32

// The flags of a pb.Chat.
const (
	FlagMessage ChatFlag = 0
	FlagTyping  ChatFlag = 1
	FlagRead    ChatFlag = 2
)

// ChatTypeURL is the google.protobuf.Any type URL of a pb.Chat payload, as
// openbazaar-go's ptypes.MarshalAny writes it: message.proto declares no
// package, so the message's full name is just "Chat".
const ChatTypeURL = "type.googleapis.com/Chat"

// Chat is openbazaar-go's pb.Chat.
type Chat struct {
	MessageID string // base58 sha2-256 multihash; see ChatMessageID
	Subject   string
	Message   string
	Timestamp time.Time // zero: not set
	Flag      ChatFlag
}

// Protobuf wire types used here.
const (
	wireVarint = 0
	wireI64    = 1
	wireBytes  = 2
	wireI32    = 5
)

var errTruncated = errors.New("truncated protobuf")

func appendTag(b []byte, num, typ int) []byte {
	return binary.AppendUvarint(b, uint64(num)<<3|uint64(typ))
}

func appendVarintField(b []byte, num int, v uint64) []byte {
	if v == 0 {
		return b
	}
	return binary.AppendUvarint(appendTag(b, num, wireVarint), v)
}

// appendBytesField writes a string or bytes field, left out when empty.
func appendBytesField(b []byte, num int, v []byte) []byte {
	if len(v) == 0 {
		return b
	}
	return appendMessageField(b, num, v)
}

// appendMessageField writes a length-delimited field even when empty, as an
// embedded message that is set is always written.
func appendMessageField(b []byte, num int, v []byte) []byte {
	b = binary.AppendUvarint(appendTag(b, num, wireBytes), uint64(len(v)))
	return append(b, v...)
}

// int32 and enum values are written as their int64 sign extension.
func varintOfInt32(v int32) uint64 { return uint64(int64(v)) }

// walkFields calls fn for every field of a serialized message: v for varint
// and fixed-width fields, data for length-delimited ones.
func walkFields(b []byte, fn func(num, typ int, v uint64, data []byte) error) error {
	for len(b) > 0 {
		tag, n := binary.Uvarint(b)
		if n <= 0 {
			return errTruncated
		}
		b = b[n:]
		num, typ := tag>>3, int(tag&7)
		if num == 0 || num > 1<<29-1 {
			return fmt.Errorf("invalid field number %d", num)
		}
		var v uint64
		var data []byte
		switch typ {
		case wireVarint:
			v, n = binary.Uvarint(b)
			if n <= 0 {
				return errTruncated
			}
			b = b[n:]
		case wireI64:
			if len(b) < 8 {
				return errTruncated
			}
			v, b = binary.LittleEndian.Uint64(b), b[8:]
		case wireI32:
			if len(b) < 4 {
				return errTruncated
			}
			v, b = uint64(binary.LittleEndian.Uint32(b)), b[4:]
		case wireBytes:
			l, n := binary.Uvarint(b)
			if n <= 0 || l > uint64(len(b)-n) {
				return errTruncated
			}
			data, b = b[n:n+int(l)], b[n+int(l):]
		default:
			return fmt.Errorf("field %d: unsupported wire type %d", num, typ)
		}
		if err := fn(int(num), typ, v, data); err != nil {
			return err
		}
	}
	return nil
}

func wantType(num, got, want int) error {
	if got != want {
		return fmt.Errorf("field %d has wire type %d, want %d", num, got, want)
	}
	return nil
}

func utf8String(num int, data []byte) (string, error) {
	if !utf8.Valid(data) {
		return "", fmt.Errorf("field %d is not valid UTF-8", num)
	}
	return string(data), nil
}

// pbMessage is openbazaar-go's pb.Message with its google.protobuf.Any
// payload inlined.
type pbMessage struct {
	Type       MessageType
	HasPayload bool
	TypeURL    string
	Payload    []byte
	RequestID  int32
	IsResponse bool
}

func (m pbMessage) marshal() []byte {
	var b []byte
	b = appendVarintField(b, 1, varintOfInt32(int32(m.Type)))
	if m.HasPayload {
		var a []byte
		a = appendBytesField(a, 1, []byte(m.TypeURL))
		a = appendBytesField(a, 2, m.Payload)
		b = appendMessageField(b, 2, a)
	}
	b = appendVarintField(b, 3, varintOfInt32(m.RequestID))
	if m.IsResponse {
		b = appendVarintField(b, 4, 1)
	}
	return b
}

func unmarshalMessage(b []byte) (pbMessage, error) {
	var m pbMessage
	err := walkFields(b, func(num, typ int, v uint64, data []byte) error {
		switch num {
		case 1:
			m.Type = MessageType(int32(v))
			return wantType(num, typ, wireVarint)
		case 2:
			if err := wantType(num, typ, wireBytes); err != nil {
				return err
			}
			m.HasPayload = true
			return walkFields(data, func(num, typ int, _ uint64, data []byte) error {
				switch num {
				case 1:
					s, err := utf8String(num, data)
					m.TypeURL = s
					if err != nil {
						return fmt.Errorf("payload: %w", err)
					}
					return wantType(num, typ, wireBytes)
				case 2:
					m.Payload = data
					return wantType(num, typ, wireBytes)
				}
				return nil
			})
		case 3:
			m.RequestID = int32(v)
			return wantType(num, typ, wireVarint)
		case 4:
			m.IsResponse = v != 0
			return wantType(num, typ, wireVarint)
		}
		return nil // unknown fields are skipped, as protobuf does
	})
	return m, err
}

// pbEnvelope is openbazaar-go's pb.Envelope with the Message kept as the
// bytes the signature covers.
type pbEnvelope struct {
	Message   []byte // serialized pb.Message
	PubKey    []byte // marshalled libp2p public key of the sender
	Signature []byte // over Message
}

func (e pbEnvelope) marshal() []byte {
	b := make([]byte, 0, len(e.Message)+len(e.PubKey)+len(e.Signature)+12)
	b = appendMessageField(b, 1, e.Message)
	b = appendBytesField(b, 2, e.PubKey)
	return appendBytesField(b, 3, e.Signature)
}

func unmarshalEnvelope(b []byte) (pbEnvelope, error) {
	var e pbEnvelope
	seen := false
	err := walkFields(b, func(num, typ int, _ uint64, data []byte) error {
		switch num {
		case 1:
			// Protobuf would merge a repeated embedded message; the signature
			// covers one serialization, so take exactly one.
			if seen {
				return errors.New("envelope has more than one message")
			}
			seen = true
			e.Message = data
		case 2:
			e.PubKey = data
		case 3:
			e.Signature = data
		default:
			return nil
		}
		return wantType(num, typ, wireBytes)
	})
	if err == nil && !seen {
		err = errors.New("envelope has no message")
	}
	return e, err
}

func (c Chat) marshal() []byte {
	var b []byte
	b = appendBytesField(b, 1, []byte(c.MessageID))
	b = appendBytesField(b, 2, []byte(c.Subject))
	b = appendBytesField(b, 3, []byte(c.Message))
	if !c.Timestamp.IsZero() {
		var ts []byte
		ts = appendVarintField(ts, 1, uint64(c.Timestamp.Unix()))
		ts = appendVarintField(ts, 2, varintOfInt32(int32(c.Timestamp.Nanosecond())))
		b = appendMessageField(b, 4, ts)
	}
	return appendVarintField(b, 5, varintOfInt32(int32(c.Flag)))
}

func unmarshalChat(b []byte) (Chat, error) {
	var c Chat
	err := walkFields(b, func(num, typ int, v uint64, data []byte) error {
		var err error
		switch num {
		case 1:
			c.MessageID, err = utf8String(num, data)
		case 2:
			c.Subject, err = utf8String(num, data)
		case 3:
			c.Message, err = utf8String(num, data)
		case 4:
			if err := wantType(num, typ, wireBytes); err != nil {
				return err
			}
			c.Timestamp, err = unmarshalTimestamp(data)
			return err
		case 5:
			c.Flag = ChatFlag(int32(v))
			return wantType(num, typ, wireVarint)
		default:
			return nil
		}
		if err != nil {
			return err
		}
		return wantType(num, typ, wireBytes)
	})
	return c, err
}

// maxTimestampSeconds bounds google.protobuf.Timestamp as its definition does
// (years 0001 to 9999).
const (
	minTimestampSeconds = -62135596800
	maxTimestampSeconds = 253402300799
)

func unmarshalTimestamp(b []byte) (time.Time, error) {
	var secs int64
	var nanos int32
	err := walkFields(b, func(num, typ int, v uint64, _ []byte) error {
		switch num {
		case 1:
			secs = int64(v)
		case 2:
			nanos = int32(v)
		default:
			return nil
		}
		return wantType(num, typ, wireVarint)
	})
	if err != nil {
		return time.Time{}, fmt.Errorf("timestamp: %w", err)
	}
	if secs < minTimestampSeconds || secs > maxTimestampSeconds || nanos < 0 || nanos >= 1e9 {
		return time.Time{}, fmt.Errorf("timestamp %d.%09d is out of range", secs, nanos)
	}
	return time.Unix(secs, int64(nanos)).UTC(), nil
}
