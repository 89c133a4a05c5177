//go:build !unix

package sockcheck

func pollClosed(uintptr) (closed, readable bool) { return false, false }

func peek(uintptr, []byte) (n int, eof, ok bool) { return 0, false, false }
