package pytorchsaver

/*
#include <pytorch_saver.h>
*/
import "C"

import (
	"errors"
	"runtime"
	"sync"
	"time"
	"unsafe"
)

// Checkpoint is an open checkpoint file, fully validated when opened
// (every CRC-32 and header), read without building a model: its metadata
// and its tensors' names, dtypes, shapes and bytes.
//
// A Checkpoint is read-only: any number of goroutines may use it at once.
// Close frees it (a finalizer does if Close is never called); after Close
// the tensor methods return an error matching ErrUsage, while the metadata
// accessors, which read a copy made at open, keep working.
type Checkpoint struct {
	mu       sync.RWMutex
	ptr      *C.pts_checkpoint_t
	cleanup  runtime.Cleanup
	metaJSON string
	// meta is metaJSON parsed; its Internals are never nil.
	meta *Metadata
}

// OpenCheckpoint opens and validates the checkpoint file at path. A
// missing file is an error matching ErrIO, a malformed one ErrFormat (the
// message names the member, tensor and byte range), a newer format
// ErrUnsupportedVersion.
func OpenCheckpoint(path string) (*Checkpoint, error) {
	return OpenCheckpointWith(path, LoadOptions{})
}

// OpenCheckpointWith is OpenCheckpoint with options: with
// LoadOptions{SkipVerify: true} the CRC-32 of the tensor data is not
// computed (every header and the metadata are still validated), for a
// file verified when it was deployed or when only its metadata is
// wanted. Copy does not apply: a Checkpoint reads tensors on demand.
func OpenCheckpointWith(path string, opts LoadOptions) (*Checkpoint, error) {
	cpath, err := cString("path", path)
	if err != nil {
		return nil, err
	}
	defer freeString(cpath)
	copts, relay, err := opts.cOptions()
	if err != nil {
		return nil, err
	}
	defer freeOptions(copts, relay)
	var ptr *C.pts_checkpoint_t
	if err := takeError(C.pts_checkpoint_open_ex(cpath, copts, &ptr)); err != nil {
		return nil, err
	}
	var meta *C.char
	if err := takeError(C.pts_checkpoint_metadata(ptr, &meta)); err != nil {
		C.pts_checkpoint_free(ptr)
		return nil, err
	}
	c := &Checkpoint{metaJSON: C.GoString(meta)}
	c.meta, err = ParseMetadata(c.metaJSON)
	if err == nil && c.meta.Internals == nil {
		err = schemaError(keyInternals, "missing")
	}
	if err != nil {
		C.pts_checkpoint_free(ptr)
		var e *Error
		if errors.As(err, &e) { // made by the parse: this call's own
			e.Message = path + ": " + e.Message
		}
		return nil, err
	}
	c.ptr = ptr
	c.cleanup = runtime.AddCleanup(c, freeCheckpoint, ptr)
	return c, nil
}

func freeCheckpoint(ptr *C.pts_checkpoint_t) { C.pts_checkpoint_free(ptr) }

// Close frees the checkpoint. Calling it again does nothing; it may run
// while other goroutines use the checkpoint (their calls then fail with
// ErrUsage). It always returns nil.
func (c *Checkpoint) Close() error {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ptr != nil {
		c.cleanup.Stop()
		C.pts_checkpoint_free(c.ptr)
		c.ptr = nil
	}
	return nil
}

// MetadataJSON returns the whole metadata.json object as JSON text: the
// flat keys (model_kwargs, optim_kwargs, scheduler_kwargs, timestamp, the
// user's keys) and the format internals under "__pytorch_saver__".
func (c *Checkpoint) MetadataJSON() string { return c.metaJSON }

// Metadata returns the whole metadata.json object, as MetadataJSON, parsed
// by encoding/json (numbers are float64). Each call returns a new map.
func (c *Checkpoint) Metadata() map[string]any { return c.meta.objectCopy() }

// TypedMetadata returns the whole metadata.json document, typed. Each
// call returns a new copy; its Internals are never nil.
func (c *Checkpoint) TypedMetadata() *Metadata { return c.meta.clone() }

// UserMetadata returns the keys the user saved with the checkpoint (such
// as "loss" and "epoch"): the metadata without model_kwargs, optim_kwargs,
// scheduler_kwargs, timestamp and __pytorch_saver__.
func (c *Checkpoint) UserMetadata() map[string]any { return copyObject(c.meta.User) }

// FormatVersion returns the file's format version (1 or 2).
func (c *Checkpoint) FormatVersion() int { return c.meta.Internals.FormatVersion }

// Kind tells a training checkpoint from an inference or weights file.
func (c *Checkpoint) Kind() Kind { return c.meta.Internals.Kind }

// ModelClass returns the model's class name, such as
// "pytorch_saver.models.MLP" or "torch.nn.Linear"; "" for a weights
// file.
func (c *Checkpoint) ModelClass() string { return c.meta.Internals.ModelClass }

