package pytorchsaver

/*
#include <stdlib.h>
#include <pytorch_saver.h>
#include "callbacks.h"
*/
import "C"

import (
	"encoding/json"
	"sort"
	"unsafe"
)

// This file owns the extra training state of a container (docs/FORMAT.md
// section 11.3): objects tracked by name whose state every checkpoint
// carries and every load restores: the RNG (TrackRNG), counters
// (TrackCounters) and Go objects (Track).

// Stateful is a Go object whose state a Container saves with every
// checkpoint and restores on load (Container.Track): a data loader's
// position, an EMA of the weights, anything with a state_dict() in
// PyTorch.
//
// Loading is all or nothing: a container calls CheckState on every
// tracked object before it calls LoadState on any, so CheckState refuses
// whatever LoadState could not take. An error matching ErrInvalidState or
// ErrStateMismatch (an *Error with that code, or one wrapping it) reaches
// the caller with its code and the entry's name; any other error becomes
// one matching ErrCallback, naming the entry and the method. The methods
// run on the goroutine that calls Save, LoadInto or Restore, while it
// holds the container: they must not call the container.
type Stateful interface {
	// ClassName is the class name written with the state
	// ("my_project.EMA"): a file's entry is restored only into an object
	// of the same class name. It is read once, by Track.
	ClassName() string
	// State returns the object's current state.
	State() (*State, error)
	// CheckState returns an error unless state can be loaded; it changes
	// nothing.
	CheckState(state *State) error
	// LoadState loads state, which CheckState accepted.
	LoadState(state *State) error
}

// State is one tracked object's state: a typed value (docs/FORMAT.md
// section 11.2) in which each tensor is a "tensor" tag, and the tensors
// those tags name.
//
// In a state that Stateful.State returns, Value is anything
// encoding/json marshals to the typed value (a map, a struct with json
// tags, a json.RawMessage; nil is null), with a TensorRef{Name: n} where
// the tensor Tensors[n] goes; the container writes it as <entry>.<n>.
//
// In a state handed to CheckState and LoadState, Value is the file's
// value as a json.RawMessage, to json.Unmarshal into a type of the
// object's own (a TensorRef field decodes a tensor tag; Tensor resolves
// it), and Tensors holds the file's tensors under the file's names
// (ema.average for the tensor an object named average under the entry
// ema): find them through their tags, not by the names the object chose.
// Those Tensors share the file's storage: copy what the object keeps.
type State struct {
	Value   any
	Tensors map[string]*Tensor
}

// Tensor returns the tensor the tag ref names: an error matching
// ErrInvalidState when the state holds none.
func (s *State) Tensor(ref TensorRef) (*Tensor, error) {
	t, ok := s.Tensors[ref.Name]
	if !ok {
		return nil, errorf(CodeInvalidState, "the state holds no tensor %q for its tensor tag", ref.Name)
	}
	return t, nil
}

// UnmarshalJSON reads a "tensor" tag, so that a TensorRef field of a
// struct decodes the tag a State's Value holds.
func (t *TensorRef) UnmarshalJSON(data []byte) error {
	var tag struct {
		Type string `json:"__type__"`
		Name string `json:"name"`
	}
	if err := json.Unmarshal(data, &tag); err != nil {
		return err
	}
	if tag.Type != "tensor" {
		return errorf(CodeInvalidState, "%s is not a tensor tag", string(data))
	}
	t.Name = tag.Name
	return nil
}

// trackedObject is what a tracked Go object's handle holds.
type trackedObject struct {
	name   string
	object Stateful
}

// Track tracks object under name: every checkpoint Save writes carries
// its state as the extra-state entry name, and every file LoadInto or
// Restore reads must have that entry, of the object's class, which is
// checked and loaded into it. The container keeps the object until
// Untrack or Close. A name already tracked is an error matching
// ErrDuplicateName.
func (c *Container) Track(name string, object Stateful) error {
	if object == nil {
		return errorf(CodeNullArgument, "the tracked object is nil")
	}
	cname, err := cString("name", name)
	if err != nil {
		return err
	}
	defer freeString(cname)
	cclass, err := cString("class name", object.ClassName())
	if err != nil {
		return err
	}
	defer freeString(cclass)
	return c.with(func(ptr *C.pts_container_t) error {
		// The library owns the handle from here on, whatever the outcome.
		handle := newHandle(&trackedObject{name: name, object: object})
		return takeError(C.ptsgo_track(ptr, cname, cclass, C.uintptr_t(handle)))
	})
}

