package pytorchsaver

/*
#include <stdbool.h>
#include <pytorch_saver.h>
*/
import "C"

import (
	"runtime"
	"sync"
)

// Model is a model loaded for inference: eval mode, no gradient tracking,
// no optimizer or scheduler. Unlike a Container, a Model may be used by
// any number of goroutines at once, and their Forward calls run in
// parallel: the built-in models (torch.nn.Linear, pytorch_saver.models.
// MLP, pytorch_saver.models.Sequential) always, a Go model when its
// factory called ModelBuilder.SetThreadSafe (Concurrent reports which);
// a Go model that did not runs one call at a time, inside the library.
//
//	model, metadata, err := pytorchsaver.LoadModel(path, pytorchsaver.LoadOptions{})
//	if err != nil { ... }
//	defer model.Close()
//	// from any number of goroutines:
//	output, outShape, err := model.Forward(input, []int64{batch, 4})
//
// Close frees it (a finalizer does if Close is never called). Close waits
// for the calls in flight to return and may run concurrently with them;
// calls made after Close return an error matching ErrUsage. Class and
// Concurrent keep working after Close.
type Model struct {
	// mu guards the handle's lifetime only: every call holds it for
	// reading (so calls run in parallel), Close for writing.
	mu         sync.RWMutex
	ptr        *C.pts_model_t
	cleanup    runtime.Cleanup
	class      string
	concurrent bool
}

// LoadModel loads the model of the checkpoint at path for inference,
// over the built-in classes, with the checks of LoadContainer (an
// optimizer or scheduler in the file is ignored). The zero LoadOptions
// are the defaults: verified, and zero-copy (the tensors point into a
// private mapping of the file; see LoadOptions.Copy for a file that may
// change on disk). It returns the model and the flat metadata, as
// LoadContainer does.
func LoadModel(path string, opts LoadOptions) (*Model, map[string]any, error) {
	return loadModel(nil, path, opts)
}

func loadModel(registry *C.pts_registry_t, path string, opts LoadOptions) (*Model, map[string]any, error) {
	cpath, err := cString("path", path)
	if err != nil {
		return nil, nil, err
	}
	defer freeString(cpath)
	copts, relay, err := opts.cOptions()
	if err != nil {
		return nil, nil, err
	}
	defer freeOptions(copts, relay)
	var out *C.pts_model_t
	var meta *C.char
	maybeGC()
	if err := takeError(C.pts_model_load(registry, cpath, copts, &out, &meta)); err != nil {
		return nil, nil, err
	}
	text := takeString(meta)
	var class *C.char
	var concurrent C.bool
	err = takeError(C.pts_model_class(out, &class))
	if err == nil {
		err = takeError(C.pts_model_is_concurrent(out, &concurrent))
	}
	if err != nil {
		C.pts_model_free(out)
		return nil, nil, err
	}
	m := &Model{ptr: out, class: C.GoString(class), concurrent: bool(concurrent)}
	m.cleanup = runtime.AddCleanup(m, freeModel, out)
	metadata, err := flatMetadata(text)
	if err != nil {
		m.Close()
		return nil, nil, err
	}
	return m, metadata, nil
}

func freeModel(ptr *C.pts_model_t) { C.pts_model_free(ptr) }

