package pytorchsaver

// User optimizer classes written in Go (Registry.RegisterOptimizer): the
// class's declarations, the group and state a step reads and writes, and
// the callbacks the library makes (through the trampolines of
// callbacks.c) with the class as a cgo.Handle.

/*
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <pytorch_saver.h>
#include "callbacks.h"
*/
import "C"

import (
	"encoding/json"
	"fmt"
	"runtime/cgo"
	"strings"
	"sync"
	"unsafe"
)

// Hyperparameter is one param_group key of an optimizer class, which is
// also one of its kwargs, with its default. A value given for it must
// have the default's JSON type (a number, a bool, a string, a list, an
// object; a nil default accepts anything).
type Hyperparameter struct {
	Key     string
	Default any
}

// OptimizerStateKey is one per-parameter state key of an optimizer class.
type OptimizerStateKey struct {
	Name string
	// Rank0: a rank-0 tensor (a step counter); otherwise a tensor of the
	// parameter's shape.
	Rank0 bool
	// Optional: a parameter's non-empty state need not hold it (a file
	// whose state lacks a required key is refused).
	Optional bool
}

// OptimizerStepFunc updates param in place (Tensor.SetFloat32s) from grad,
// reading the group's hyperparameters and creating or advancing state.
// The library calls it under no_grad for every parameter that has a
// gradient, group by group, from the goroutine that called Step. The
// tensors, group and state are valid only during the call. An error it
// returns, or a panic, fails the Step call with ErrCallback and its
// message. Like a ModelFactory, it runs under the container's lock and
// must not use that container.
type OptimizerStepFunc func(group OptimizerGroup, param *Tensor, grad *Tensor, state OptimizerState) error

// OptimizerClass is an optimizer written in Go. Registered under a name
// (Registry.RegisterOptimizer), it initializes, steps, saves and loads
// like a built-in one: kwargs checked against Hyperparameters (unknown
// kwargs refused, the "param_groups" kwarg for several groups),
// schedulers changing "lr", its state saved in PyTorch's layout and
// checked against StateKeys on load.
type OptimizerClass struct {
	// Hyperparameters in PyTorch's order; "lr" (a number) is required.
	Hyperparameters []Hyperparameter
	StateKeys       []OptimizerStateKey
	Step            OptimizerStepFunc
	// CheckGroup, optional, refuses a group's hyperparameters (a range, a
	// combination) on kwargs and on groups loaded from a file.
	CheckGroup func(group OptimizerGroup) error
}

// optimizerEntry is what an optimizer class's handle holds.
type optimizerEntry struct {
	name  string
	class OptimizerClass
}

// hyperparametersJSON is the class's defaults as one JSON object, in order.
func (c *OptimizerClass) hyperparametersJSON(name string) (string, error) {
	var b strings.Builder
	b.WriteByte('{')
	for i, hp := range c.Hyperparameters {
		key, err := json.Marshal(hp.Key)
		if err != nil {
			return "", err
		}
		value, err := json.Marshal(hp.Default)
		if err != nil {
			return "", errorf(CodeInvalidArgument, "%s: the default of %q has no JSON form: %v", name, hp.Key, err)
		}
		if i > 0 {
			b.WriteByte(',')
		}
		b.Write(key)
		b.WriteByte(':')
		b.Write(value)
	}
	b.WriteByte('}')
	return b.String(), nil
}

