package pytorchsaver

/*
#include <pytorch_saver.h>
#include "callbacks.h"
*/
import "C"

import (
	"encoding/json"
	"runtime"
	"sync"
	"sync/atomic"
)

// Spec names what Container.Initialize builds: a model, and optionally an
// optimizer over its parameters and a learning-rate scheduler over that
// optimizer, each by class name with its constructor kwargs.
//
// Kwargs are any value that encoding/json marshals to a JSON object: a
// map[string]any, a struct with json tags, a json.RawMessage; nil means
// no kwargs ({}). They are recorded in saved files exactly as given.
type Spec struct {
	// Model is the model's class name, such as "pytorch_saver.models.MLP"
	// or "torch.nn.Linear" (built in), or one registered on the
	// container's Registry. Required.
	Model string
	// ModelKwargs are the model's constructor kwargs, such as
	// map[string]any{"in_dim": 4, "hidden_dim": 32, "n_classes": 3}.
	ModelKwargs any
	// Optimizer is the optimizer's class name, such as "torch.optim.Adam"
	// (any torch.optim class the library implements); "" for none.
	Optimizer string
	// OptimizerKwargs are the optimizer's kwargs without the parameters,
	// such as map[string]any{"lr": 0.001}.
	OptimizerKwargs any
	// Scheduler is the LR scheduler's class name, such as
	// "torch.optim.lr_scheduler.StepLR"; "" for none. It needs an
	// optimizer.
	Scheduler string
	// SchedulerKwargs are the scheduler's kwargs without the optimizer.
	SchedulerKwargs any
}

// Container is a model built by class name, with an optional optimizer
// and LR scheduler; it saves and loads all three together. It is
// Python's ModelContainer:
//
//	c, _ := pytorchsaver.NewContainer()
//	_ = c.Initialize(pytorchsaver.Spec{Model: "pytorch_saver.models.MLP", ModelKwargs: kw,
//		Optimizer: "torch.optim.Adam", OptimizerKwargs: map[string]any{"lr": 1e-3}})
//	path, _ := c.Save("./", "tutorial", map[string]any{"loss": 0.55, "epoch": 5})
//	loaded, metadata, _ := pytorchsaver.LoadContainer(path)
//
// Go has no autograd, so a Container cannot compute gradients: Step
// applies whatever gradients the parameters hold (none, for a container
// driven from Go alone, which makes it a no-op as in PyTorch). Go uses
// containers to load, inspect, serve (Forward) and re-save models and
// training state.
//
// Every method holds the container's lock for its call, so a Container
// may be shared by goroutines; calls run one at a time (the C container
// is single-threaded, even for forward): for parallel inference use a
// Model (LoadModel). Close frees it (a finalizer does
// if Close is never called); methods called after Close return an error
// matching ErrUsage.
type Container struct {
	mu  sync.Mutex
	ptr *C.pts_container_t
	// stepping is set while StepClosure runs: other calls then fail
	// instead of waiting for mu (the closure runs under it).
	stepping atomic.Bool
	cleanup  runtime.Cleanup
	// The relay of SetSaveProgress (nil without), to raise again what its
	// function panicked with.
	saveProgress *progressRelay
}

func wrapContainer(ptr *C.pts_container_t) *Container {
	c := &Container{ptr: ptr}
	c.cleanup = runtime.AddCleanup(c, freeContainer, ptr)
	return c
}

func freeContainer(ptr *C.pts_container_t) { C.pts_container_free(ptr) }

// NewContainer returns an empty container over the built-in classes
// (torch.nn.Linear, pytorch_saver.models.MLP, pytorch_saver.models.
// Sequential): call Initialize, or use LoadContainer instead.
func NewContainer() (*Container, error) {
	return newContainer(nil)
}

