package pytorchsaver

/*
#include <stdint.h>
#include <pytorch_saver.h>
#include "callbacks.h"
*/
import "C"

import (
	"encoding/json"
	"runtime"
	"strings"
	"sync"
)

// ModelFactory builds a model written in Go, for a container that
// initializes or loads the class it is registered under. It reads the
// constructor kwargs from kwargs, adds the model's tensors to model
// (parameters in the order an optimizer should see them, then buffers)
// and sets its forward function. loading is true when the tensors' values
// are about to be overwritten from a file: then make the tensors with
// EmptyTensor (uninitialized, untouched memory) rather than filling them,
// since the library compares them with the file before writing anything
// and a file's kwargs must not make the loader fill memory the file does
// not hold. A factory whose ForwardFunc only reads the model should call
// ModelBuilder.SetThreadSafe, so that a Model runs it concurrently.
//
// An error it returns fails the Initialize or LoadContainer call that ran
// it, with ErrInvalidKwargs for an error matching it (such as a Kwargs
// getter's) and ErrFactory otherwise; a panic is recovered into
// ErrFactory. It may be called from several goroutines at once (one per
// container or model being built), and runs while the container's lock is
// held (and, for Registry.LoadContainer and Registry.LoadModel, the
// registry's): it must not call methods of that container or register on
// that registry, nor call runtime.Goexit (t.FailNow), which cannot unwind
// through the C library.
type ModelFactory func(kwargs *Kwargs, loading bool, model *ModelBuilder) error

// ForwardFunc is a Go model's forward function: it computes the output
// (its elements in C order, and its shape) for an F32 input of the given
// shape. train is true for a training-mode forward; Go cannot compute
// gradients, so it matters only to models that behave differently. It
// reads the model's current parameters from the Tensors the factory
// added (steps and loads change them in place). An error it returns, or a
// panic, fails the Forward call with ErrCallback. Like the factory, it
// runs under the container's lock and must not use that container.
//
// For a Model (LoadModel), it runs with train false while the model's
// handle is held for reading: it must not call or Close that model (a
// Close, pending or its own, would make it wait forever). It runs on several goroutines at once if the
// factory called ModelBuilder.SetThreadSafe, one call at a time
// otherwise.
type ForwardFunc func(input []float32, shape []int64, train bool) (output []float32, outputShape []int64, err error)

// Registry maps class names to model factories: the built-in classes
// (torch.nn.Linear, pytorch_saver.models.MLP, pytorch_saver.models.
// Sequential) from the start, and the Go models registered with
// RegisterModel. Containers made from it (NewContainer, LoadContainer)
// take a snapshot of it, so registering later does not change them, and
// they keep their factories alive after the registry is closed.
//
// A Registry may be shared by goroutines: RegisterModel takes its lock
// exclusively, the other methods share it. Close frees it (a finalizer
// does if Close is never called); after Close its methods return an error
// matching ErrUsage.
type Registry struct {
	mu      sync.RWMutex
	ptr     *C.pts_registry_t
	cleanup runtime.Cleanup
}

// NewRegistry returns a registry holding the built-in classes.
func NewRegistry() (*Registry, error) {
	var out *C.pts_registry_t
	if err := takeError(C.pts_registry_new(&out)); err != nil {
		return nil, err
	}
	r := &Registry{ptr: out}
	r.cleanup = runtime.AddCleanup(r, freeRegistry, out)
	return r, nil
}

func freeRegistry(ptr *C.pts_registry_t) { C.pts_registry_free(ptr) }

// Close frees the registry; containers made from it keep their snapshot.
// Calling it again does nothing. It always returns nil.
func (r *Registry) Close() error {
	if r == nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ptr != nil {
		r.cleanup.Stop()
		C.pts_registry_free(r.ptr)
		r.ptr = nil
	}
	return nil
}

