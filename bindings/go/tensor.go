package pytorchsaver

/*
#include <pytorch_saver.h>
*/
import "C"

import (
	"fmt"
	"runtime"
	"sync"
	"unsafe"
)

// DType is an element type: one of format v1's dtypes.
type DType uint32

// The dtypes (PTS_DTYPE_* in C). String gives the safetensors name.
const (
	Float64  DType = 1  // torch.float64, F64
	Float32  DType = 2  // torch.float32, F32
	Float16  DType = 3  // torch.float16, F16 (read and written as raw bytes)
	BFloat16 DType = 4  // torch.bfloat16, BF16 (read and written as raw bytes)
	Int64    DType = 5  // torch.int64, I64
	Int32    DType = 6  // torch.int32, I32
	Int16    DType = 7  // torch.int16, I16
	Int8     DType = 8  // torch.int8, I8
	Uint8    DType = 9  // torch.uint8, U8
	Bool     DType = 10 // torch.bool, BOOL: one byte per element, 0 or 1
)

var dtypeNames = [...]string{
	Float64: "F64", Float32: "F32", Float16: "F16", BFloat16: "BF16", Int64: "I64",
	Int32: "I32", Int16: "I16", Int8: "I8", Uint8: "U8", Bool: "BOOL",
}

var dtypeSizes = [...]int{
	Float64: 8, Float32: 4, Float16: 2, BFloat16: 2, Int64: 8,
	Int32: 4, Int16: 2, Int8: 1, Uint8: 1, Bool: 1,
}

// String returns the safetensors name of the dtype ("F32", "BOOL", ...).
func (d DType) String() string {
	if d.valid() {
		return dtypeNames[d]
	}
	return fmt.Sprintf("DType(%d)", uint32(d))
}

// Size returns the size of one element in bytes (0 for an unknown dtype).
func (d DType) Size() int {
	if d.valid() {
		return dtypeSizes[d]
	}
	return 0
}

func (d DType) valid() bool { return d >= Float64 && d <= Bool }

// Element is the Go types that hold a dtype's elements one for one:
// float32 (Float32), float64, int64, int32, int16, int8, uint8 and bool.
// Float16 and BFloat16 have no Go type; they travel as raw bytes.
type Element interface {
	float32 | float64 | int64 | int32 | int16 | int8 | uint8 | bool
}

// dtypeOf is the dtype whose elements are T's.
func dtypeOf[T Element]() DType {
	var zero T
	switch any(zero).(type) {
	case float32:
		return Float32
	case float64:
		return Float64
	case int64:
		return Int64
	case int32:
		return Int32
	case int16:
		return Int16
	case int8:
		return Int8
	case uint8:
		return Uint8
	case bool:
		return Bool
	}
	return 0 // unreachable: Element lists exactly the types above
}

// Member names a tensor member of a checkpoint file.
type Member uint32

// The tensor members of a checkpoint.
const (
	// MemberModel is model.safetensors: the model's state dict under
	// PyTorch's names.
	MemberModel Member = 1
	// MemberOptimizer is optimizer.safetensors: the optimizer's
	// per-parameter state tensors (state.<index>.<key>); empty in an
	// inference file.
	MemberOptimizer Member = 2
	// MemberExtra is extra.safetensors (format version 2): the tensors of
	// the extra training state, each named by a TensorRef in the State of
	// an entry of Internals.Extra; empty when the file has no extra state.
	MemberExtra Member = 3
)

// String returns the member's file name, such as "model.safetensors".
func (m Member) String() string {
	switch m {
	case MemberModel:
		return "model.safetensors"
	case MemberOptimizer:
		return "optimizer.safetensors"
	case MemberExtra:
		return "extra.safetensors"
	}
	return fmt.Sprintf("Member(%d)", uint32(m))
}

// TensorInfo describes a tensor without its data.
type TensorInfo struct {
	DType DType
	// Shape is empty for a scalar (rank 0); it may hold zeros (no
	// elements).
	Shape []int64
	// NumBytes is the number of elements times the dtype's size.
	NumBytes int
}

// Tensor is a CPU tensor of the library: a reference to a libtorch tensor
// (two Tensors may share storage, as a container's parameter and the
// Tensor that Container.Parameter returns do). Its data is read into Go
// slices with the typed methods (Float32s, ...) and made from Go slices
// with NewTensorOf or NewTensor.
//
// A Tensor may be read from several goroutines at once, and Close may
// race with them safely (they then get an error). Reading a tensor whose
// storage a container is changing (a parameter during Step) needs the
// caller's synchronization, as in LibTorch. Close frees the handle; a
// finalizer frees it if Close is never called.
type Tensor struct {
	mu      sync.RWMutex
	ptr     *C.pts_tensor_t
	cleanup runtime.Cleanup
}

