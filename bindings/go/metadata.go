package pytorchsaver

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
)

// This file owns metadata.json in Go: the types of the whole document
// (docs/FORMAT.md sections 3, 5, 6 and, for version 2, 11) and
// ParseMetadata, the one function that reads it (typed values are
// decoded by typed_value.go). Every metadata the package hands out, from a
// Checkpoint or from a load, goes through it.

// The metadata keys that belong to the format, not to the user
// (docs/FORMAT.md section 3.1).
const (
	keyModelKwargs     = "model_kwargs"
	keyOptimKwargs     = "optim_kwargs"
	keySchedulerKwargs = "scheduler_kwargs"
	keyTimestamp       = "timestamp"
	keyInternals       = "__pytorch_saver__"
)

// reservedKeys are the top-level keys user metadata may not use.
var reservedKeys = [...]string{keyModelKwargs, keyOptimKwargs, keySchedulerKwargs, keyTimestamp, keyInternals}

// maxMetadataDepth is how deeply arrays and objects may nest
// (docs/FORMAT.md section 3).
const maxMetadataDepth = 127

// Kind is what a checkpoint file holds.
type Kind string

// The kinds of checkpoint file.
const (
	// KindCheckpoint is a training checkpoint: model, and the optimizer
	// and scheduler if the container had them.
	KindCheckpoint Kind = "checkpoint"
	// KindInference is a model alone (Container.SaveInference).
	KindInference Kind = "inference"
	// KindWeights is tensors and user metadata without a class (format
	// version 2): no model class or kwargs, no optimizer, scheduler or
	// extra state. Tensors read as from any file; no model loads from it.
	KindWeights Kind = "weights"
)

// Metadata is a metadata.json document, typed (docs/FORMAT.md section 3):
// the flat top-level keys, the user's keys, and the format internals.
// ParseMetadata reads one from JSON text, MetadataFromMap from the flat
// metadata a load returns; Checkpoint.TypedMetadata gives a file's. A
// Metadata is a copy: changing it changes nothing else.
//
// JSON values without a fixed type (kwargs, user values, optimizer and
// scheduler state) are as encoding/json decodes them: numbers are
// float64, objects map[string]any, arrays []any. Inside the internals, a
// non-finite float written as {"__float__": "inf"} (section 3.4) is
// decoded to the float64 it stands for. In a version 2 document the
// kwargs and the extra state are typed values (section 11.2): their tags
// are decoded to Tuple, TorchDtype, ClassRef and the other types of
// typed_value.go, so that optim_kwargs["betas"] is a Tuple. User metadata
// is plain JSON in every version, and so are the kwargs of a version 1
// document, where "__type__" means nothing (section 11.7). A document
// without internals (the flat metadata a load returns) is in the
// library's form, version 2: its tags are decoded.
type Metadata struct {
	// ModelKwargs are the model's constructor kwargs; nil in a weights
	// file, which names no model.
	ModelKwargs map[string]any
	// OptimizerKwargs are the optimizer's constructor kwargs
	// (optim_kwargs), nil when the file has no optimizer.
	OptimizerKwargs map[string]any
	// SchedulerKwargs are the LR scheduler's constructor kwargs, nil when
	// the file has no scheduler.
	SchedulerKwargs map[string]any
	// Timestamp is the save time in Unix seconds (UTC); 0 when absent.
	Timestamp int64
	// User holds every other top-level key: the metadata the user saved
	// ("loss", "epoch", ...). Never nil.
	User map[string]any
	// Internals is __pytorch_saver__, or nil when the document has none
	// (the flat metadata a load returns).
	Internals *Internals

	// object is the document as parsed, for Checkpoint.Metadata.
	object map[string]any
}

// tagsDecoded reports whether the document's kwargs are typed values:
// version 2 and later, and the flat metadata of a load.
func (m *Metadata) tagsDecoded() bool {
	return m.Internals == nil || m.Internals.FormatVersion >= 2
}