// read runs f on the live handle under the shared lock.
func (r *Registry) read(f func(ptr *C.pts_registry_t) error) error {
	if r == nil {
		return errorf(CodeNullArgument, "the registry is nil")
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.ptr == nil {
		return errClosed("registry")
	}
	maybeGC()
	err := f(r.ptr)
	runtime.KeepAlive(r)
	return err
}

// register hands entry to the library under the exclusive lock: f passes
// the handle to a registering call. The library owns the handle from the
// call on, whatever the outcome: its finalizer (ptsgoRelease) deletes it,
// at once on error.
func (r *Registry) register(entry any, f func(ptr *C.pts_registry_t, h C.uintptr_t) *C.pts_error_t) error {
	if r == nil {
		return errorf(CodeNullArgument, "the registry is nil")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ptr == nil {
		return errClosed("registry")
	}
	maybeGC()
	err := takeError(f(r.ptr, C.uintptr_t(newHandle(entry))))
	runtime.KeepAlive(r)
	return err
}

// Contains reports whether a class name is registered.
func (r *Registry) Contains(name string) (bool, error) {
	return r.contains(name, func(ptr *C.pts_registry_t, cname *C.char, out *C.bool) *C.pts_error_t {
		return C.pts_registry_contains(ptr, cname, out)
	})
}

// contains asks the library, through query, whether name is registered.
func (r *Registry) contains(name string, query func(*C.pts_registry_t, *C.char, *C.bool) *C.pts_error_t) (bool, error) {
	cname, err := cString("class name", name)
	if err != nil {
		return false, err
	}
	defer freeString(cname)
	var out C.bool
	err = r.read(func(ptr *C.pts_registry_t) error {
		return takeError(query(ptr, cname, &out))
	})
	return bool(out), err
}

// RegisterModel registers a Go model factory under a class name. Use the
// Python class's "module.QualName" so that files written by Python
// resolve to it. A name already taken is an error matching
// ErrDuplicateName.
//
// The registry and every container built from it hold the factory; it is
// released when the last of them is freed. The library holds it through a
// runtime/cgo handle, which the garbage collector treats as a root: a
// factory (or forward function) that refers to its own Registry or
// Container keeps that value reachable, so only Close frees it.
func (r *Registry) RegisterModel(name string, factory ModelFactory) error {
	if factory == nil {
		return errorf(CodeNullArgument, "the factory for %q is nil", name)
	}
	cname, err := cString("class name", name)
	if err != nil {
		return err
	}
	defer freeString(cname)
	return r.register(&factoryEntry{name: name, factory: factory}, func(ptr *C.pts_registry_t, h C.uintptr_t) *C.pts_error_t {
		return C.ptsgo_register_model(ptr, cname, h)
	})
}

// NewContainer returns an empty container over the registry's classes
// (a snapshot taken now).
func (r *Registry) NewContainer() (*Container, error) {
	var c *Container
	err := r.read(func(ptr *C.pts_registry_t) (err error) {
		c, err = newContainer(ptr)
		return err
	})
	return c, err
}

// LoadContainer is the package's LoadContainer over the registry's
// classes: a file naming a registered Go model rebuilds it through its
// factory (with loading true) and loads its tensors.
func (r *Registry) LoadContainer(path string) (*Container, map[string]any, error) {
	var c *Container
	var m map[string]any
	err := r.read(func(ptr *C.pts_registry_t) (err error) {
		c, m, err = loadContainer(ptr, path, LoadOptions{})
		return err
	})
	return c, m, err
}

// LoadContainerWith is Registry.LoadContainer with options (see
// LoadOptions and the package's LoadContainerWith).
func (r *Registry) LoadContainerWith(path string, opts LoadOptions) (*Container, map[string]any, error) {
	var c *Container
	var m map[string]any
	err := r.read(func(ptr *C.pts_registry_t) (err error) {
		c, m, err = loadContainer(ptr, path, opts)
		return err
	})
	return c, m, err
}

// LoadModel is the package's LoadModel over the registry's classes: a
// file naming a registered Go model rebuilds it through its factory (with
// loading true). Its forward runs concurrently only if the factory called
// ModelBuilder.SetThreadSafe.
func (r *Registry) LoadModel(path string, opts LoadOptions) (*Model, map[string]any, error) {
	var m *Model
	var meta map[string]any
	err := r.read(func(ptr *C.pts_registry_t) (err error) {
		m, meta, err = loadModel(ptr, path, opts)
		return err
	})
	return m, meta, err
}

// Kwargs are the constructor kwargs a ModelFactory receives. Read them
// with the getters, whose errors match ErrInvalidKwargs and name the
// class and kwarg: a kwarg that no getter read is refused as unexpected
// once the factory returns, as Python refuses an unexpected keyword
// argument, unless the factory took them all with JSON or Decode.
//
// Kwargs are valid only during the factory call; afterwards every method
// returns an error matching ErrUsage.
type Kwargs struct {
	mu  sync.Mutex
	ptr *C.pts_kwargs_t
}

func (k *Kwargs) invalidate() {
	k.mu.Lock()
	k.ptr = nil
	k.mu.Unlock()
}

// get runs f on the live kwargs with key as a C string.
func (k *Kwargs) get(key string, f func(ptr *C.pts_kwargs_t, ckey *C.char) *C.pts_error_t) error {
	ckey, err := cString("kwarg name", key)
	if err != nil {
		return err
	}
	defer freeString(ckey)
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.ptr == nil {
		return errorf(CodeUsage, "kwargs used after the factory returned")
	}
	return takeError(f(k.ptr, ckey))
}

// Int returns an integer kwarg that must be present.
func (k *Kwargs) Int(key string) (int64, error) {
	var out C.int64_t
	err := k.get(key, func(ptr *C.pts_kwargs_t, ckey *C.char) *C.pts_error_t {
		return C.pts_kwargs_i64(ptr, ckey, &out)
	})
	return int64(out), err
}

// IntOr returns an integer kwarg, or def when it is absent or null.
func (k *Kwargs) IntOr(key string, def int64) (int64, error) {
	out := C.int64_t(def)
	err := k.get(key, func(ptr *C.pts_kwargs_t, ckey *C.char) *C.pts_error_t {
		return C.pts_kwargs_i64_or(ptr, ckey, C.int64_t(def), &out)
	})
	return int64(out), err
}

// FloatOr returns a number kwarg (an integer is accepted, as in Python),
// or def when it is absent or null.
func (k *Kwargs) FloatOr(key string, def float64) (float64, error) {
	out := C.double(def)
	err := k.get(key, func(ptr *C.pts_kwargs_t, ckey *C.char) *C.pts_error_t {
		return C.pts_kwargs_f64_or(ptr, ckey, C.double(def), &out)
	})
	return float64(out), err
}

// BoolOr returns a boolean kwarg, or def when it is absent or null.
func (k *Kwargs) BoolOr(key string, def bool) (bool, error) {
	out := C.bool(def)
	err := k.get(key, func(ptr *C.pts_kwargs_t, ckey *C.char) *C.pts_error_t {
		return C.pts_kwargs_bool_or(ptr, ckey, C.bool(def), &out)
	})
	return bool(out), err
}

// JSON returns the whole kwargs object as JSON text. The factory then
// answers for refusing kwargs it does not accept: none counts as
// unexpected afterwards.
func (k *Kwargs) JSON() (string, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.ptr == nil {
		return "", errorf(CodeUsage, "kwargs used after the factory returned")
	}
	var out *C.char
	if err := takeError(C.pts_kwargs_json(k.ptr, &out)); err != nil {
		return "", err
	}
	return takeString(out), nil
}

// Decode decodes the whole kwargs object into v (as JSON does) and
// refuses, with an error matching ErrInvalidKwargs, a kwarg that a struct
// v has no field for or a value of the wrong type. As with JSON, no kwarg
// counts as unexpected afterwards.
func (k *Kwargs) Decode(v any) error {
	text, err := k.JSON()
	if err != nil {
		return err
	}
	dec := json.NewDecoder(strings.NewReader(text))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return errorf(CodeInvalidKwargs, "%v", err)
	}
	return nil
}

// ModelBuilder is what a ModelFactory fills in: the model's tensors and
// its forward function. Valid only during the factory call; afterwards
// every method returns an error matching ErrUsage.
type ModelBuilder struct {
	mu    sync.Mutex
	ptr   *C.pts_model_builder_t
	class string
}

func (b *ModelBuilder) invalidate() {
	b.mu.Lock()
	b.ptr = nil
	b.mu.Unlock()
}

// with runs f on the live builder.
func (b *ModelBuilder) with(f func(ptr *C.pts_model_builder_t) error) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ptr == nil {
		return errorf(CodeUsage, "the model builder of %s used after the factory returned", b.class)
	}
	return f(b.ptr)
}

