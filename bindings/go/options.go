package pytorchsaver

/*
#include <stdbool.h>
#include <pytorch_saver.h>
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
}

// cOptions makes the C options for o, for the caller to free with
// freeOptions; the zero value is NULL, the library's defaults.
func (o LoadOptions) cOptions() (*C.pts_load_options_t, error) {
	if o == (LoadOptions{}) {
		return nil, nil
	}
	var out *C.pts_load_options_t
	if err := takeError(C.pts_load_options_new(&out)); err != nil {
		return nil, err
	}
	if err := takeError(C.pts_load_options_set_verify(out, C.bool(!o.SkipVerify))); err != nil {
		C.pts_load_options_free(out)
		return nil, err
	}
	if err := takeError(C.pts_load_options_set_copy(out, C.bool(o.Copy))); err != nil {
		C.pts_load_options_free(out)
		return nil, err
	}
	return out, nil
}

// freeOptions frees options from cOptions; nil is a no-op.
func freeOptions(o *C.pts_load_options_t) { C.pts_load_options_free(o) }