// RegisterOptimizer registers a Go optimizer class under a name (use the
// Python class's "module.QualName"). A torch.optim name or a name already
// taken is an error matching ErrDuplicateName; a class without "lr" one
// matching ErrInvalidKwargs. The registry and every container built from
// it hold the class; it is released when the last of them is freed.
func (r *Registry) RegisterOptimizer(name string, class OptimizerClass) error {
	if class.Step == nil {
		return errorf(CodeNullArgument, "the step function of %q is nil", name)
	}
	hyper, err := class.hyperparametersJSON(name)
	if err != nil {
		return err
	}
	cname, err := cString("class name", name)
	if err != nil {
		return err
	}
	defer freeString(cname)
	chyper := C.CString(hyper)
	defer C.free(unsafe.Pointer(chyper))
	// The key table lives in C memory: C may not keep Go pointers.
	n := len(class.StateKeys)
	var keys *C.pts_optim_state_key_t
	if n > 0 {
		keys = (*C.pts_optim_state_key_t)(C.calloc(C.size_t(n), C.size_t(unsafe.Sizeof(C.pts_optim_state_key_t{}))))
		defer C.free(unsafe.Pointer(keys))
		table := unsafe.Slice(keys, n)
		for i, k := range class.StateKeys {
			ck, err := cString("state key", k.Name)
			if err != nil {
				return err
			}
			defer freeString(ck)
			table[i] = C.pts_optim_state_key_t{name: ck, rank0: C.bool(k.Rank0), required: C.bool(!k.Optional)}
		}
	}
	return r.register(&optimizerEntry{name: name, class: class}, func(ptr *C.pts_registry_t, h C.uintptr_t) *C.pts_error_t {
		return C.ptsgo_register_optimizer(ptr, cname, chyper, keys, C.size_t(n), C.bool(class.CheckGroup != nil), h)
	})
}

// ContainsOptimizer reports whether an optimizer class name is registered
// (the built-in torch.optim classes are always there, not registered).
func (r *Registry) ContainsOptimizer(name string) (bool, error) {
	return r.contains(name, func(ptr *C.pts_registry_t, cname *C.char, out *C.bool) *C.pts_error_t {
		return C.pts_registry_contains_optimizer(ptr, cname, out)
	})
}

// callHandle is a library pointer valid during one callback.
type callHandle[P comparable] struct {
	mu  sync.Mutex
	ptr P
}

func (h *callHandle[P]) invalidate() {
	h.mu.Lock()
	var none P
	h.ptr = none
	h.mu.Unlock()
}