// AddParameter adds a trainable parameter under its PyTorch state-dict
// name (such as "fc1.weight"), in the order an optimizer should see the
// parameters. The model shares t's storage, with no copy: optimizer steps
// and loads change t in place, so the forward function reads the current
// values from t. Keep t (the forward function's closure holds it) and do
// not Close it while the model lives.
func (b *ModelBuilder) AddParameter(name string, t *Tensor) error {
	return b.add(name, t, true)
}

// AddBuffer adds a buffer: state saved and loaded but not trained (such
// as "bn.running_mean"), shared as AddParameter shares.
func (b *ModelBuilder) AddBuffer(name string, t *Tensor) error {
	return b.add(name, t, false)
}

func (b *ModelBuilder) add(name string, t *Tensor, parameter bool) error {
	cname, err := cString("tensor name", name)
	if err != nil {
		return err
	}
	defer freeString(cname)
	return b.with(func(ptr *C.pts_model_builder_t) error {
		return t.read(func(tp *C.pts_tensor_t) error {
			if parameter {
				return takeError(C.pts_model_builder_add_parameter(ptr, cname, tp))
			}
			return takeError(C.pts_model_builder_add_buffer(ptr, cname, tp))
		})
	})
}

// SetThreadSafe declares that the model's ForwardFunc, called with train
// false, may run on several goroutines at once (it only reads the model's
// tensors and its own immutable state), so that a Model (LoadModel) runs
// concurrent Forward calls in parallel. Without it a Model runs this
// model's forward one call at a time. Containers are not affected: they
// run one call at a time whatever the model.
func (b *ModelBuilder) SetThreadSafe() error {
	return b.with(func(ptr *C.pts_model_builder_t) error {
		return takeError(C.pts_model_builder_set_thread_safe(ptr))
	})
}

// SetForward sets the model's forward function. Setting it twice is an
// error matching ErrUsage. A model without one can be saved and loaded
// but not run (Forward fails with ErrUsage).
func (b *ModelBuilder) SetForward(forward ForwardFunc) error {
	if forward == nil {
		return errorf(CodeNullArgument, "the forward function of %s is nil", b.class)
	}
	return b.with(func(ptr *C.pts_model_builder_t) error {
		// The library owns the handle from here on, whatever the
		// outcome; its finalizer deletes it when the model is dropped.
		h := newHandle(&modelInstance{class: b.class, forward: forward})
		return takeError(C.ptsgo_set_forward(ptr, C.uintptr_t(h)))
	})
}