// Internals is __pytorch_saver__ (docs/FORMAT.md section 3.2). Keys it
// does not define are ignored, as the format requires of readers.
type Internals struct {
	// FormatVersion is the file's format version (1 or 2).
	FormatVersion int
	// Kind tells a training checkpoint from an inference or weights file.
	Kind Kind
	// ModelClass is the model's class name, such as
	// "pytorch_saver.models.MLP"; "" in a weights file.
	ModelClass string
	// Optimizer is the optimizer's class and state, nil when none.
	Optimizer *OptimizerInternals
	// Scheduler is the LR scheduler's class and state, nil when none.
	Scheduler *SchedulerInternals
	// Extra is the extra training state (format version 2, section
	// 11.3): RNG states, a gradient scaler, counters, user objects, in
	// file order; nil when the file has none.
	Extra []ExtraEntry
	// Manager is the checkpoint manager's record (format version 2,
	// section 11.4), nil when none wrote the file.
	Manager *ManagerRecord
	// Producer says which implementation wrote the file.
	Producer Producer
}

// ExtraEntry is one entry of __pytorch_saver__.extra: the state of a named
// object besides the model, optimizer and scheduler.
type ExtraEntry struct {
	// Name is the entry's name, such as "rng".
	Name string
	// Class names the kind of object whose state this is, such as
	// "pytorch_saver.RNG", "torch.amp.GradScaler" or
	// "pytorch_saver.Counters".
	Class string
	// State is the object's state_dict() as a typed value: its tensors
	// are TensorRef values naming tensors of MemberExtra.
	State any
}

// ManagerRecord is __pytorch_saver__.manager: the checkpoint manager that
// wrote the file, its step and its metrics.
type ManagerRecord struct {
	// ID identifies the manager's series of checkpoints.
	ID string
	// Step is the training step the file was saved at.
	Step int64
	// Metrics are the metrics recorded with it (empty when none).
	Metrics map[string]float64
}

// Producer says which implementation wrote a file.
type Producer struct {
	// Library is "pytorch-saver".
	Library string `json:"library"`
	// Version is the writing library's version.
	Version string `json:"version"`
	// Language is the implementation's language: "rust", "python", ...
	Language string `json:"language"`
	// TorchVersion is the torch version of the writer, if it recorded one.
	TorchVersion string `json:"torch_version,omitempty"`
}

// OptimizerInternals is __pytorch_saver__.optimizer (docs/FORMAT.md
// section 5): PyTorch's Optimizer.state_dict() without its tensors, which
// are in optimizer.safetensors, plus every parameter's name.
type OptimizerInternals struct {
	// Class is the optimizer's class name, such as "torch.optim.Adam".
	Class string
	// ParamGroups are PyTorch's param_groups, in order.
	ParamGroups []ParamGroup
	// ParamNames holds, for each parameter index, the model state-dict
	// name of that parameter ("fc1.weight").
	ParamNames []string
	// State holds, for each parameter index with state, its non-tensor
	// state values (empty for PyTorch's built-in optimizers).
	State map[int]map[string]any
}

// ParamGroup is one of PyTorch's optimizer param_groups.
type ParamGroup struct {
	// Params are the group's parameter indices (into ParamNames).
	Params []int
	// Hyperparameters holds every other key, under PyTorch's name: "lr",
	// "betas" (a two-number list), "weight_decay", "initial_lr", ...
	Hyperparameters map[string]any
}

// SchedulerInternals is __pytorch_saver__.scheduler (docs/FORMAT.md
// section 6).
type SchedulerInternals struct {
	// Class is the scheduler's class name, such as
	// "torch.optim.lr_scheduler.StepLR".
	Class string
	// State is PyTorch's LRScheduler.state_dict(), keys as PyTorch names
	// them ("last_epoch", "base_lrs", "_last_lr", ...).
	State map[string]any
}