// use runs f on the live pointer, or fails after the callback returned.
func (h *callHandle[P]) use(what string, f func(ptr P) error) error {
	if h == nil {
		return errorf(CodeNullArgument, "the %s is nil", what)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	var none P
	if h.ptr == none {
		return errorf(CodeUsage, "the %s was used after the call it was passed to returned", what)
	}
	return f(h.ptr)
}

// OptimizerGroup is a parameter group's hyperparameters, as a step or a
// group check reads them; valid only during that call.
type OptimizerGroup struct {
	h *callHandle[*C.pts_optim_group_t]
}

func (g OptimizerGroup) get(key string, f func(ptr *C.pts_optim_group_t, ckey *C.char) *C.pts_error_t) error {
	ckey, err := cString("hyperparameter name", key)
	if err != nil {
		return err
	}
	defer freeString(ckey)
	return g.h.use("optimizer group", func(ptr *C.pts_optim_group_t) error { return takeError(f(ptr, ckey)) })
}

// Float returns a number hyperparameter (an integer is accepted); missing
// or not a number is an error matching ErrInvalidState.
func (g OptimizerGroup) Float(key string) (float64, error) {
	var out C.double
	err := g.get(key, func(ptr *C.pts_optim_group_t, ckey *C.char) *C.pts_error_t {
		return C.pts_optim_group_f64(ptr, ckey, &out)
	})
	return float64(out), err
}

// Int returns an integer hyperparameter.
func (g OptimizerGroup) Int(key string) (int64, error) {
	var out C.int64_t
	err := g.get(key, func(ptr *C.pts_optim_group_t, ckey *C.char) *C.pts_error_t {
		return C.pts_optim_group_i64(ptr, ckey, &out)
	})
	return int64(out), err
}

// Bool returns a boolean hyperparameter.
func (g OptimizerGroup) Bool(key string) (bool, error) {
	var out C.bool
	err := g.get(key, func(ptr *C.pts_optim_group_t, ckey *C.char) *C.pts_error_t {
		return C.pts_optim_group_bool(ptr, ckey, &out)
	})
	return bool(out), err
}

// LR returns the group's learning rate (what schedulers change).
func (g OptimizerGroup) LR() (float64, error) { return g.Float("lr") }

// OptimizerState is one parameter's optimizer state (PyTorch's
// optimizer.state[p]), as a step reads and writes it; valid only during
// the step.
type OptimizerState struct {
	h *callHandle[*C.pts_optim_state_t]
}

// Get returns state key as a Tensor sharing its storage (write it with
// SetFloat32s to update the state in place), or nil when the state has no
// such key (the first step).
func (s OptimizerState) Get(key string) (*Tensor, error) {
	ckey, err := cString("state key", key)
	if err != nil {
		return nil, err
	}
	defer freeString(ckey)
	var out *C.pts_tensor_t
	err = s.h.use("optimizer state", func(ptr *C.pts_optim_state_t) error {
		return takeError(C.pts_optim_state_get(ptr, ckey, &out))
	})
	if err != nil || out == nil {
		return nil, err
	}
	return wrapTensor(out), nil
}

// Set sets state key (one of the class's state keys) to share t's
// storage.
func (s OptimizerState) Set(key string, t *Tensor) error {
	ckey, err := cString("state key", key)
	if err != nil {
		return err
	}
	defer freeString(ckey)
	return t.read(func(tensor *C.pts_tensor_t) error {
		return s.h.use("optimizer state", func(ptr *C.pts_optim_state_t) error {
			return takeError(C.pts_optim_state_set(ptr, ckey, tensor))
		})
	})
}

// sharedTensor is a new Tensor sharing a borrowed handle's tensor, for
// Go code to hold while the library keeps its own handle.
func sharedTensor(ptr *C.pts_tensor_t) (*Tensor, error) {
	var raw unsafe.Pointer
	if err := takeError(C.pts_tensor_torch_ptr(ptr, &raw)); err != nil {
		return nil, err
	}
	var out *C.pts_tensor_t
	if err := takeError(C.pts_tensor_from_torch(raw, &out)); err != nil {
		return nil, err
	}
	return wrapTensor(out), nil
}

func optimizerOf(handle C.uintptr_t) (*optimizerEntry, *C.pts_error_t) {
	entry, ok := cgo.Handle(handle).Value().(*optimizerEntry)
	if !ok {
		return nil, newCError(CodeCallback, "internal error: the optimizer's handle holds no Go optimizer class")
	}
	return entry, nil
}

//export ptsgoOptimStep
func ptsgoOptimStep(handle C.uintptr_t, group *C.pts_optim_group_t, param *C.pts_tensor_t, grad *C.pts_tensor_t,
	state *C.pts_optim_state_t) (result *C.pts_error_t) {
	class := "a Go optimizer"
	defer func() {
		if p := recover(); p != nil {
			result = newCError(CodeCallback, fmt.Sprintf("panic in the step of %s: %v", class, p))
		}
	}()
	entry, cerr := optimizerOf(handle)
	if cerr != nil {
		return cerr
	}
	class = entry.name
	g := OptimizerGroup{&callHandle[*C.pts_optim_group_t]{ptr: group}}
	s := OptimizerState{&callHandle[*C.pts_optim_state_t]{ptr: state}}
	defer g.h.invalidate()
	defer s.h.invalidate()
	p, err := sharedTensor(param)
	if err != nil {
		return errorToC(err, CodeCallback)
	}
	defer p.Close()
	gr, err := sharedTensor(grad)
	if err != nil {
		return errorToC(err, CodeCallback)
	}
	defer gr.Close()
	if err := entry.class.Step(g, p, gr, s); err != nil {
		return errorToC(err, CodeCallback)
	}
	return nil
}

//export ptsgoOptimCheckGroup
func ptsgoOptimCheckGroup(handle C.uintptr_t, group *C.pts_optim_group_t) (result *C.pts_error_t) {
	class := "a Go optimizer"
	defer func() {
		if p := recover(); p != nil {
			result = newCError(CodeInvalidKwargs, fmt.Sprintf("panic in the group check of %s: %v", class, p))
		}
	}()
	entry, cerr := optimizerOf(handle)
	if cerr != nil {
		return cerr
	}
	class = entry.name
	g := OptimizerGroup{&callHandle[*C.pts_optim_group_t]{ptr: group}}
	defer g.h.invalidate()
	if err := entry.class.CheckGroup(g); err != nil {
		return errorToC(err, CodeInvalidKwargs)
	}
	return nil
}
