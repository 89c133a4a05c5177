//go:build unix

package sockcheck

import "syscall"

// peek reports whether a non-blocking MSG_PEEK finds data, EOF or an error
// other than "would block".
func peek(fd uintptr, buf []byte) bool {
	_, _, err := syscall.Recvfrom(int(fd), buf, syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	switch {
	case err == syscall.EAGAIN || err == syscall.EWOULDBLOCK:
		return false
	case err == syscall.EINTR:
		return false
	case err != nil:
		return true
	default:
		return true // n > 0: unsolicited data; n == 0: EOF
	}
}