// ParseMetadata reads a metadata.json document (such as
// Checkpoint.MetadataJSON) or the flat metadata of a load. It refuses,
// with an error matching ErrFormat, text that is not a JSON object
// (kind "Json": also a key twice in one object, a number out of float64's
// range, nesting deeper than 127 levels, anything after the object) and
// an object whose keys do not have the types of docs/FORMAT.md sections
// 3, 5, 6 and 11 (kind "Schema"), and, in a version 2 document, a tag
// that section 11.2 does not allow (kind "TypedValue"). The checks between keys that the library
// makes when it opens a file (an optimizer's kwargs present iff its
// internals are, indices in range, a supported format version) are not
// repeated here.
func ParseMetadata(text string) (*Metadata, error) {
	object, err := decodeMetadataObject(text)
	if err != nil {
		return nil, err
	}
	return newMetadata(object, extraKeyOrder(text))
}

// MetadataFromMap types the flat metadata that LoadContainer, LoadModel
// and Container.Restore return (or any metadata object as encoding/json
// decodes it), as ParseMetadata types JSON text. The map is not kept:
// the result shares nothing with it.
func MetadataFromMap(m map[string]any) (*Metadata, error) {
	if m == nil {
		return nil, schemaError("(top level)", "not an object")
	}
	return newMetadata(copyObject(m), nil)
}

// flatMetadata parses the flat metadata a load returned into the map
// the load functions give their caller.
func flatMetadata(text string) (map[string]any, error) {
	m, err := ParseMetadata(text)
	if err != nil {
		return nil, err
	}
	return m.object, nil
}

// clone returns a deep copy of a parsed m, sharing nothing with it.
func (m *Metadata) clone() *Metadata {
	var order []string
	if m.Internals != nil {
		for _, e := range m.Internals.Extra {
			order = append(order, e.Name)
		}
	}
	c, err := newMetadata(m.objectCopy(), order)
	if err != nil {
		panic("pytorchsaver: a parsed metadata object no longer types: " + err.Error())
	}
	return c
}

// objectCopy returns a deep copy of the object m was parsed from.
func (m *Metadata) objectCopy() map[string]any { return copyObject(m.object) }

// copyObject deep-copies a decoded JSON object, typed values included;
// nil stays nil.
func copyObject(m map[string]any) map[string]any { return cloneTypedObject(m) }

// decodeMetadataObject decodes JSON text into the object encoding/json
// would give, refusing what docs/FORMAT.md section 3 forbids and
// encoding/json lets through: a repeated key, a number that does not fit
// a float64, nesting deeper than 127 levels.
func decodeMetadataObject(text string) (map[string]any, error) {
	return decodeStrictObject(text, "metadata.json")
}

// decodeStrictObject is decodeMetadataObject for the JSON document named
// what (metadata.json, index.json): its errors are of kind "Json".
func decodeStrictObject(text, what string) (map[string]any, error) {
	dec := json.NewDecoder(strings.NewReader(text))
	dec.UseNumber()
	v, err := decodeJSONValue(dec, 1)
	if err == nil {
		if _, extra := dec.Token(); extra != io.EOF {
			err = errors.New("data after the top-level value")
		}
	}
	if err != nil {
		return nil, &Error{Code: CodeFormat, Kind: "Json", Message: what + ": " + err.Error()}
	}
	object, ok := v.(map[string]any)
	if !ok {
		return nil, &Error{Code: CodeFormat, Kind: "Json", Message: what + ": the top level is not an object"}
	}
	return object, nil
}

