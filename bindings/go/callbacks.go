package pytorchsaver

// The Go functions the library calls back (through the trampolines of
// callbacks.c): a registered factory, a Go model's forward, and the
// finalizer of either. Each receives its Go value as a cgo.Handle (an
// integer, never a Go pointer), recovers any panic into an error object
// (a Go panic must not unwind through the library's frames), and touches
// the borrowed C pointers only for the duration of the call. Tracked
// objects (extra_state.go) come back the same way.

/*
#include <stdbool.h>
#include <stdint.h>
#include <pytorch_saver.h>
*/
import "C"

import (
	"errors"
	"fmt"
	"runtime/cgo"
	"sync/atomic"
)

// liveHandles counts the cgo.Handles the library holds (factories and
// model instances), for the tests to check that each is released.
var liveHandles atomic.Int64

func newHandle(v any) cgo.Handle {
	liveHandles.Add(1)
	return cgo.NewHandle(v)
}

// factoryEntry is what a factory's handle holds.
type factoryEntry struct {
	name    string
	factory ModelFactory
}

// modelInstance is what a Go model's forward handle holds.
type modelInstance struct {
	class   string
	forward ForwardFunc
}

// errorToC turns a Go error into an error object for the library: an
// *Error keeps its code (a kwargs getter's ErrInvalidKwargs), anything
// else gets fallback.
func errorToC(err error, fallback Code) *C.pts_error_t {
	code, message := fallback, err.Error()
	var e *Error
	if errors.As(err, &e) {
		code = e.Code
		if err == error(e) {
			message = e.Message
		}
	}
	return newCError(code, message)
}

//export ptsgoFactory
func ptsgoFactory(handle C.uintptr_t, kwargs *C.pts_kwargs_t, loading C.bool, builder *C.pts_model_builder_t) (result *C.pts_error_t) {
	class := "a Go model"
	defer func() {
		if p := recover(); p != nil {
			result = newCError(CodeFactory, fmt.Sprintf("panic in the Go factory of %s: %v", class, p))
		}
	}()
	entry, ok := cgo.Handle(handle).Value().(*factoryEntry)
	if !ok {
		return newCError(CodeFactory, "internal error: the factory's handle holds no Go factory")
	}
	class = entry.name
	kw := &Kwargs{ptr: kwargs}
	b := &ModelBuilder{ptr: builder, class: entry.name}
	// The library's pointers die with the call: a Kwargs or ModelBuilder
	// kept by the factory fails with ErrUsage from now on.
	defer kw.invalidate()
	defer b.invalidate()
	if err := entry.factory(kw, bool(loading), b); err != nil {
		return errorToC(err, CodeFactory)
	}
	return nil
}

//export ptsgoForward
func ptsgoForward(handle C.uintptr_t, input *C.pts_tensor_t, train C.bool, output **C.pts_tensor_t) (result *C.pts_error_t) {
	class := "a Go model"
	defer func() {
		if p := recover(); p != nil {
			result = newCError(CodeCallback, fmt.Sprintf("panic in the forward function of %s: %v", class, p))
		}
	}()
	inst, ok := cgo.Handle(handle).Value().(*modelInstance)
	if !ok {
		return newCError(CodeCallback, "internal error: the model's handle holds no Go model")
	}
	class = inst.class
	if output == nil {
		return newCError(CodeNullArgument, "argument output is NULL")
	}
	info, err := cTensorInfo(input)
	if err != nil {
		return errorToC(err, CodeCallback)
	}
	if info.DType != Float32 {
		return newCError(CodeCallback, fmt.Sprintf("%s takes F32 input, got %v", class, info.DType))
	}
	x, err := cTensorCopy[float32](input, info)
	if err != nil {
		return errorToC(err, CodeCallback)
	}
	y, shape, err := inst.forward(x, info.Shape, bool(train))
	if err != nil {
		return errorToC(err, CodeCallback)
	}
	out, err := newCTensor(Float32, shape, sliceData(y), len(y)*4)
	if err != nil {
		return newCError(CodeCallback, fmt.Sprintf("%s: the forward output (%d values, shape %v): %v",
			class, len(y), shape, err))
	}
	*output = out
	return nil
}

//export ptsgoRelease
func ptsgoRelease(handle C.uintptr_t) {
	// Delete panics only for a handle released twice, which the library
	// rules out; a finalizer has no way to report it, so it is dropped.
	defer func() { _ = recover() }()
	cgo.Handle(handle).Delete()
	liveHandles.Add(-1)
}

//export ptsgoGetState
func ptsgoGetState(handle C.uintptr_t, out *C.pts_state_t) (result *C.pts_error_t) {
	defer recoverInto(&result, "State")
	obj, ok := cgo.Handle(handle).Value().(*trackedObject)
	if !ok {
		return newCError(CodeCallback, "internal error: the tracked object's handle holds no Go object")
	}
	state, err := obj.object.State()
	if err == nil {
		err = fillCState(state, out)
	}
	if err != nil {
		return errorToC(err, CodeCallback)
	}
	return nil
}

//export ptsgoReadState
func ptsgoReadState(handle C.uintptr_t, in *C.pts_state_t, load C.bool) (result *C.pts_error_t) {
	method := "CheckState"
	if load {
		method = "LoadState"
	}
	defer recoverInto(&result, method)
	obj, ok := cgo.Handle(handle).Value().(*trackedObject)
	if !ok {
		return newCError(CodeCallback, "internal error: the tracked object's handle holds no Go object")
	}
	state, err := goState(in)
	if err == nil {
		if load {
			err = obj.object.LoadState(state)
		} else {
			err = obj.object.CheckState(state)
		}
	}
	if err != nil {
		return errorToC(err, CodeCallback)
	}
	return nil
}

// recoverInto turns a panic in a tracked object's method into an error
// object (a Go panic must not unwind through the library's frames).
func recoverInto(result **C.pts_error_t, method string) {
	if p := recover(); p != nil {
		*result = newCError(CodeCallback, fmt.Sprintf("panic in %s: %v", method, p))
	}
}
