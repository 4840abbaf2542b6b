package egress

import (
	"context"
	"encoding/binary"
	"net/netip"

	"github.com/florianl/go-nflog/v2"
)

// logUDP reads the UDP datagrams the firewall drops (its NFLOG rule, the first 28 bytes of
// each: the IPv4 and UDP headers) and records each as a udp_blocked denial of its worker.
// The kernel drops what this reader does not keep up with: a flood costs a bounded buffer.
func (s *Server) logUDP(ctx context.Context) error {
	nf, err := nflog.Open(&nflog.Config{Group: s.cfg.NFLOGGroup, Copymode: nflog.CopyPacket, Bufsize: 64,
		QThresh: 1, Timeout: 1}) // each datagram at once, not batched
	if err != nil {
		return err
	}
	go func() { <-ctx.Done(); nf.Close() }()
	hook := func(a nflog.Attribute) int {
		if a.Payload == nil {
			return 0
		}
		src, dst, port, ok := udpHeaders(*a.Payload)
		if !ok {
			return 0
		}
		s.mu.Lock()
		w := s.workers[src]
		s.mu.Unlock()
		if w == nil {
			s.decisions.WithLabelValues("udp", DecisionDenied, ReasonUDP).Inc()
			return 0
		}
		s.record(w, Event{Kind: "udp", IP: dst.String(), Port: port, Decision: DecisionDenied, Reason: ReasonUDP})
		return 0
	}
	return nf.RegisterWithErrorFunc(ctx, hook, func(error) int { return 0 })
}

// udpHeaders reads an IPv4 datagram's source, destination and UDP destination port.
func udpHeaders(p []byte) (src, dst netip.Addr, port uint16, ok bool) {
	if len(p) < 20 || p[0]>>4 != 4 || p[9] != 17 {
		return src, dst, 0, false
	}
	ihl := int(p[0]&0x0f) * 4
	if ihl < 20 || len(p) < ihl+4 {
		return src, dst, 0, false
	}
	src = netip.AddrFrom4([4]byte(p[12:16]))
	dst = netip.AddrFrom4([4]byte(p[16:20]))
	return src, dst, binary.BigEndian.Uint16(p[ihl+2 : ihl+4]), true
}
