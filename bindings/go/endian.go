package pytorchsaver

import (
	"slices"
	"unsafe"
)

// hostLittleEndian is whether this machine stores numbers little-endian,
// as checkpoint files do.
var hostLittleEndian = func() bool {
	x := uint16(1)
	return *(*byte)(unsafe.Pointer(&x)) == 1
}()

// fromLittleEndian turns elements read from a file (little-endian) into
// the host's byte order, in place.
func fromLittleEndian[T Element](s []T) {
	var zero T
	size := int(unsafe.Sizeof(zero))
	if hostLittleEndian || size == 1 || len(s) == 0 {
		return
	}
	raw := unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(s))), len(s)*size)
	for i := 0; i < len(raw); i += size {
		slices.Reverse(raw[i : i+size])
	}
}