// wrapTensor takes ownership of a handle the library returned.
func wrapTensor(ptr *C.pts_tensor_t) *Tensor {
	t := &Tensor{ptr: ptr}
	t.cleanup = runtime.AddCleanup(t, freeTensor, ptr)
	return t
}

func freeTensor(ptr *C.pts_tensor_t) { C.pts_tensor_free(ptr) }

// NewTensor makes a tensor of dtype and shape from a copy of data, the
// elements C-contiguous in the host's byte order. len(data) must be the
// shape's byte size. This is the way to make Float16 and BFloat16
// tensors; NewTensorOf is simpler for the others.
func NewTensor(dtype DType, shape []int64, data []byte) (*Tensor, error) {
	ptr, err := newCTensor(dtype, shape, sliceData(data), len(data))
	if err != nil {
		return nil, err
	}
	return wrapTensor(ptr), nil
}

// NewTensorOf makes a tensor of shape from a copy of data, with the dtype
// of T (float32 makes a Float32 tensor, ...). len(data) must be the
// product of shape (1 for a scalar, shape nil).
func NewTensorOf[T Element](data []T, shape []int64) (*Tensor, error) {
	dtype := dtypeOf[T]()
	var zero T
	ptr, err := newCTensor(dtype, shape, sliceData(data), len(data)*int(unsafe.Sizeof(zero)))
	if err != nil {
		return nil, err
	}
	return wrapTensor(ptr), nil
}

// EmptyTensor makes a tensor of dtype and shape whose memory is NOT
// initialized: it costs no resident memory until written. It is for a
// ModelFactory called with loading true, whose values all come from the
// file: the library checks every tensor's dtype and shape against the
// file before it writes a byte, so a file whose kwargs describe a huge
// model is refused without that memory ever being touched (with
// NewTensorOf the factory itself would fill it first). Reading its values
// before something writes them gives arbitrary numbers. An allocation
// libtorch refuses is an error matching ErrTorch.
func EmptyTensor(dtype DType, shape []int64) (*Tensor, error) {
	var out *C.pts_tensor_t
	maybeGC()
	err := takeError(C.pts_tensor_empty(C.pts_dtype_t(dtype), int64Data(shape), C.size_t(len(shape)), &out))
	runtime.KeepAlive(shape)
	if err != nil {
		return nil, err
	}
	return wrapTensor(out), nil
}

