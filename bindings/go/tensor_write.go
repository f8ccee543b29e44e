package pytorchsaver

// Writing into an existing tensor: new values in place (an optimizer
// step's update of a parameter or its state), and gradients handed to a
// parameter.

/*
#include <pytorch_saver.h>
*/
import "C"

import "runtime"

// SetBytes overwrites the tensor's elements in place with data (C order,
// the host's byte order, the tensor's dtype; len(data) must be its byte
// size), without recording it for autograd. Every Tensor sharing the
// storage (a container's parameter) sees the new values.
func (t *Tensor) SetBytes(data []byte) error {
	return t.read(func(ptr *C.pts_tensor_t) error {
		err := takeError(C.pts_tensor_copy_from_buffer(ptr, sliceData(data), C.size_t(len(data))))
		runtime.KeepAlive(data)
		return err
	})
}

// SetFloat32s overwrites a Float32 tensor's elements in place (see
// SetBytes); len(values) must be its number of elements.
func (t *Tensor) SetFloat32s(values []float32) error {
	return t.read(func(ptr *C.pts_tensor_t) error {
		err := takeError(C.pts_tensor_copy_from_buffer(ptr, sliceData(values), C.size_t(len(values)*4)))
		runtime.KeepAlive(values)
		return err
	})
}

// Backward is PyTorch's tensor.backward(gradient): on a parameter (from
// Container.Parameter) it adds gradient, of the parameter's shape, to the
// parameter's gradient. Go computes no gradients itself; this is how Go
// code that computes them hands them to the optimizer before Step.
func (t *Tensor) Backward(gradient *Tensor) error {
	return t.read(func(ptr *C.pts_tensor_t) error {
		return gradient.read(func(g *C.pts_tensor_t) error {
			return takeError(C.pts_tensor_backward(ptr, g))
		})
	})
}