// TrackRNG tracks libtorch's default random number generators under name
// (class pytorch_saver.RNG): the CPU generator (weight init, dropout,
// randperm) and each CUDA device's are saved and restored, so that a
// resumed run draws the numbers an uninterrupted one would have.
func (c *Container) TrackRNG(name string) error {
	return c.withName(name, func(ptr *C.pts_container_t, cname *C.char) error {
		return takeError(C.pts_container_track_rng(ptr, cname))
	})
}

// TrackCounters tracks named integers (class pytorch_saver.Counters: step,
// epoch) under name, starting from counters (nil: none), written in the
// order of their names. A load replaces every counter with the file's.
func (c *Container) TrackCounters(name string, counters map[string]int64) error {
	keys := make([]string, 0, len(counters))
	for k := range counters {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	object := make([]byte, 0, 16*len(keys)+2)
	object = append(object, '{')
	for i, k := range keys {
		if i > 0 {
			object = append(object, ',')
		}
		key, err := json.Marshal(k)
		if err != nil {
			return errorf(CodeInvalidArgument, "counter name %q: %v", k, err)
		}
		value, _ := json.Marshal(counters[k])
		object = append(append(append(object, key...), ':'), value...)
	}
	object = append(object, '}')
	ctext, err := cString("counters", string(object))
	if err != nil {
		return err
	}
	defer freeString(ctext)
	return c.withName(name, func(ptr *C.pts_container_t, cname *C.char) error {
		return takeError(C.pts_container_track_counters(ptr, cname, ctext))
	})
}

// Counter returns counter key of the counters tracked as name: an error
// matching ErrNotFound when they have no such counter, ErrUsage when name
// tracks no counters.
func (c *Container) Counter(name, key string) (int64, error) {
	var out C.int64_t
	err := c.withNameKey(name, key, func(ptr *C.pts_container_t, cname, ckey *C.char) error {
		return takeError(C.pts_container_counter_get(ptr, cname, ckey, &out))
	})
	return int64(out), err
}

// SetCounter sets counter key of the counters tracked as name (a new key
// is added).
func (c *Container) SetCounter(name, key string, value int64) error {
	return c.withNameKey(name, key, func(ptr *C.pts_container_t, cname, ckey *C.char) error {
		return takeError(C.pts_container_counter_set(ptr, cname, ckey, C.int64_t(value)))
	})
}

// IncrementCounter adds 1 to counter key of the counters tracked as name
// (from 0 when unset) and returns the new value.
func (c *Container) IncrementCounter(name, key string) (int64, error) {
	var out C.int64_t
	err := c.withNameKey(name, key, func(ptr *C.pts_container_t, cname, ckey *C.char) error {
		return takeError(C.pts_container_counter_increment(ptr, cname, ckey, &out))
	})
	return int64(out), err
}

// Untrack stops tracking name and drops the container's object: an error
// matching ErrUsage when nothing is tracked under it.
func (c *Container) Untrack(name string) error {
	return c.withName(name, func(ptr *C.pts_container_t, cname *C.char) error {
		return takeError(C.pts_container_untrack(ptr, cname))
	})
}

// TrackedNames returns the names of the tracked objects, in the order
// they were tracked.
func (c *Container) TrackedNames() ([]string, error) {
	var text string
	err := c.with(func(ptr *C.pts_container_t) error {
		var out *C.char
		if err := takeError(C.pts_container_tracked_names_json(ptr, &out)); err != nil {
			return err
		}
		text = takeString(out)
		return nil
	})
	if err != nil {
		return nil, err
	}
	var names []string
	if err := json.Unmarshal([]byte(text), &names); err != nil {
		return nil, errorf(CodeInvalidJSON, "tracked names: %v", err)
	}
	return names, nil
}

// LoadInto loads the checkpoint at path into this container, as
// LoadContainer loads into a new one (rebuilding the model, optimizer and
// scheduler the file names through the container's registry), and
// restores every tracked object from the file's extra state: each tracked
// name must have an entry of the object's class in the file (an error
// matching ErrStateMismatch otherwise); entries not tracked are left
// alone. All or nothing: on error the container and its objects keep what
// they held. It returns the flat metadata, as LoadContainer.
func (c *Container) LoadInto(path string) (map[string]any, error) {
	return c.LoadIntoWith(path, LoadOptions{})
}

// LoadIntoWith is LoadInto with options, as LoadContainerWith.
func (c *Container) LoadIntoWith(path string, opts LoadOptions) (map[string]any, error) {
	return c.readFile(path, opts, func(ptr *C.pts_container_t, cpath *C.char, copts *C.pts_load_options_t, meta **C.char) *C.pts_error_t {
		return C.pts_container_load_into(ptr, cpath, copts, meta)
	})
}

// withName runs f with name as a C string on the live handle.
func (c *Container) withName(name string, f func(ptr *C.pts_container_t, cname *C.char) error) error {
	cname, err := cString("name", name)
	if err != nil {
		return err
	}
	defer freeString(cname)
	return c.with(func(ptr *C.pts_container_t) error { return f(ptr, cname) })
}

// withNameKey runs f with name and key as C strings on the live handle.
func (c *Container) withNameKey(name, key string, f func(ptr *C.pts_container_t, cname, ckey *C.char) error) error {
	ckey, err := cString("key", key)
	if err != nil {
		return err
	}
	defer freeString(ckey)
	return c.withName(name, func(ptr *C.pts_container_t, cname *C.char) error { return f(ptr, cname, ckey) })
}

// fillCState writes a Go state into the library's state handle.
func fillCState(state *State, out *C.pts_state_t) error {
	value := []byte("null")
	if state != nil && state.Value != nil {
		var err error
		if value, err = json.Marshal(state.Value); err != nil {
			return errorf(CodeInvalidState, "the state's value: %v", err)
		}
	}
	ctext, err := cString("state value", string(value))
	if err != nil {
		return err
	}
	defer freeString(ctext)
	if err := takeError(C.pts_state_set_value_json(out, ctext)); err != nil {
		return err
	}
	if state == nil {
		return nil
	}
	for name, t := range state.Tensors {
		cname, err := cString("tensor name", name)
		if err != nil {
			return err
		}
		err = t.read(func(tptr *C.pts_tensor_t) error {
			return takeError(C.pts_state_add_tensor(out, cname, tptr))
		})
		freeString(cname)
		if err != nil {
			return err
		}
	}
	return nil
}

// goState copies the library's state handle into a Go state: the value as
// JSON text, each tensor as a new handle sharing its storage.
func goState(ptr *C.pts_state_t) (*State, error) {
	var text *C.char
	if err := takeError(C.pts_state_value_json(ptr, &text)); err != nil {
		return nil, err
	}
	state := &State{Value: json.RawMessage(takeString(text)), Tensors: map[string]*Tensor{}}
	var count C.size_t
	if err := takeError(C.pts_state_tensor_count(ptr, &count)); err != nil {
		return nil, err
	}
	for i := C.size_t(0); i < count; i++ {
		var cname *C.char
		if err := takeError(C.pts_state_tensor_name(ptr, i, &cname)); err != nil {
			return nil, err
		}
		name := takeString(cname)
		cname2, err := cString("tensor name", name)
		if err != nil {
			return nil, err
		}
		var t *C.pts_tensor_t
		err = takeError(C.pts_state_tensor(ptr, cname2, &t))
		C.free(unsafe.Pointer(cname2))
		if err != nil {
			return nil, err
		}
		state.Tensors[name] = wrapTensor(t)
	}
	return state, nil
}
