package pytorchsaver

// Progress callbacks: a ProgressFunc is handed to the library as a
// cgo.Handle of a progressRelay (an integer, never a Go pointer), which
// the library releases through ptsgoRelease when no operation can report
// to it any more.

/*
#include <stdint.h>
#include <pytorch_saver.h>
*/
import "C"

import (
	"runtime/cgo"
	"sync"
)

// ProgressFunc hears how far a long operation is, in bytes: the first
// call is (0, total); done grows from call to call; the last call is
// (total, total), made only when the operation succeeded. Calls come from
// the goroutine that runs the operation or from the library's worker
// threads, one at a time, never after the operation returned (a
// background save's, until Manager.Wait returns). A function that panics
// is not called again for that operation, and the panic is raised again
// on the caller's goroutine once the operation returned.
type ProgressFunc func(done, total uint64)

// progressRelay runs a ProgressFunc for the library and keeps what it
// panicked with.
type progressRelay struct {
	fn       ProgressFunc
	mu       sync.Mutex
	panicked bool
	value    any
}

func (r *progressRelay) call(done, total uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.panicked {
		return
	}
	defer func() {
		if p := recover(); p != nil {
			r.panicked, r.value = true, p
		}
	}()
	r.fn(done, total)
}

// reset forgets a panic of an earlier operation.
func (r *progressRelay) reset() {
	if r == nil {
		return
	}
	r.mu.Lock()
	r.panicked, r.value = false, nil
	r.mu.Unlock()
}

// repanic raises again what the function panicked with during the
// operation, if it did; nil is a no-op.
func (r *progressRelay) repanic() {
	if r == nil {
		return
	}
	r.mu.Lock()
	panicked, value := r.panicked, r.value
	r.panicked, r.value = false, nil
	r.mu.Unlock()
	if panicked {
		panic(value)
	}
}

//export ptsgoProgress
func ptsgoProgress(handle C.uintptr_t, done, total C.uint64_t) {
	// Nothing may unwind into the library: the relay recovers the
	// function's panics, and this its own.
	defer func() { _ = recover() }()
	if relay, ok := cgo.Handle(handle).Value().(*progressRelay); ok {
		relay.call(uint64(done), uint64(total))
	}
}