// newCTensor makes a tensor handle for the caller to own; the library
// checks that nbytes fits dtype and shape.
func newCTensor(dtype DType, shape []int64, data unsafe.Pointer, nbytes int) (*C.pts_tensor_t, error) {
	var out *C.pts_tensor_t
	err := takeError(C.pts_tensor_from_buffer(C.pts_dtype_t(dtype), int64Data(shape),
		C.size_t(len(shape)), data, C.size_t(nbytes), &out))
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Close frees the tensor handle (storage shared with a container lives
// on). Calling it again does nothing. It always returns nil.
func (t *Tensor) Close() error {
	if t == nil {
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.ptr != nil {
		t.cleanup.Stop()
		C.pts_tensor_free(t.ptr)
		t.ptr = nil
	}
	return nil
}

// read runs f on the live handle under the read lock.
func (t *Tensor) read(f func(ptr *C.pts_tensor_t) error) error {
	if t == nil {
		return errorf(CodeNullArgument, "the tensor is nil")
	}
	t.mu.RLock()
	defer t.mu.RUnlock()
	if t.ptr == nil {
		return errClosed("tensor")
	}
	maybeGC()
	err := f(t.ptr)
	runtime.KeepAlive(t)
	return err
}

// Info returns the tensor's dtype, shape and byte size.
func (t *Tensor) Info() (TensorInfo, error) {
	var info TensorInfo
	err := t.read(func(ptr *C.pts_tensor_t) (err error) {
		info, err = cTensorInfo(ptr)
		return err
	})
	return info, err
}

// DType returns the tensor's dtype.
func (t *Tensor) DType() (DType, error) {
	info, err := t.Info()
	return info.DType, err
}

// Shape returns the tensor's shape (empty for a scalar).
func (t *Tensor) Shape() ([]int64, error) {
	info, err := t.Info()
	return info.Shape, err
}

// Bytes returns a copy of the tensor's elements as bytes, C-contiguous in
// the host's byte order, whatever its dtype.
func (t *Tensor) Bytes() ([]byte, error) {
	var out []byte
	err := t.read(func(ptr *C.pts_tensor_t) error {
		info, err := cTensorInfo(ptr)
		if err != nil {
			return err
		}
		out, err = cTensorCopy[byte](ptr, info)
		return err
	})
	return out, err
}

// Float32s returns a copy of a Float32 tensor's elements, in C order.
func (t *Tensor) Float32s() ([]float32, error) { return tensorValues[float32](t) }

// Float64s returns a copy of a Float64 tensor's elements, in C order.
func (t *Tensor) Float64s() ([]float64, error) { return tensorValues[float64](t) }

// Int64s returns a copy of an Int64 tensor's elements, in C order.
func (t *Tensor) Int64s() ([]int64, error) { return tensorValues[int64](t) }

// Int32s returns a copy of an Int32 tensor's elements, in C order.
func (t *Tensor) Int32s() ([]int32, error) { return tensorValues[int32](t) }

// Int16s returns a copy of an Int16 tensor's elements, in C order.
func (t *Tensor) Int16s() ([]int16, error) { return tensorValues[int16](t) }

// Int8s returns a copy of an Int8 tensor's elements, in C order.
func (t *Tensor) Int8s() ([]int8, error) { return tensorValues[int8](t) }

// Uint8s returns a copy of a Uint8 tensor's elements, in C order.
func (t *Tensor) Uint8s() ([]uint8, error) { return tensorValues[uint8](t) }

// Bools returns a copy of a Bool tensor's elements, in C order.
func (t *Tensor) Bools() ([]bool, error) { return tensorValues[bool](t) }

func tensorValues[T Element](t *Tensor) ([]T, error) {
	var out []T
	err := t.read(func(ptr *C.pts_tensor_t) error {
		info, err := cTensorInfo(ptr)
		if err != nil {
			return err
		}
		if want := dtypeOf[T](); info.DType != want {
			return errorf(CodeInvalidArgument, "the tensor is %v, not %v", info.DType, want)
		}
		out, err = cTensorCopy[T](ptr, info)
		return err
	})
	return out, err
}

// cFloat32Values copies a live Float32 handle's values and shape out
// (name is the tensor's, for the error when it has another dtype).
func cFloat32Values(name string, ptr *C.pts_tensor_t) ([]float32, []int64, error) {
	info, err := cTensorInfo(ptr)
	if err != nil {
		return nil, nil, err
	}
	if info.DType != Float32 {
		return nil, nil, errorf(CodeInvalidArgument, "tensor %q is %v, not F32", name, info.DType)
	}
	out, err := cTensorCopy[float32](ptr, info)
	return out, info.Shape, err
}

// cTensorInfo reads a live handle's dtype, shape and byte size.
func cTensorInfo(ptr *C.pts_tensor_t) (TensorInfo, error) {
	var dtype C.pts_dtype_t
	var ndim, nbytes C.size_t
	if err := takeError(C.pts_tensor_dtype(ptr, &dtype)); err != nil {
		return TensorInfo{}, err
	}
	if err := takeError(C.pts_tensor_ndim(ptr, &ndim)); err != nil {
		return TensorInfo{}, err
	}
	shape := make([]int64, int(ndim))
	if err := takeError(C.pts_tensor_shape(ptr, int64Data(shape), ndim)); err != nil {
		return TensorInfo{}, err
	}
	if err := takeError(C.pts_tensor_nbytes(ptr, &nbytes)); err != nil {
		return TensorInfo{}, err
	}
	return TensorInfo{DType: DType(dtype), Shape: shape, NumBytes: int(nbytes)}, nil
}

// cTensorCopy copies a live handle's elements (described by info) into a
// new slice of T; bool goes through bytes, so that any byte the library
// hands back becomes a valid Go bool.
func cTensorCopy[T Element](ptr *C.pts_tensor_t, info TensorInfo) ([]T, error) {
	var zero T
	size := int(unsafe.Sizeof(zero))
	if info.NumBytes%size != 0 {
		return nil, errorf(CodeInvalidArgument, "a %v tensor of %d bytes is not made of %d-byte elements",
			info.DType, info.NumBytes, size)
	}
	if _, isBool := any(zero).(bool); isBool {
		raw := make([]byte, info.NumBytes)
		if err := takeError(C.pts_tensor_copy_to_buffer(ptr, sliceData(raw), C.size_t(len(raw)))); err != nil {
			return nil, err
		}
		return any(bytesToBools(raw)).([]T), nil
	}
	out := make([]T, info.NumBytes/size)
	if err := takeError(C.pts_tensor_copy_to_buffer(ptr, sliceData(out), C.size_t(info.NumBytes))); err != nil {
		return nil, err
	}
	return out, nil
}

func bytesToBools(raw []byte) []bool {
	out := make([]bool, len(raw))
	for i, b := range raw {
		out[i] = b != 0
	}
	return out
}