func newContainer(registry *C.pts_registry_t) (*Container, error) {
	var out *C.pts_container_t
	if err := takeError(C.pts_container_new(registry, &out)); err != nil {
		return nil, err
	}
	c := wrapContainer(out)
	if err := c.recordGoAsProducer(); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// producerLanguage is what files saved from Go record as their producer's
// language (docs/FORMAT.md); allocated once for the process.
var producerLanguage = C.CString("go")

func (c *Container) recordGoAsProducer() error {
	err := takeError(C.pts_container_set_producer_language(c.ptr, producerLanguage))
	runtime.KeepAlive(c)
	return err
}

// LoadContainer loads the checkpoint at path into a new container over
// the built-in classes: it validates the file, rebuilds the model,
// optimizer and scheduler it names and loads their state, all or nothing.
// It returns the container and the flat metadata: model_kwargs,
// optim_kwargs and scheduler_kwargs (those that exist), timestamp and the
// user's keys (numbers are float64, as encoding/json gives them), which
// MetadataFromMap types.
//
// The tensors point into a private mapping of the file (nothing is
// copied); LoadContainerWith can copy them instead, or skip the CRC-32
// check.
func LoadContainer(path string) (*Container, map[string]any, error) {
	return loadContainer(nil, path, LoadOptions{})
}

// LoadContainerWith is LoadContainer with options: LoadOptions{Copy: true}
// for a file that another process may truncate or rewrite while the
// container lives, LoadOptions{SkipVerify: true} for a file verified when
// it was deployed. The zero LoadOptions is LoadContainer.
func LoadContainerWith(path string, opts LoadOptions) (*Container, map[string]any, error) {
	return loadContainer(nil, path, opts)
}

func loadContainer(registry *C.pts_registry_t, path string, opts LoadOptions) (*Container, map[string]any, error) {
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
	var out *C.pts_container_t
	var meta *C.char
	maybeGC()
	if err := takeError(C.pts_container_load_ex(registry, cpath, copts, &out, &meta)); err != nil {
		return nil, nil, err
	}
	c := wrapContainer(out)
	m, err := flatMetadata(takeString(meta))
	if err == nil {
		err = c.recordGoAsProducer()
	}
	if err != nil {
		c.Close()
		return nil, nil, err
	}
	return c, m, nil
}

// Close frees the container with its model, optimizer and scheduler (a
// Tensor obtained from it keeps its storage). Calling it again does
// nothing. It always returns nil.
func (c *Container) Close() error {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ptr != nil {
		c.cleanup.Stop()
		C.pts_container_free(c.ptr)
		c.ptr = nil
	}
	return nil
}

// with runs f on the live handle under the container's lock.
func (c *Container) with(f func(ptr *C.pts_container_t) error) error {
	if c == nil {
		return errorf(CodeNullArgument, "the container is nil")
	}
	if c.stepping.Load() {
		return errorf(CodeUsage, "the container is in StepClosure: its closure may use tensors, not the container")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ptr == nil {
		return errClosed("container")
	}
	maybeGC()
	err := f(c.ptr)
	runtime.KeepAlive(c)
	return err
}

// marshalObject encodes kwargs or metadata for C: nil (also a nil map or
// pointer) is NULL, "none"; a value that JSON cannot hold (NaN, a
// channel) is an error with code.
func marshalObject(what string, v any, code Code) (*C.char, error) {
	if v == nil {
		return nil, nil
	}
	text, err := json.Marshal(v)
	if err != nil {
		return nil, errorf(code, "%s: %v", what, err)
	}
	if string(text) == "null" {
		return nil, nil
	}
	return cString(what, string(text))
}

// Initialize builds what spec names, replacing what the container held
// only once everything is built: on error the container is unchanged. An
// unknown class is an error matching ErrUnknownName, kwargs the class
// refuses ErrInvalidKwargs, kwargs that are not a JSON object
// ErrInvalidJSON, a scheduler without an optimizer ErrUsage.
func (c *Container) Initialize(spec Spec) error {
	if spec.Optimizer == "" && spec.OptimizerKwargs != nil {
		return errorf(CodeUsage, "Spec.OptimizerKwargs is set without Spec.Optimizer")
	}
	if spec.Scheduler == "" && spec.SchedulerKwargs != nil {
		return errorf(CodeUsage, "Spec.SchedulerKwargs is set without Spec.Scheduler")
	}
	var strs [6]*C.char
	defer func() {
		for _, s := range strs {
			freeString(s)
		}
	}()
	var err error
	if strs[0], err = cString("model class", spec.Model); err != nil {
		return err
	}
	if strs[1], err = marshalObject("model kwargs", spec.ModelKwargs, CodeInvalidKwargs); err != nil {
		return err
	}
	if strs[2], err = cStringOpt("optimizer class", spec.Optimizer); err != nil {
		return err
	}
	if strs[3], err = marshalObject("optimizer kwargs", spec.OptimizerKwargs, CodeInvalidKwargs); err != nil {
		return err
	}
	if strs[4], err = cStringOpt("scheduler class", spec.Scheduler); err != nil {
		return err
	}
	if strs[5], err = marshalObject("scheduler kwargs", spec.SchedulerKwargs, CodeInvalidKwargs); err != nil {
		return err
	}
	return c.with(func(ptr *C.pts_container_t) error {
		return takeError(C.pts_container_initialize(ptr, strs[0], strs[1], strs[2], strs[3], strs[4], strs[5]))
	})
}

// Restore loads the checkpoint at path into the model, optimizer and
// scheduler the container already holds, in place (Tensors obtained from
// the container see the new values). The file must name the same
// classes; state that does not fit is an error matching ErrStateMismatch,
// and nothing is changed. It returns the flat metadata, as LoadContainer.
func (c *Container) Restore(path string) (map[string]any, error) {
	return c.RestoreWith(path, LoadOptions{})
}

// RestoreWith is Restore with options: LoadOptions{SkipVerify: true} skips
// the CRC-32 check of a file verified when it was deployed (every tensor's
// shape and dtype are still checked before anything is written). Copy does
// not apply: a restore always copies into the container's tensors.
func (c *Container) RestoreWith(path string, opts LoadOptions) (map[string]any, error) {
	return c.readFile(path, opts, func(ptr *C.pts_container_t, cpath *C.char, copts *C.pts_load_options_t, meta **C.char) *C.pts_error_t {
		return C.pts_container_restore_ex(ptr, cpath, copts, meta)
	})
}

// readFile runs one of the C ABI's loads into this container (restore,
// load into) on path with opts, and returns the flat metadata it gives.
func (c *Container) readFile(path string, opts LoadOptions, read func(*C.pts_container_t, *C.char, *C.pts_load_options_t, **C.char) *C.pts_error_t) (map[string]any, error) {
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
	var text string
	err = c.with(func(ptr *C.pts_container_t) error {
		var meta *C.char
		if err := takeError(read(ptr, cpath, copts, &meta)); err != nil {
			return err
		}
		text = takeString(meta)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return flatMetadata(text)
}

// Save writes a training checkpoint (model, optimizer, scheduler)
// atomically into the directory dir as {prefix}_checkpoint_{unix
// seconds}.zip (checkpoint_{ts}.zip when prefix is ""), never overwriting
// a file, and returns its path. metadata (nil for none) is any value that
// marshals to a JSON object of extra keys, such as
// map[string]any{"loss": 0.55, "epoch": 5}; a reserved key (model_kwargs,
// optim_kwargs, scheduler_kwargs, timestamp, __pytorch_saver__) or a
// value JSON cannot hold (NaN) is an error matching ErrInvalidMetadata,
// and nothing is written.
func (c *Container) Save(dir, prefix string, metadata any) (string, error) {
	return c.save(dir, prefix, metadata, false)
}

// SaveInference writes the model alone, as {prefix}_inference_{unix
// seconds}.zip; otherwise as Save.
func (c *Container) SaveInference(dir, prefix string, metadata any) (string, error) {
	return c.save(dir, prefix, metadata, true)
}

func (c *Container) save(dir, prefix string, metadata any, inference bool) (string, error) {
	cdir, err := cString("dir", dir)
	if err != nil {
		return "", err
	}
	defer freeString(cdir)
	cprefix, err := cStringOpt("prefix", prefix)
	if err != nil {
		return "", err
	}
	defer freeString(cprefix)
	cmeta, err := marshalObject("metadata", metadata, CodeInvalidMetadata)
	if err != nil {
		return "", err
	}
	defer freeString(cmeta)
	var path string
	var relay *progressRelay
	err = c.with(func(ptr *C.pts_container_t) error {
		relay = c.saveProgress
		relay.reset()
		var out *C.char
		var e *C.pts_error_t
		if inference {
			e = C.pts_container_save_inference(ptr, cdir, cprefix, cmeta, &out)
		} else {
			e = C.pts_container_save(ptr, cdir, cprefix, cmeta, &out)
		}
		if err := takeError(e); err != nil {
			return err
		}
		path = takeString(out)
		return nil
	})
	relay.repanic()
	return path, err
}

// SetSaveProgress reports the progress of every later save of c (Save,
// SaveInference, Manager.Save and Manager.SaveAsync) to fn, or to nobody
// when fn is nil: the total is the file's size, the count the bytes
// written so far. See ProgressFunc; a panic of fn during a background save
// is dropped.
func (c *Container) SetSaveProgress(fn ProgressFunc) error {
	return c.with(func(ptr *C.pts_container_t) error {
		if fn == nil {
			if err := takeError(C.pts_container_set_save_progress(ptr, nil, nil, nil)); err != nil {
				return err
			}
			c.saveProgress = nil
			return nil
		}
		relay := &progressRelay{fn: fn}
		if err := takeError(C.ptsgo_container_set_save_progress(ptr, C.uintptr_t(newHandle(relay)))); err != nil {
			return err
		}
		c.saveProgress = relay
		return nil
	})
}

// ZeroGrad is optimizer.zero_grad(): every parameter's gradient becomes
// undefined. Without an optimizer it is an error matching ErrUsage.
func (c *Container) ZeroGrad() error {
	return c.with(func(ptr *C.pts_container_t) error { return takeError(C.pts_container_zero_grad(ptr)) })
}

// Step is optimizer.step(), with torch.optim's math bit for bit. It
// changes only parameters that have a gradient (none, from Go alone).
func (c *Container) Step() error {
	return c.with(func(ptr *C.pts_container_t) error { return takeError(C.pts_container_step(ptr)) })
}

// SchedulerStep is scheduler.step(). Without a scheduler, or for
// ReduceLROnPlateau (which needs SchedulerStepMetric), it is an error
// matching ErrUsage.
func (c *Container) SchedulerStep() error {
	return c.with(func(ptr *C.pts_container_t) error { return takeError(C.pts_container_scheduler_step(ptr)) })
}

// SchedulerStepMetric is scheduler.step(metric), for ReduceLROnPlateau.
func (c *Container) SchedulerStepMetric(metric float64) error {
	return c.with(func(ptr *C.pts_container_t) error {
		return takeError(C.pts_container_scheduler_step_metric(ptr, C.double(metric)))
	})
}

// ParamGroupCount returns the optimizer's number of parameter groups.
func (c *Container) ParamGroupCount() (int, error) {
	var n C.size_t
	err := c.with(func(ptr *C.pts_container_t) error {
		return takeError(C.pts_container_param_group_count(ptr, &n))
	})
	return int(n), err
}

// LR returns the current learning rate of parameter group group (0 for
// the usual single group).
func (c *Container) LR(group int) (float64, error) {
	if group < 0 {
		return 0, errorf(CodeInvalidArgument, "parameter group %d is negative", group)
	}
	var lr C.double
	err := c.with(func(ptr *C.pts_container_t) error {
		return takeError(C.pts_container_lr(ptr, C.size_t(group), &lr))
	})
	return float64(lr), err
}

// LRs returns the current learning rate of every parameter group.
func (c *Container) LRs() ([]float64, error) {
	var lrs []float64
	err := c.with(func(ptr *C.pts_container_t) error {
		var n C.size_t
		if err := takeError(C.pts_container_param_group_count(ptr, &n)); err != nil {
			return err
		}
		lrs = make([]float64, int(n))
		for i := range lrs {
			var lr C.double
			if err := takeError(C.pts_container_lr(ptr, C.size_t(i), &lr)); err != nil {
				return err
			}
			lrs[i] = float64(lr)
		}
		return nil
	})
	return lrs, err
}

// Forward runs the model in eval mode, without gradient tracking, on a
// Float32 input of the given shape (len(input) must be the product of
// shape), and returns the output's elements and shape. An input the model
// cannot take (a wrong shape) is an error matching ErrTorch, or
// ErrCallback for a model written in Go.
func (c *Container) Forward(input []float32, shape []int64) ([]float32, []int64, error) {
	x, err := newCTensor(Float32, shape, sliceData(input), len(input)*4)
	if err != nil {
		return nil, nil, err
	}
	defer C.pts_tensor_free(x)
	var out []float32
	var outShape []int64
	err = c.with(func(ptr *C.pts_container_t) error {
		var y *C.pts_tensor_t
		if err := takeError(C.pts_container_forward(ptr, x, false, &y)); err != nil {
			return err
		}
		defer C.pts_tensor_free(y)
		info, err := cTensorInfo(y)
		if err != nil {
			return err
		}
		if info.DType != Float32 {
			return errorf(CodeInvalidArgument, "the model's output is %v, not F32: use ForwardTensor", info.DType)
		}
		out, err = cTensorCopy[float32](y, info)
		outShape = info.Shape
		return err
	})
	if err != nil {
		return nil, nil, err
	}
	return out, outShape, nil
}

// ForwardTensor runs the model in eval mode, without gradient tracking, on
// a tensor of any dtype (an Embedding takes Int64), and returns the
// output as a new Tensor.
func (c *Container) ForwardTensor(input *Tensor) (*Tensor, error) {
	var y *C.pts_tensor_t
	// Locks are always taken container first, then tensor: a Go model's
	// forward reads its tensors under the container's lock.
	err := c.with(func(ptr *C.pts_container_t) error {
		return input.read(func(x *C.pts_tensor_t) error {
			return takeError(C.pts_container_forward(ptr, x, false, &y))
		})
	})
	if err != nil {
		return nil, err
	}
	return wrapTensor(y), nil
}

// ParameterCount returns the model's number of trainable parameters.
func (c *Container) ParameterCount() (int, error) {
	var n C.size_t
	err := c.with(func(ptr *C.pts_container_t) error {
		return takeError(C.pts_container_parameter_count(ptr, &n))
	})
	return int(n), err
}

// ParameterNames returns the state-dict names of the model's parameters
// in optimizer order (PyTorch's model.parameters() order).
func (c *Container) ParameterNames() ([]string, error) {
	var names []string
	err := c.with(func(ptr *C.pts_container_t) error {
		var n C.size_t
		if err := takeError(C.pts_container_parameter_count(ptr, &n)); err != nil {
			return err
		}
		names = make([]string, 0, int(n))
		for i := C.size_t(0); i < n; i++ {
			var name *C.char
			var t *C.pts_tensor_t
			if err := takeError(C.pts_container_parameter(ptr, i, &name, &t)); err != nil {
				return err
			}
			C.pts_tensor_free(t)
			names = append(names, C.GoString(name))
		}
		return nil
	})
	return names, err
}

// Parameter returns parameter index (in optimizer order) with its
// state-dict name, as a Tensor sharing the model's storage: Step,
// Restore and Initialize's replacement change what it reads, and it keeps
// the storage alive after the container is closed. Reading it while
// another goroutine steps the container is a data race; StateFloat32
// copies under the container's lock instead.
func (c *Container) Parameter(index int) (string, *Tensor, error) {
	if index < 0 {
		return "", nil, errorf(CodeInvalidArgument, "parameter index %d is negative", index)
	}
	var name string
	var t *C.pts_tensor_t
	err := c.with(func(ptr *C.pts_container_t) error {
		var cname *C.char
		if err := takeError(C.pts_container_parameter(ptr, C.size_t(index), &cname, &t)); err != nil {
			return err
		}
		name = C.GoString(cname)
		return nil
	})
	if err != nil {
		return "", nil, err
	}
	return name, wrapTensor(t), nil
}

// StateTensor returns a tensor of the model's state dict (a parameter or
// a buffer) by name, as a Tensor sharing its storage (see Parameter). An
// unknown name is an error matching ErrNotFound.
func (c *Container) StateTensor(name string) (*Tensor, error) {
	cname, err := cString("tensor name", name)
	if err != nil {
		return nil, err
	}
	defer freeString(cname)
	var t *C.pts_tensor_t
	err = c.with(func(ptr *C.pts_container_t) error {
		return takeError(C.pts_container_state_tensor(ptr, cname, &t))
	})
	if err != nil {
		return nil, err
	}
	return wrapTensor(t), nil
}

// StateFloat32 returns a copy of a Float32 tensor of the model's state
// dict and its shape, read under the container's lock (so safe while
// other goroutines use the container).
func (c *Container) StateFloat32(name string) ([]float32, []int64, error) {
	cname, err := cString("tensor name", name)
	if err != nil {
		return nil, nil, err
	}
	defer freeString(cname)
	var out []float32
	var shape []int64
	err = c.with(func(ptr *C.pts_container_t) error {
		var t *C.pts_tensor_t
		if err := takeError(C.pts_container_state_tensor(ptr, cname, &t)); err != nil {
			return err
		}
		defer C.pts_tensor_free(t)
		out, shape, err = cFloat32Values(name, t)
		return err
	})
	if err != nil {
		return nil, nil, err
	}
	return out, shape, nil
}