// Close frees the model, once the Forward calls in flight have returned
// (a Tensor obtained from StateTensor keeps its storage). Calling it again
// does nothing. It always returns nil. A ForwardFunc must not call or
// close the model it runs in.
func (m *Model) Close() error {
	if m == nil {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.ptr != nil {
		m.cleanup.Stop()
		C.pts_model_free(m.ptr)
		m.ptr = nil
	}
	return nil
}

// read runs f on the live handle, holding it for reading: any number of
// calls run at once, and Close waits for them.
func (m *Model) read(f func(ptr *C.pts_model_t) error) error {
	if m == nil {
		return errorf(CodeNullArgument, "the model is nil")
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.ptr == nil {
		return errClosed("model")
	}
	maybeGC()
	err := f(m.ptr)
	runtime.KeepAlive(m)
	return err
}

// Class returns the model's class name, such as
// "pytorch_saver.models.Sequential".
func (m *Model) Class() string { return m.class }

// Concurrent reports whether Forward calls on the model run in parallel
// (true for the built-in models and for Go models whose factory called
// ModelBuilder.SetThreadSafe) or one at a time (false).
func (m *Model) Concurrent() bool { return m.concurrent }

// Forward runs the model (eval mode, no gradient tracking) on a Float32
// input of the given shape (len(input) must be the product of shape), and
// returns the output's elements and shape. Any number of goroutines may
// call it at once. An input the model cannot take (a wrong shape) is an
// error matching ErrTorch, or ErrCallback for a model written in Go.
func (m *Model) Forward(input []float32, shape []int64) ([]float32, []int64, error) {
	x, err := newCTensor(Float32, shape, sliceData(input), len(input)*4)
	if err != nil {
		return nil, nil, err
	}
	defer C.pts_tensor_free(x)
	var y *C.pts_tensor_t
	err = m.read(func(ptr *C.pts_model_t) error {
		return takeError(C.pts_model_forward(ptr, x, &y))
	})
	if err != nil {
		return nil, nil, err
	}
	// The output is a tensor of its own: read it without the model.
	defer C.pts_tensor_free(y)
	info, err := cTensorInfo(y)
	if err != nil {
		return nil, nil, err
	}
	if info.DType != Float32 {
		return nil, nil, errorf(CodeInvalidArgument, "the model's output is %v, not F32: use ForwardTensor", info.DType)
	}
	out, err := cTensorCopy[float32](y, info)
	if err != nil {
		return nil, nil, err
	}
	return out, info.Shape, nil
}

// ForwardTensor runs the model (eval mode, no gradient tracking) on a
// tensor of any dtype (an Embedding takes Int64), and returns the output
// as a new Tensor. Any number of goroutines may call it at once.
func (m *Model) ForwardTensor(input *Tensor) (*Tensor, error) {
	var y *C.pts_tensor_t
	// Locks are taken model first, then tensor, as Container does.
	err := m.read(func(ptr *C.pts_model_t) error {
		return input.read(func(x *C.pts_tensor_t) error {
			return takeError(C.pts_model_forward(ptr, x, &y))
		})
	})
	if err != nil {
		return nil, err
	}
	return wrapTensor(y), nil
}

// StateTensor returns a tensor of the model's state dict (a parameter or
// a buffer) by name, as a Tensor sharing its storage: read it (writing to
// it while Forward calls run is a data race); it keeps the storage alive
// after the model is closed. An unknown name is an error matching
// ErrNotFound.
func (m *Model) StateTensor(name string) (*Tensor, error) {
	cname, err := cString("tensor name", name)
	if err != nil {
		return nil, err
	}
	defer freeString(cname)
	var t *C.pts_tensor_t
	err = m.read(func(ptr *C.pts_model_t) error {
		return takeError(C.pts_model_state_tensor(ptr, cname, &t))
	})
	if err != nil {
		return nil, err
	}
	return wrapTensor(t), nil
}

// StateFloat32 returns a copy of a Float32 tensor of the model's state
// dict and its shape. An unknown name is an error matching ErrNotFound,
// another dtype ErrInvalidArgument.
func (m *Model) StateFloat32(name string) ([]float32, []int64, error) {
	t, err := m.StateTensor(name)
	if err != nil {
		return nil, nil, err
	}
	defer t.Close()
	var out []float32
	var shape []int64
	err = t.read(func(ptr *C.pts_tensor_t) error {
		out, shape, err = cFloat32Values(name, ptr)
		return err
	})
	if err != nil {
		return nil, nil, err
	}
	return out, shape, nil
}
