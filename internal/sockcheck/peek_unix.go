//go:build unix

package sockcheck

import "syscall"

// peek reads what waits on fd without consuming it and without blocking:
// n bytes, or eof when the peer closed with nothing left; ok is false when
// nothing waits (or the call was interrupted).
func peek(fd uintptr, buf []byte) (n int, eof, ok bool) {
	n, _, err := syscall.Recvfrom(int(fd), buf, syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	switch {
	case err == syscall.EAGAIN || err == syscall.EWOULDBLOCK || err == syscall.EINTR:
		return 0, false, false
	case err != nil:
		return 0, true, true // reset or another error: as good as closed
	case n == 0:
		return 0, true, true
	default:
		return n, false, true
	}
}