// decodeJSONValue decodes the value that starts at the decoder's next
// token; depth counts the arrays and objects it is in, itself included.
func decodeJSONValue(dec *json.Decoder, depth int) (any, error) {
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	switch t := tok.(type) {
	case json.Delim:
		if depth > maxMetadataDepth {
			return nil, fmt.Errorf("arrays and objects nest more than %d levels deep", maxMetadataDepth)
		}
		if t == '[' {
			list := []any{}
			for dec.More() {
				v, err := decodeJSONValue(dec, depth+1)
				if err != nil {
					return nil, err
				}
				list = append(list, v)
			}
			_, err := dec.Token() // ']'
			return list, err
		}
		object := map[string]any{}
		for dec.More() {
			key, err := dec.Token()
			if err != nil {
				return nil, err
			}
			k := key.(string) // the decoder allows only a string here
			if _, twice := object[k]; twice {
				return nil, fmt.Errorf("key %q appears twice in one object", k)
			}
			if object[k], err = decodeJSONValue(dec, depth+1); err != nil {
				return nil, err
			}
		}
		_, err := dec.Token() // '}'
		return object, err
	case json.Number:
		f, err := strconv.ParseFloat(string(t), 64)
		if err != nil {
			return nil, fmt.Errorf("number %s does not fit a float64", t)
		}
		return f, nil
	}
	return tok, nil // a string, a bool or nil
}

// newMetadata types a decoded metadata object, which it keeps;
// extraOrder lists the names of __pytorch_saver__.extra in file order
// (nil: sorted).
func newMetadata(object map[string]any, extraOrder []string) (*Metadata, error) {
	m := &Metadata{object: object, User: map[string]any{}}
	var err error
	if weightsDocument(object) {
		if _, ok := object[keyModelKwargs]; ok {
			return nil, schemaError(keyModelKwargs, "present in a weights file, which names no model")
		}
	} else if m.ModelKwargs, err = objectField(object, keyModelKwargs, keyModelKwargs, true); err != nil {
		return nil, err
	}
	if m.OptimizerKwargs, err = objectField(object, keyOptimKwargs, keyOptimKwargs, false); err != nil {
		return nil, err
	}
	if m.SchedulerKwargs, err = objectField(object, keySchedulerKwargs, keySchedulerKwargs, false); err != nil {
		return nil, err
	}
	if v, ok := object[keyTimestamp]; ok {
		if m.Timestamp, err = integer(v, keyTimestamp, 0, 1<<53); err != nil {
			return nil, err
		}
	}
	if v, ok := object[keyInternals]; ok {
		if m.Internals, err = newInternals(v, extraOrder); err != nil {
			return nil, err
		}
	}
	if m.tagsDecoded() {
		if err := m.decodeTypedValues(); err != nil {
			return nil, err
		}
	}
	for k, v := range object {
		if !isReserved(k) {
			m.User[k] = v
		}
	}
	return m, nil
}

// decodeTypedValues replaces the tags of the kwargs and the extra state
// by their Go values, in docs/FORMAT.md section 11.6's order: the
// kwargs, then each extra entry's state in file order.
func (m *Metadata) decodeTypedValues() error {
	d := &typedDecoder{tensors: map[string]string{}}
	var err error
	for _, part := range []struct {
		kwargs *map[string]any
		path   string
		place  typedPlace
	}{
		{&m.ModelKwargs, keyModelKwargs, placeKwargs},
		{&m.OptimizerKwargs, keyOptimKwargs, placeKwargs},
		{&m.SchedulerKwargs, keySchedulerKwargs, placeSchedulerKwargs},
	} {
		if *part.kwargs, err = d.object(*part.kwargs, part.path, part.place); err != nil {
			return err
		}
	}
	if m.Internals != nil {
		for i := range m.Internals.Extra {
			e := &m.Internals.Extra[i]
			if e.State, err = d.value(e.State, keyInternals+".extra."+e.Name+".state", placeExtraState); err != nil {
				return err
			}
		}
	}
	return nil
}

// weightsDocument reports whether object's internals say kind "weights".
func weightsDocument(object map[string]any) bool {
	internals, _ := object[keyInternals].(map[string]any)
	return internals != nil && internals["kind"] == string(KindWeights)
}