// ModelKwargs returns the model's constructor kwargs (typed values in a
// version 2 file, see Metadata), or nil for a weights file.
func (c *Checkpoint) ModelKwargs() map[string]any { return copyObject(c.meta.ModelKwargs) }

// OptimizerClass returns the optimizer's class name, such as
// "torch.optim.Adam", or "" when the file has no optimizer.
func (c *Checkpoint) OptimizerClass() string {
	if o := c.meta.Internals.Optimizer; o != nil {
		return o.Class
	}
	return ""
}

// OptimizerKwargs returns the optimizer's constructor kwargs, or nil when
// the file has no optimizer.
func (c *Checkpoint) OptimizerKwargs() map[string]any { return copyObject(c.meta.OptimizerKwargs) }

// SchedulerClass returns the LR scheduler's class name, such as
// "torch.optim.lr_scheduler.StepLR", or "" when the file has none.
func (c *Checkpoint) SchedulerClass() string {
	if s := c.meta.Internals.Scheduler; s != nil {
		return s.Class
	}
	return ""
}

// SchedulerKwargs returns the scheduler's constructor kwargs, or nil when
// the file has no scheduler.
func (c *Checkpoint) SchedulerKwargs() map[string]any { return copyObject(c.meta.SchedulerKwargs) }

// Extra returns the extra training state in file order (format version
// 2: RNG states, a gradient scaler, counters, ...), nil when the file has
// none. Its tensors are read from MemberExtra by the names of the
// TensorRef values in each State.
func (c *Checkpoint) Extra() []ExtraEntry {
	extra := c.meta.Internals.Extra
	if extra == nil {
		return nil
	}
	out := make([]ExtraEntry, len(extra))
	for i, e := range extra {
		out[i] = ExtraEntry{Name: e.Name, Class: e.Class, State: cloneTyped(e.State)}
	}
	return out
}

// Timestamp returns the time the file was saved (whole seconds, UTC).
func (c *Checkpoint) Timestamp() time.Time { return time.Unix(c.meta.Timestamp, 0).UTC() }

// Producer returns which implementation wrote the file.
func (c *Checkpoint) Producer() Producer { return c.meta.Internals.Producer }

