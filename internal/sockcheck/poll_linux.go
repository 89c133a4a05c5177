//go:build linux

package sockcheck

import (
	"syscall"
	"unsafe"
)

type pollFd struct {
	fd      int32
	events  int16
	revents int16
}

const (
	pollIn    = 0x1
	pollErr   = 0x8
	pollHup   = 0x10
	pollNval  = 0x20
	pollRdHup = 0x2000
)

// pollClosed asks, without waiting, whether the peer closed or reset fd
// (POLLRDHUP sees a FIN behind unread data) and whether data waits.
func pollClosed(fd uintptr) (closed, readable bool) {
	pfd := pollFd{fd: int32(fd), events: pollIn | pollRdHup}
	var ts syscall.Timespec // zero: return at once
	_, _, e := syscall.Syscall6(syscall.SYS_PPOLL, uintptr(unsafe.Pointer(&pfd)), 1, uintptr(unsafe.Pointer(&ts)), 0, 0, 0)
	if e != 0 {
		return false, false
	}
	if pfd.revents&(pollRdHup|pollHup|pollErr|pollNval) != 0 {
		return true, true
	}
	return false, pfd.revents&pollIn != 0
}