// extraKeyOrder lists the keys of __pytorch_saver__.extra in the order
// the text writes them (Go maps keep none); nil when it has none. The
// text was decoded before, so a token error only ends the walk.
func extraKeyOrder(text string) []string {
	dec := json.NewDecoder(strings.NewReader(text))
	// enter moves into the object value of key, at the current object's
	// level; false when the key is absent or not an object.
	enter := func(key string) bool {
		if t, err := dec.Token(); err != nil || t != json.Delim('{') {
			return false
		}
		for dec.More() {
			k, err := dec.Token()
			if err != nil {
				return false
			}
			if k == key {
				return true
			}
			var skip json.RawMessage
			if dec.Decode(&skip) != nil {
				return false
			}
		}
		return false
	}
	if !enter(keyInternals) || !enter("extra") {
		return nil
	}
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil
	}
	var order []string
	for dec.More() {
		k, err := dec.Token()
		if err != nil {
			return order
		}
		order = append(order, k.(string))
		var skip json.RawMessage
		if dec.Decode(&skip) != nil {
			return order
		}
	}
	return order
}

func isReserved(key string) bool {
	for _, r := range reservedKeys {
		if key == r {
			return true
		}
	}
	return false
}

func newInternals(v any, extraOrder []string) (*Internals, error) {
	const path = keyInternals
	object, ok := v.(map[string]any)
	if !ok {
		return nil, schemaError(path, "must be an object")
	}
	in := &Internals{}
	version, err := integer(object["format_version"], path+".format_version", 0, math.MaxInt32)
	if err != nil {
		return nil, err
	}
	in.FormatVersion = int(version)
	kind, err := stringField(object, "kind", path)
	if err != nil {
		return nil, err
	}
	in.Kind = Kind(kind)
	if in.Kind == KindWeights {
		if _, ok := object["model"]; ok {
			return nil, schemaError(path+".model", "present in a weights file, which names no model")
		}
	} else {
		model, err := objectField(object, "model", path+".model", true)
		if err != nil {
			return nil, err
		}
		if in.ModelClass, err = stringField(model, "class", path+".model"); err != nil {
			return nil, err
		}
	}
	if raw, ok := object["optimizer"]; ok {
		if in.Optimizer, err = newOptimizerInternals(raw, path+".optimizer"); err != nil {
			return nil, err
		}
	}
	if raw, ok := object["scheduler"]; ok {
		if in.Scheduler, err = newSchedulerInternals(raw, path+".scheduler"); err != nil {
			return nil, err
		}
	}
	producer, err := objectField(object, "producer", path+".producer", true)
	if err != nil {
		return nil, err
	}
	p := &in.Producer
	for _, f := range []struct {
		key  string
		dest *string
	}{{"library", &p.Library}, {"version", &p.Version}, {"language", &p.Language}} {
		if *f.dest, err = stringField(producer, f.key, path+".producer"); err != nil {
			return nil, err
		}
	}
	if _, ok := producer["torch_version"]; ok {
		if p.TorchVersion, err = stringField(producer, "torch_version", path+".producer"); err != nil {
			return nil, err
		}
	}
	if in.FormatVersion >= 2 { // a version 1 reader ignores these keys
		if raw, ok := object["extra"]; ok {
			if in.Extra, err = newExtra(raw, path+".extra", extraOrder); err != nil {
				return nil, err
			}
		}
		if raw, ok := object["manager"]; ok {
			if in.Manager, err = newManagerRecord(raw, path+".manager"); err != nil {
				return nil, err
			}
		}
	}
	return in, nil
}