// with runs f on the live handle under the read lock.
func (c *Checkpoint) with(f func(ptr *C.pts_checkpoint_t) error) error {
	if c == nil {
		return errorf(CodeNullArgument, "the checkpoint is nil")
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.ptr == nil {
		return errClosed("checkpoint")
	}
	maybeGC()
	err := f(c.ptr)
	runtime.KeepAlive(c)
	return err
}

// withName is with, with name as a C string.
func (c *Checkpoint) withName(name string, f func(ptr *C.pts_checkpoint_t, cname *C.char) error) error {
	cname, err := cString("tensor name", name)
	if err != nil {
		return err
	}
	defer freeString(cname)
	return c.with(func(ptr *C.pts_checkpoint_t) error { return f(ptr, cname) })
}

// TensorNames returns the names of a member's tensors in file order (none
// for the optimizer member of an inference file, nor for the extra member
// of a file without extra state).
func (c *Checkpoint) TensorNames(member Member) ([]string, error) {
	var names []string
	err := c.with(func(ptr *C.pts_checkpoint_t) error {
		var n C.size_t
		if err := takeError(C.pts_checkpoint_tensor_count(ptr, C.pts_member_t(member), &n)); err != nil {
			return err
		}
		names = make([]string, 0, int(n))
		for i := C.size_t(0); i < n; i++ {
			var name *C.char
			if err := takeError(C.pts_checkpoint_tensor_name(ptr, C.pts_member_t(member), i, &name)); err != nil {
				return err
			}
			names = append(names, C.GoString(name))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return names, nil
}

// TensorInfo returns a tensor's dtype, shape and byte size without reading
// it. An unknown name is an error matching ErrNotFound.
func (c *Checkpoint) TensorInfo(member Member, name string) (TensorInfo, error) {
	var info TensorInfo
	err := c.withName(name, func(ptr *C.pts_checkpoint_t, cname *C.char) (err error) {
		info, err = cCheckpointInfo(ptr, member, cname)
		return err
	})
	return info, err
}

func cCheckpointInfo(ptr *C.pts_checkpoint_t, member Member, cname *C.char) (TensorInfo, error) {
	var dtype C.pts_dtype_t
	var shape *C.int64_t
	var ndim, nbytes C.size_t
	err := takeError(C.pts_checkpoint_tensor_info(ptr, C.pts_member_t(member), cname, &dtype, &shape, &ndim, &nbytes))
	if err != nil {
		return TensorInfo{}, err
	}
	dims := make([]int64, int(ndim))
	if ndim > 0 {
		copy(dims, unsafe.Slice((*int64)(unsafe.Pointer(shape)), int(ndim)))
	}
	return TensorInfo{DType: DType(dtype), Shape: dims, NumBytes: int(nbytes)}, nil
}

// ReadBytes returns a copy of a tensor's bytes as stored (C order,
// little-endian), whatever its dtype, and its shape. This is how Float16
// and BFloat16 tensors are read.
func (c *Checkpoint) ReadBytes(member Member, name string) ([]byte, []int64, error) {
	return checkpointRead[byte](c, member, name, 0)
}

// ReadFloat32 returns a copy of a Float32 tensor's elements (C order) and
// its shape. Another dtype is an error matching ErrInvalidArgument.
func (c *Checkpoint) ReadFloat32(member Member, name string) ([]float32, []int64, error) {
	return checkpointRead[float32](c, member, name, Float32)
}

// ReadFloat64 returns a copy of a Float64 tensor's elements and its shape.
func (c *Checkpoint) ReadFloat64(member Member, name string) ([]float64, []int64, error) {
	return checkpointRead[float64](c, member, name, Float64)
}

// ReadInt64 returns a copy of an Int64 tensor's elements and its shape.
func (c *Checkpoint) ReadInt64(member Member, name string) ([]int64, []int64, error) {
	return checkpointRead[int64](c, member, name, Int64)
}

// ReadInt32 returns a copy of an Int32 tensor's elements and its shape.
func (c *Checkpoint) ReadInt32(member Member, name string) ([]int32, []int64, error) {
	return checkpointRead[int32](c, member, name, Int32)
}

// ReadInt16 returns a copy of an Int16 tensor's elements and its shape.
func (c *Checkpoint) ReadInt16(member Member, name string) ([]int16, []int64, error) {
	return checkpointRead[int16](c, member, name, Int16)
}

// ReadInt8 returns a copy of an Int8 tensor's elements and its shape.
func (c *Checkpoint) ReadInt8(member Member, name string) ([]int8, []int64, error) {
	return checkpointRead[int8](c, member, name, Int8)
}

// ReadUint8 returns a copy of a Uint8 tensor's elements and its shape.
func (c *Checkpoint) ReadUint8(member Member, name string) ([]uint8, []int64, error) {
	return checkpointRead[uint8](c, member, name, Uint8)
}

// ReadBool returns a copy of a Bool tensor's elements and its shape.
func (c *Checkpoint) ReadBool(member Member, name string) ([]bool, []int64, error) {
	raw, shape, err := checkpointRead[byte](c, member, name, Bool)
	if err != nil {
		return nil, nil, err
	}
	return bytesToBools(raw), shape, nil
}

// checkpointRead copies a tensor into a new []T, refusing a dtype other
// than want (0: any; T is then byte).
func checkpointRead[T Element](c *Checkpoint, member Member, name string, want DType) ([]T, []int64, error) {
	var out []T
	var shape []int64
	err := c.withName(name, func(ptr *C.pts_checkpoint_t, cname *C.char) error {
		info, err := cCheckpointInfo(ptr, member, cname)
		if err != nil {
			return err
		}
		if want != 0 && info.DType != want {
			return errorf(CodeInvalidArgument, "tensor %q of %v is %v, not %v", name, member, info.DType, want)
		}
		var zero T
		out = make([]T, info.NumBytes/int(unsafe.Sizeof(zero)))
		err = takeError(C.pts_checkpoint_tensor_read(ptr, C.pts_member_t(member), cname,
			sliceData(out), C.size_t(info.NumBytes)))
		if err != nil {
			return err
		}
		if want != 0 {
			fromLittleEndian(out)
		}
		shape = info.Shape
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	return out, shape, nil
}

// View lends fn a tensor's bytes in place, from the file's read-only
// memory map, with no copy (C order, little-endian, not necessarily
// aligned for the dtype). The slice is valid only while fn runs: fn must
// not keep it, write to it (the memory is read-only: a write crashes the
// program), or call c.Close. View returns fn's error.
func (c *Checkpoint) View(member Member, name string, fn func(data []byte) error) error {
	return c.withName(name, func(ptr *C.pts_checkpoint_t, cname *C.char) error {
		var data *C.uint8_t
		var n C.size_t
		if err := takeError(C.pts_checkpoint_tensor_borrow(ptr, C.pts_member_t(member), cname, &data, &n)); err != nil {
			return err
		}
		view := []byte{}
		if n > 0 {
			view = unsafe.Slice((*byte)(unsafe.Pointer(data)), int(n))
		}
		return fn(view)
	})
}

// Tensor returns a tensor of the file as a new Tensor (a copy: it
// outlives the checkpoint).
func (c *Checkpoint) Tensor(member Member, name string) (*Tensor, error) {
	var out *C.pts_tensor_t
	err := c.withName(name, func(ptr *C.pts_checkpoint_t, cname *C.char) error {
		return takeError(C.pts_checkpoint_tensor(ptr, C.pts_member_t(member), cname, &out))
	})
	if err != nil {
		return nil, err
	}
	return wrapTensor(out), nil
}
