package pytorchsaver

/*
#include <stdbool.h>
#include <pytorch_saver.h>
#include "callbacks.h"
*/
import "C"

// LoadOptions say how a file is read by LoadContainerWith,
// Registry.LoadContainerWith, Container.RestoreWith, OpenCheckpointWith,
// LoadModel and Registry.LoadModel. The zero value is the default that
// LoadContainer, Restore and OpenCheckpoint use: every CRC-32 checked, and
// the tensors pointing into a private (copy-on-write) mapping of the file
// instead of being copied.
type LoadOptions struct {
	// Copy copies the tensors into memory of their own instead of
	// pointing them into a private mapping of the file. Set it when
	// another process may truncate or rewrite the file while the model
	// is in use: a truncated mapping faults (SIGBUS, which kills a Go
	// program) when a tensor's page is read, a copy does not. Leave it
	// off otherwise: mapping copies nothing, and processes that load the
	// same file share its page cache. It does not apply to
	// OpenCheckpointWith (which reads on demand) nor to RestoreWith
	// (which always copies into the container's existing tensors).
	Copy bool
	// SkipVerify skips the CRC-32 check of the tensor data (the file's
	// structure, headers, shapes and metadata are still validated, so a
	// malformed file is still refused; a flipped bit in tensor data is
	// not found). Set it only for files verified when they were
	// deployed, with `pytorch-saver verify`, to save reading every byte
	// at load.
	SkipVerify bool
	// Progress, when not nil, hears how far the call is: the total is
	// the bytes it checks (every CRC-32, or metadata.json's alone with
	// SkipVerify) plus, when it copies (Copy, and always for a restore),
	// the model's and optimizer's tensor data. See ProgressFunc.
	Progress ProgressFunc
}

// cOptions makes the C options for o, for the caller to free with
// freeOptions (with the relay of o.Progress, nil without); the zero value
// is NULL, the library's defaults.
func (o LoadOptions) cOptions() (*C.pts_load_options_t, *progressRelay, error) {
	if !o.Copy && !o.SkipVerify && o.Progress == nil {
		return nil, nil, nil
	}
	var out *C.pts_load_options_t
	if err := takeError(C.pts_load_options_new(&out)); err != nil {
		return nil, nil, err
	}
	if err := takeError(C.pts_load_options_set_verify(out, C.bool(!o.SkipVerify))); err != nil {
		C.pts_load_options_free(out)
		return nil, nil, err
	}
	if err := takeError(C.pts_load_options_set_copy(out, C.bool(o.Copy))); err != nil {
		C.pts_load_options_free(out)
		return nil, nil, err
	}
	if o.Progress == nil {
		return out, nil, nil
	}
	relay := &progressRelay{fn: o.Progress}
	if err := takeError(C.ptsgo_load_options_set_progress(out, C.uintptr_t(newHandle(relay)))); err != nil {
		C.pts_load_options_free(out)
		return nil, nil, err
	}
	return out, relay, nil
}

// freeOptions frees options from cOptions (nil is a no-op), then panics
// again with what the progress function panicked with during the call,
// if it did: deferred, so the panic reaches the caller as if the
// function had been called on its goroutine.
func freeOptions(o *C.pts_load_options_t, relay *progressRelay) {
	C.pts_load_options_free(o)
	relay.repanic()
}