// newExtra reads __pytorch_saver__.extra, entries in the order given
// (the names the object has, the others sorted after them); the states
// stay as decoded JSON until decodeTypedValues.
func newExtra(v any, path string, order []string) ([]ExtraEntry, error) {
	object, ok := v.(map[string]any)
	if !ok {
		return nil, schemaError(path, "must be an object")
	}
	names := make([]string, 0, len(object))
	seen := map[string]bool{}
	for _, k := range append(order, sortedKeys(object)...) {
		if _, ok := object[k]; ok && !seen[k] {
			seen[k] = true
			names = append(names, k)
		}
	}
	entries := make([]ExtraEntry, 0, len(names))
	for _, name := range names {
		epath := path + "." + name
		if name == "" {
			return nil, schemaError(path, "an entry with an empty name")
		}
		entry, ok := object[name].(map[string]any)
		if !ok {
			return nil, schemaError(epath, "must be an object")
		}
		class, err := stringField(entry, "class", epath)
		if err != nil {
			return nil, err
		}
		state, ok := entry["state"]
		if !ok {
			return nil, schemaError(epath+".state", "missing")
		}
		entries = append(entries, ExtraEntry{Name: name, Class: class, State: state})
	}
	return entries, nil
}

// newManagerRecord reads __pytorch_saver__.manager.
func newManagerRecord(v any, path string) (*ManagerRecord, error) {
	object, ok := v.(map[string]any)
	if !ok {
		return nil, schemaError(path, "must be an object")
	}
	r := &ManagerRecord{Metrics: map[string]float64{}}
	var err error
	if r.ID, err = stringField(object, "id", path); err != nil {
		return nil, err
	}
	if _, ok := object["step"]; !ok {
		return nil, schemaError(path+".step", "missing")
	}
	if r.Step, err = integer(object["step"], path+".step", 0, 1<<53); err != nil {
		return nil, err
	}
	metrics, err := objectField(object, "metrics", path+".metrics", true)
	if err != nil {
		return nil, err
	}
	for k, x := range metrics {
		f, ok := x.(float64)
		if n, isNumber := x.(json.Number); isNumber {
			var err error
			f, err = n.Float64()
			ok = err == nil
		}
		if !ok || math.IsInf(f, 0) || math.IsNaN(f) {
			return nil, schemaError(path+".metrics."+k, "must be a finite number")
		}
		r.Metrics[k] = f
	}
	return r, nil
}

func newOptimizerInternals(v any, path string) (*OptimizerInternals, error) {
	object, ok := v.(map[string]any)
	if !ok {
		return nil, schemaError(path, "must be an object")
	}
	o := &OptimizerInternals{State: map[int]map[string]any{}}
	var err error
	if o.Class, err = stringField(object, "class", path); err != nil {
		return nil, err
	}
	names, ok := object["param_names"].([]any)
	if !ok {
		return nil, schemaError(path+".param_names", "must be a list of parameter names")
	}
	for i, n := range names {
		s, ok := n.(string)
		if !ok {
			return nil, schemaError(fmt.Sprintf("%s.param_names[%d]", path, i), "must be a string")
		}
		o.ParamNames = append(o.ParamNames, s)
	}
	groups, ok := object["param_groups"].([]any)
	if !ok {
		return nil, schemaError(path+".param_groups", "must be a list of objects")
	}
	for g, raw := range groups {
		gpath := fmt.Sprintf("%s.param_groups[%d]", path, g)
		group, ok := raw.(map[string]any)
		if !ok {
			return nil, schemaError(gpath, "must be an object")
		}
		params, ok := group["params"].([]any)
		if !ok {
			return nil, schemaError(gpath+".params", "must be a list of parameter indices")
		}
		pg := ParamGroup{Params: make([]int, 0, len(params)), Hyperparameters: map[string]any{}}
		for _, p := range params {
			i, err := integer(p, gpath+".params", 0, math.MaxInt32)
			if err != nil {
				return nil, err
			}
			pg.Params = append(pg.Params, int(i))
		}
		for k, x := range group {
			if k != "params" {
				if pg.Hyperparameters[k], err = decodeFloats(x, gpath+"."+k); err != nil {
					return nil, err
				}
			}
		}
		o.ParamGroups = append(o.ParamGroups, pg)
	}
	state, ok := object["state"].(map[string]any)
	if !ok {
		return nil, schemaError(path+".state", "must be an object")
	}
	for k, raw := range state {
		i, err := strconv.ParseUint(k, 10, 31)
		if err != nil || strconv.FormatUint(i, 10) != k {
			return nil, schemaError(path+".state", fmt.Sprintf("key %q is not a parameter index", k))
		}
		values, err := decodeFloats(raw, path+".state."+k)
		if err != nil {
			return nil, err
		}
		entry, ok := values.(map[string]any)
		if !ok {
			return nil, schemaError(path+".state."+k, "must be an object")
		}
		o.State[int(i)] = entry
	}
	return o, nil
}

