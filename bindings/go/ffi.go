package pytorchsaver

/*
#cgo pkg-config: pytorch_saver
#include <stdlib.h>
#include <pytorch_saver.h>
#include "callbacks.h"
*/
import "C"

import (
	"runtime"
	"strings"
	"unsafe"
)

// FormatVersion is the newest checkpoint format version the library reads
// and writes (PTS_FORMAT_VERSION).
const FormatVersion = 2

// HeaderVersion is the version of the C library whose header the package
// was built against, "MAJOR.MINOR.PATCH": the header's PTS_VERSION.
const HeaderVersion = C.PTS_VERSION

// Version returns the version of the C library the program runs against,
// "MAJOR.MINOR.PATCH". It differs from HeaderVersion only when the
// program loads another build of the library than the one it was built
// with.
func Version() string {
	return C.GoString(C.pts_version())
}

// The Go constants are the header's. Each line fails to compile when a Go
// value differs from its C macro: a negative difference overflows, a
// positive one gives an array type that [0]struct{} cannot be assigned to.
var (
	_ [FormatVersion - C.PTS_FORMAT_VERSION]struct{} = [0]struct{}{}

	_ [MemberModel - C.PTS_MEMBER_MODEL]struct{}         = [0]struct{}{}
	_ [MemberOptimizer - C.PTS_MEMBER_OPTIMIZER]struct{} = [0]struct{}{}
	_ [MemberExtra - C.PTS_MEMBER_EXTRA]struct{}         = [0]struct{}{}

	_ [Float64 - C.PTS_DTYPE_F64]struct{}   = [0]struct{}{}
	_ [Float32 - C.PTS_DTYPE_F32]struct{}   = [0]struct{}{}
	_ [Float16 - C.PTS_DTYPE_F16]struct{}   = [0]struct{}{}
	_ [BFloat16 - C.PTS_DTYPE_BF16]struct{} = [0]struct{}{}
	_ [Int64 - C.PTS_DTYPE_I64]struct{}     = [0]struct{}{}
	_ [Int32 - C.PTS_DTYPE_I32]struct{}     = [0]struct{}{}
	_ [Int16 - C.PTS_DTYPE_I16]struct{}     = [0]struct{}{}
	_ [Int8 - C.PTS_DTYPE_I8]struct{}       = [0]struct{}{}
	_ [Uint8 - C.PTS_DTYPE_U8]struct{}      = [0]struct{}{}
	_ [Bool - C.PTS_DTYPE_BOOL]struct{}     = [0]struct{}{}

	_ [CodeNullArgument - C.PTS_ERROR_NULL_ARGUMENT]struct{}             = [0]struct{}{}
	_ [CodeInvalidArgument - C.PTS_ERROR_INVALID_ARGUMENT]struct{}       = [0]struct{}{}
	_ [CodeInvalidJSON - C.PTS_ERROR_INVALID_JSON]struct{}               = [0]struct{}{}
	_ [CodeIO - C.PTS_ERROR_IO]struct{}                                  = [0]struct{}{}
	_ [CodeFormat - C.PTS_ERROR_FORMAT]struct{}                          = [0]struct{}{}
	_ [CodeUnsupportedVersion - C.PTS_ERROR_UNSUPPORTED_VERSION]struct{} = [0]struct{}{}
	_ [CodeUnknownName - C.PTS_ERROR_UNKNOWN_NAME]struct{}               = [0]struct{}{}
	_ [CodeDuplicateName - C.PTS_ERROR_DUPLICATE_NAME]struct{}           = [0]struct{}{}
	_ [CodeInvalidKwargs - C.PTS_ERROR_INVALID_KWARGS]struct{}           = [0]struct{}{}
	_ [CodeFactory - C.PTS_ERROR_FACTORY]struct{}                        = [0]struct{}{}
	_ [CodeInvalidMetadata - C.PTS_ERROR_INVALID_METADATA]struct{}       = [0]struct{}{}
	_ [CodeNotInitialized - C.PTS_ERROR_NOT_INITIALIZED]struct{}         = [0]struct{}{}
	_ [CodeStateMismatch - C.PTS_ERROR_STATE_MISMATCH]struct{}           = [0]struct{}{}
	_ [CodeInvalidState - C.PTS_ERROR_INVALID_STATE]struct{}             = [0]struct{}{}
	_ [CodeUsage - C.PTS_ERROR_USAGE]struct{}                            = [0]struct{}{}
	_ [CodeTorch - C.PTS_ERROR_TORCH]struct{}                            = [0]struct{}{}
	_ [CodeCallback - C.PTS_ERROR_CALLBACK]struct{}                      = [0]struct{}{}
	_ [CodeNotFound - C.PTS_ERROR_NOT_FOUND]struct{}                     = [0]struct{}{}
	_ [CodePanic - C.PTS_ERROR_PANIC]struct{}                            = [0]struct{}{}
	_ [CodeLocked - C.PTS_ERROR_LOCKED]struct{}                          = [0]struct{}{}
	_ [CodeStorage - C.PTS_ERROR_STORAGE]struct{}                        = [0]struct{}{}
)

// takeError turns an error object the library returned into a Go error
// and frees it; nil stays nil.
func takeError(e *C.pts_error_t) error {
	if e == nil {
		return nil
	}
	err := &Error{
		Code:    Code(C.pts_error_code(e)),
		Kind:    C.GoString(C.pts_error_kind(e)),
		Message: C.GoString(C.pts_error_message(e)),
	}
	C.pts_error_free(e)
	return err
}

// newCError makes an error object for the library to take (the result of
// a callback). It is NULL only if the library could not allocate one.
func newCError(code Code, message string) *C.pts_error_t {
	// A NUL would cut the message short in C; show it instead.
	message = strings.ReplaceAll(message, "\x00", `\0`)
	cmsg := C.CString(message)
	defer C.free(unsafe.Pointer(cmsg))
	return C.pts_error_new(C.pts_error_code_t(code), cmsg)
}

// takeString copies a string the library returned and frees it.
func takeString(s *C.char) string {
	if s == nil {
		return ""
	}
	defer C.pts_string_free(s)
	return C.GoString(s)
}

// cString copies s for C; the caller frees it with freeString. A string
// holding a NUL byte is refused: C would silently read only its prefix.
func cString(what, s string) (*C.char, error) {
	if strings.IndexByte(s, 0) >= 0 {
		return nil, errorf(CodeInvalidArgument, "%s %q contains a NUL byte", what, s)
	}
	return C.CString(s), nil
}

// cStringOpt is cString, with "" as NULL (the C API's "none").
func cStringOpt(what, s string) (*C.char, error) {
	if s == "" {
		return nil, nil
	}
	return cString(what, s)
}

// freeString frees a string from cString; nil is a no-op.
func freeString(s *C.char) {
	if s != nil {
		C.free(unsafe.Pointer(s))
	}
}

// sliceData is the address of a slice's first element for C, or nil for
// an empty slice (the C API accepts NULL for zero bytes).
func sliceData[T any](s []T) unsafe.Pointer {
	if len(s) == 0 {
		return nil
	}
	return unsafe.Pointer(unsafe.SliceData(s))
}

// int64Data is sliceData for a shape, typed for C.
func int64Data(s []int64) *C.int64_t {
	return (*C.int64_t)(sliceData(s))
}

// maybeGC runs a garbage collection before a C call when the package is
// built with the pytorchsaver_gcstress tag, so that a missing
// runtime.KeepAlive shows up as a use after free in the tests.
func maybeGC() {
	if gcStress {
		runtime.GC()
	}
}
