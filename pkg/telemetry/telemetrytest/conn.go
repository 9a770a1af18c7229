package telemetrytest

import (
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// SilentConn opens a TCP connection to addr that never starts its TLS
// handshake, as a client that connects and sends nothing does. It is closed
// when the test ends.
func SilentConn(t testing.TB, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// ClosedWithin reports whether the server closes c, a connection that has
// not sent its TLS hello, within d; false means c was still open after d.
// Penny's TLS endpoints send nothing before the client's hello, so a byte
// read fails the test.
func ClosedWithin(t testing.TB, c net.Conn, d time.Duration) bool {
	t.Helper()
	if err := c.SetReadDeadline(time.Now().Add(d)); err != nil {
		t.Fatal(err)
	}
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return false
	}
	if err == nil {
		t.Fatal("the server sent bytes before the client's TLS hello")
	}
	return true
}

// HTTP2Settings connects to a gRPC endpoint over TLS (cfg, with h2 offered)
// and returns the settings of the server's first frame, by identifier
// (RFC 9113, section 6.5.2): what bounds a client before any call.
func HTTP2Settings(t testing.TB, addr string, cfg *tls.Config) map[uint16]uint32 {
	t.Helper()
	cfg = cfg.Clone()
	cfg.NextProtos = []string{"h2"}
	conn, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	// The client connection preface: the magic, then empty SETTINGS.
	if _, err := conn.Write(append([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), 0, 0, 0, 0x4, 0, 0, 0, 0, 0)); err != nil {
		t.Fatal(err)
	}
	header := make([]byte, 9)
	if _, err := io.ReadFull(conn, header); err != nil {
		t.Fatal(err)
	}
	if header[3] != 0x4 {
		t.Fatalf("the server's first frame has type %#x, want SETTINGS", header[3])
	}
	payload := make([]byte, int(header[0])<<16|int(header[1])<<8|int(header[2]))
	if _, err := io.ReadFull(conn, payload); err != nil {
		t.Fatal(err)
	}
	settings := map[uint16]uint32{}
	for p := payload; len(p) >= 6; p = p[6:] {
		settings[binary.BigEndian.Uint16(p)] = binary.BigEndian.Uint32(p[2:])
	}
	return settings
}
