package telemetrytest

import (
	"errors"
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
