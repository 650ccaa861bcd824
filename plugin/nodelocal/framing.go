package nodelocal

import (
	"encoding/binary"

	"github.com/miekg/dns"
)

// The old servers read a TCP query in two steps: its 2-byte length, then the
// message. Their shutdown sets every connection's read deadline in the past,
// and a query that arrives as they stop can be caught between the two reads
// (the first one was already woken by its data): the length is consumed, the
// message is left for the relay, and the new servers would take the message's
// ID for its length and wait for bytes that never come.

// restoreFraming returns what a carried-over client sent first, with the
// length put back in front when the old servers consumed it, and whether it
// was. A stream that starts with a length matching the message after it is
// left as it is, as is anything that is not a whole DNS message.
func restoreFraming(b []byte) ([]byte, bool) {
	if len(b) >= 2 {
		if n, ok := messageLength(b[2:]); ok && n == int(binary.BigEndian.Uint16(b)) {
			return b, false
		}
	}
	n, ok := messageLength(b)
	if !ok {
		return b, false
	}
	return append(binary.BigEndian.AppendUint16(nil, uint16(n)), b...), true
}

// messageLength is the length of the DNS message that starts b, from its
// header's counts and the sizes of its records; false when b does not hold a
// whole, well-formed message.
func messageLength(b []byte) (int, bool) {
	const headerLen = 12
	if len(b) < headerLen || len(b) > dns.MaxMsgSize {
		return 0, false
	}
	questions := int(binary.BigEndian.Uint16(b[4:]))
	records := int(binary.BigEndian.Uint16(b[6:])) + int(binary.BigEndian.Uint16(b[8:])) + int(binary.BigEndian.Uint16(b[10:]))
	off := headerLen
	var err error
	for range questions {
		if _, off, err = dns.UnpackDomainName(b, off); err != nil || off+4 > len(b) {
			return 0, false
		}
		off += 4 // type, class
	}
	for range records {
		if _, off, err = dns.UnpackDomainName(b, off); err != nil || off+10 > len(b) {
			return 0, false
		}
		off += 10 + int(binary.BigEndian.Uint16(b[off+8:])) // type, class, TTL, data length; the data
		if off > len(b) {
			return 0, false
		}
	}
	return off, true
}
