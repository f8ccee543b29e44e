package pytorchsaver

// Steps whose closure re-evaluates the loss (torch.optim.LBFGS): the Go
// closure reaches the library as a cgo.Handle through the trampoline of
// callbacks.c, and comes back through ptsgoClosure.

/*
#include <stdint.h>
#include <pytorch_saver.h>
#include "callbacks.h"
*/
import "C"

import (
	"fmt"
	"runtime/cgo"
)

// closureCall is what a step's closure handle holds: the function, and
// what it returned or panicked with, to hand back to StepClosure's caller.
type closureCall struct {
	f        func() (float64, error)
	err      error
	panicked any
}

// StepClosure is PyTorch's optimizer.step(closure). LBFGS calls f as often
// as its iterations and line search need; any other optimizer calls it
// once, then steps. f zeroes the gradients (Tensor.SetGrad(nil) on each
// parameter), computes the loss and the gradients (SetGrad or Backward on
// parameters taken with Parameter before the step) and returns the loss.
// It returns the loss of f's first call. An error f returns ends the step
// and is returned as it is; a panic in f is raised again here. While the
// step runs the container's other methods fail with an error matching
// ErrUsage, from f or from any goroutine, instead of waiting for it.
func (c *Container) StepClosure(f func() (float64, error)) (float64, error) {
	if f == nil {
		return 0, errorf(CodeNullArgument, "the closure is nil")
	}
	call := &closureCall{f: f}
	handle := cgo.NewHandle(call)
	defer handle.Delete()
	var loss C.double
	err := c.with(func(ptr *C.pts_container_t) error {
		c.stepping.Store(true)
		defer c.stepping.Store(false)
		return takeError(C.ptsgo_step_closure(ptr, C.uintptr_t(handle), &loss))
	})
	if call.panicked != nil {
		panic(call.panicked)
	}
	if call.err != nil {
		return 0, call.err
	}
	if err != nil {
		return 0, err
	}
	return float64(loss), nil
}

//export ptsgoClosure
func ptsgoClosure(handle C.uintptr_t, loss *C.double) (result *C.pts_error_t) {
	call, ok := cgo.Handle(handle).Value().(*closureCall)
	if !ok {
		return newCError(CodeCallback, "internal error: the closure's handle holds no Go closure")
	}
	defer func() {
		if p := recover(); p != nil {
			call.panicked = p
			result = newCError(CodeCallback, fmt.Sprintf("panic in the step's closure: %v", p))
		}
	}()
	value, err := call.f()
	if err != nil {
		call.err = err
		return errorToC(err, CodeCallback)
	}
	*loss = C.double(value)
	return nil
}

// SetGrad sets the tensor's gradient (PyTorch's .grad) to a copy of grad,
// of the tensor's shape and dtype, or with grad nil clears it (grad =
// None, what ZeroGrad does). The tensor must require gradients, as a
// parameter from Container.Parameter does: for a StepClosure closure.
func (t *Tensor) SetGrad(grad *Tensor) error {
	return t.read(func(ptr *C.pts_tensor_t) error {
		if grad == nil {
			return takeError(C.pts_tensor_set_grad(ptr, nil))
		}
		return grad.read(func(g *C.pts_tensor_t) error {
			return takeError(C.pts_tensor_set_grad(ptr, g))
		})
	})
}