func newSchedulerInternals(v any, path string) (*SchedulerInternals, error) {
	object, ok := v.(map[string]any)
	if !ok {
		return nil, schemaError(path, "must be an object")
	}
	s := &SchedulerInternals{}
	var err error
	if s.Class, err = stringField(object, "class", path); err != nil {
		return nil, err
	}
	raw, ok := object["state"].(map[string]any)
	if !ok {
		return nil, schemaError(path+".state", "must be an object")
	}
	state, err := decodeFloats(raw, path+".state")
	if err != nil {
		return nil, err
	}
	s.State = state.(map[string]any)
	return s, nil
}

// decodeFloats returns a copy of an internals value with every
// {"__float__": "inf" | "-inf" | "nan"} replaced by its float64
// (docs/FORMAT.md section 3.4).
func decodeFloats(v any, path string) (any, error) {
	switch v := v.(type) {
	case map[string]any:
		if raw, ok := v["__float__"]; ok && len(v) == 1 {
			switch raw {
			case "inf":
				return math.Inf(1), nil
			case "-inf":
				return math.Inf(-1), nil
			case "nan":
				return math.NaN(), nil
			}
			return nil, schemaError(path, fmt.Sprintf(`{"__float__": %v} is not "inf", "-inf" or "nan"`, raw))
		}
		out := make(map[string]any, len(v))
		for k, x := range v {
			var err error
			if out[k], err = decodeFloats(x, path+"."+k); err != nil {
				return nil, err
			}
		}
		return out, nil
	case []any:
		out := make([]any, len(v))
		for i, x := range v {
			var err error
			if out[i], err = decodeFloats(x, fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return nil, err
			}
		}
		return out, nil
	}
	return v, nil
}

// objectField is object[key] as an object; nil when absent and not
// required.
func objectField(object map[string]any, key, path string, required bool) (map[string]any, error) {
	v, ok := object[key]
	if !ok {
		if required {
			return nil, schemaError(path, "missing")
		}
		return nil, nil
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, schemaError(path, "must be an object")
	}
	return m, nil
}

// stringField is object[key] as a non-empty string.
func stringField(object map[string]any, key, path string) (string, error) {
	v, ok := object[key]
	if !ok {
		return "", schemaError(path+"."+key, "missing")
	}
	s, ok := v.(string)
	if !ok || s == "" {
		return "", schemaError(path+"."+key, "must be a non-empty string")
	}
	return s, nil
}

// integer is v as an integer in [lo, hi], where |lo| and |hi| are at most
// 2**53: a decoded number is a float64, exact up to there.
func integer(v any, path string, lo, hi int64) (int64, error) {
	if v == nil {
		return 0, schemaError(path, "missing")
	}
	f, ok := v.(float64)
	if n, isNumber := v.(json.Number); isNumber {
		var err error
		f, err = n.Float64()
		ok = err == nil
	}
	if !ok || f != math.Trunc(f) || f < float64(lo) || f > float64(hi) {
		return 0, schemaError(path, fmt.Sprintf("must be an integer in %d..%d, not %v", lo, hi, v))
	}
	return int64(f), nil
}

// schemaError is a metadata document that is not section 3's, as the
// library reports one (FormatError::Schema).
func schemaError(field, reason string) *Error {
	return &Error{Code: CodeFormat, Kind: "Schema", Message: "metadata.json: field " + field + ": " + reason}
}
