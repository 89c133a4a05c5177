package netns

import (
	"fmt"
	"os"
	"syscall"
	"unsafe"
)

// TUN device flags and the ioctl that attaches a file to a device
// (linux/if_tun.h).
const (
	iffTUN    = 0x0001
	iffNoPI   = 0x1000
	tunSetIff = 0x400454ca
)

type ifreq struct {
	name  [16]byte
	flags uint16
	_     [22]byte
}

// openTUN creates the TUN device name (IP packets, no packet information
// header) and returns its file, non-blocking so that Close interrupts a
// Read. The device disappears when the file is closed.
func openTUN(name string) (*os.File, error) {
	if len(name) > 15 {
		return nil, fmt.Errorf("netns: device name %q too long", name)
	}
	fd, err := syscall.Open("/dev/net/tun", syscall.O_RDWR|syscall.O_CLOEXEC|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("netns: open /dev/net/tun: %w", err)
	}
	var req ifreq
	copy(req.name[:], name)
	req.flags = iffTUN | iffNoPI
	if _, _, errno := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), tunSetIff, uintptr(unsafe.Pointer(&req))); errno != 0 {
		syscall.Close(fd)
		return nil, fmt.Errorf("netns: TUNSETIFF %s: %w", name, errno)
	}
	return os.NewFile(uintptr(fd), "tun:"+name), nil
}
