package pytorchsaver

import (
	"encoding/json"
	"fmt"
	"math"
	"sort"
)

// This file owns the typed values of format version 2 (docs/FORMAT.md
// section 11.2): the Go values that stand for the tags JSON has no form
// for, and the decoding of kwargs and extra-state values into them.
//
// In a version 2 file, model_kwargs, optim_kwargs, scheduler_kwargs and
// the state of each extra-state entry are typed values: plain JSON (as
// encoding/json decodes it: float64, string, bool, nil, []any,
// map[string]any), in which a JSON object with the key "__type__" is a
// tag, decoded to one of the types below:
//
//	{"__type__": "class", ...}    ClassRef
//	{"__type__": "tuple", ...}    Tuple
//	{"__type__": "dict", ...}     Dict
//	{"__type__": "dtype", ...}    TorchDtype
//	{"__type__": "float", ...}    float64 (+Inf, -Inf or NaN)
//	{"__type__": "object", ...}   CodecObject
//	{"__type__": "spec", ...}     ClassSpec
//	{"__type__": "callable", ...} CallableRef
//	{"__type__": "tensor", ...}   TensorRef
//
// Each type's MarshalJSON writes its tag back, so json.Marshal of a typed
// value gives its JSON form (except for non-finite floats, which
// encoding/json refuses). In a version 1 file, "__type__" means nothing:
// its kwargs stay plain JSON (section 11.7).

// ClassRef is a reference to a class by name (a "class" tag), not an
// instance: "torchvision.models.resnet.BasicBlock". Go resolves nothing.
type ClassRef struct {
	Name string
}

// Tuple is a Python tuple (a "tuple" tag), such as Adam's betas; its
// items are typed values.
type Tuple []any

// Dict is a dict whose keys are not all strings, or that has the key
// "__type__" (a "dict" tag): its items in file order. Keys and values are
// typed values.
type Dict []DictItem

// DictItem is one key and value of a Dict.
type DictItem struct {
	Key   any
	Value any
}

// TorchDtype is a torch.dtype (a "dtype" tag) by its name without the
// "torch." prefix: "float32", "bfloat16", "int64", ...
type TorchDtype struct {
	Name string
}

// CodecObject is an object that the named codec rebuilds from its fields
// (an "object" tag, docs/FORMAT.md section 11.2.2): Go carries it intact.
type CodecObject struct {
	// Codec is "dataclass", "namespace", "hf_config" or a user codec's
	// dotted name.
	Codec string
	// Class is the class name, "" for codecs that need none (the tag's
	// null).
	Class string
	// Fields are the object's fields, typed values.
	Fields map[string]any
}

// ClassSpec is a class and its constructor kwargs (a "spec" tag), built by
// the object that receives it: the child schedulers of SequentialLR and
// ChainedScheduler.
type ClassSpec struct {
	Class  string
	Kwargs map[string]any
}

// CallableRef is a callable the caller supplies at load time (a
// "callable" tag, only in scheduler_kwargs): LambdaLR's lr_lambda. Name
// describes it and is never resolved.
type CallableRef struct {
	Name string
}

// TensorRef is a tensor of the member extra.safetensors (MemberExtra) by
// its name (a "tensor" tag, only in extra-state values).
type TensorRef struct {
	Name string
}

// MarshalJSON writes the "class" tag.
func (c ClassRef) MarshalJSON() ([]byte, error) {
	return json.Marshal(map[string]any{typeKey: "class", "name": c.Name})
}

// MarshalJSON writes the "tuple" tag.
func (t Tuple) MarshalJSON() ([]byte, error) {
	items := []any(t)
	if items == nil {
		items = []any{}
	}
	return json.Marshal(map[string]any{typeKey: "tuple", "items": items})
}

// MarshalJSON writes the "dict" tag.
func (d Dict) MarshalJSON() ([]byte, error) {
	items := make([][2]any, len(d))
	for i, item := range d {
		items[i] = [2]any{item.Key, item.Value}
	}
	return json.Marshal(map[string]any{typeKey: "dict", "items": items})
}

// MarshalJSON writes the "dtype" tag.
func (d TorchDtype) MarshalJSON() ([]byte, error) {
	return json.Marshal(map[string]any{typeKey: "dtype", "name": d.Name})
}

// MarshalJSON writes the "object" tag (class null when Class is "").
func (o CodecObject) MarshalJSON() ([]byte, error) {
	var class any
	if o.Class != "" {
		class = o.Class
	}
	return json.Marshal(map[string]any{typeKey: "object", "codec": o.Codec, "class": class, "fields": nonNilObject(o.Fields)})
}

// MarshalJSON writes the "spec" tag.
func (s ClassSpec) MarshalJSON() ([]byte, error) {
	return json.Marshal(map[string]any{typeKey: "spec", "class": s.Class, "kwargs": nonNilObject(s.Kwargs)})
}

// MarshalJSON writes the "callable" tag.
func (c CallableRef) MarshalJSON() ([]byte, error) {
	return json.Marshal(map[string]any{typeKey: "callable", "name": c.Name})
}

// MarshalJSON writes the "tensor" tag.
func (t TensorRef) MarshalJSON() ([]byte, error) {
	return json.Marshal(map[string]any{typeKey: "tensor", "name": t.Name})
}

func nonNilObject(m map[string]any) map[string]any {
	if m == nil {
		return map[string]any{}
	}
	return m
}

// typeKey marks a tag object.
const typeKey = "__type__"

// tagKeys are the keys each tag type has besides "__type__", all required.
var tagKeys = map[string][]string{
	"class":    {"name"},
	"tuple":    {"items"},
	"dict":     {"items"},
	"dtype":    {"name"},
	"float":    {"value"},
	"object":   {"codec", "class", "fields"},
	"spec":     {"class", "kwargs"},
	"callable": {"name"},
	"tensor":   {"name"},
}

// torchDtypeNames are the dtype names a "dtype" tag may hold.
var torchDtypeNames = map[string]bool{
	"float64": true, "float32": true, "float16": true, "bfloat16": true, "complex128": true,
	"complex64": true, "int64": true, "int32": true, "int16": true, "int8": true, "uint64": true,
	"uint32": true, "uint16": true, "uint8": true, "bool": true, "float8_e4m3fn": true, "float8_e5m2": true,
}

// maxClassNameLen is the longest class name a tag may hold, in bytes.
const maxClassNameLen = 512

// isClassName reports whether s is dotted ASCII identifiers
// (docs/FORMAT.md section 11.2.1).
func isClassName(s string) bool {
	if s == "" || len(s) > maxClassNameLen {
		return false
	}
	start := true
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '.':
			if start {
				return false
			}
			start = true
		case c == '_' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z':
			start = false
		case c >= '0' && c <= '9':
			if start {
				return false
			}
		default:
			return false
		}
	}
	return !start
}

// typedPlace is where a typed value is, which decides the tags it may
// hold: "tensor" only in extra state, "callable" only in scheduler_kwargs.
type typedPlace int

const (
	placeKwargs typedPlace = iota
	placeSchedulerKwargs
	placeExtraState
)

// typedDecoder decodes the typed values of one document; tensors holds
// the tensor names its "tensor" tags named so far, which must not repeat.
type typedDecoder struct {
	tensors map[string]string // tensor name -> the path of its tag
}

// object decodes an object whose values are typed values (kwargs, an
// object's fields, a spec's kwargs): the object itself is never a tag.
func (d *typedDecoder) object(m map[string]any, path string, place typedPlace) (map[string]any, error) {
	if m == nil {
		return nil, nil
	}
	out := make(map[string]any, len(m))
	for _, k := range sortedKeys(m) { // Go maps keep no document order
		var err error
		if out[k], err = d.value(m[k], path+"."+k, place); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// value decodes one typed value.
func (d *typedDecoder) value(v any, path string, place typedPlace) (any, error) {
	switch v := v.(type) {
	case map[string]any:
		if _, ok := v[typeKey]; ok {
			return d.tag(v, path, place)
		}
		return d.object(v, path, place)
	case []any:
		out := make([]any, len(v))
		for i, x := range v {
			var err error
			if out[i], err = d.value(x, fmt.Sprintf("%s[%d]", path, i), place); err != nil {
				return nil, err
			}
		}
		return out, nil
	}
	return v, nil
}

// tag decodes a tag object, checking it as docs/FORMAT.md section 11.6
// lists: its type, its keys, its payload's JSON types, then names and
// values, then where it is.
func (d *typedDecoder) tag(m map[string]any, path string, place typedPlace) (any, error) {
	typ, _ := m[typeKey].(string)
	keys, known := tagKeys[typ]
	if !known {
		return nil, typedValueError(path, fmt.Sprintf("__type__ %s is not a type of typed values", jsonText(m[typeKey])))
	}
	for _, k := range keys {
		if _, ok := m[k]; !ok {
			return nil, typedValueError(path, fmt.Sprintf("a %q tag without %q", typ, k))
		}
	}
	if len(m) != len(keys)+1 {
		for _, k := range sortedKeys(m) {
			if k != typeKey && !contains(keys, k) {
				return nil, typedValueError(path, fmt.Sprintf("a %q tag with the key %q", typ, k))
			}
		}
	}
	str := func(key string) (string, error) {
		s, ok := m[key].(string)
		if !ok {
			return "", typedValueError(path+"."+key, fmt.Sprintf("must be a string, not %s", jsonText(m[key])))
		}
		return s, nil
	}
	obj := func(key string) (map[string]any, error) {
		o, ok := m[key].(map[string]any)
		if !ok {
			return nil, typedValueError(path+"."+key, "must be an object")
		}
		return o, nil
	}
	list := func() ([]any, error) {
		l, ok := m["items"].([]any)
		if !ok {
			return nil, typedValueError(path+".items", "must be a list")
		}
		return l, nil
	}
	className := func(key string) (string, error) {
		s, err := str(key)
		if err == nil && !isClassName(s) {
			err = typedValueError(path+"."+key, fmt.Sprintf("%q is not a class name (dotted identifiers, at most %d bytes)", s, maxClassNameLen))
		}
		return s, err
	}
	switch typ {
	case "class":
		name, err := className("name")
		return ClassRef{Name: name}, err
	case "tuple":
		items, err := list()
		if err != nil {
			return nil, err
		}
		out, err := d.value(items, path+".items", place)
		if err != nil {
			return nil, err
		}
		return Tuple(out.([]any)), nil
	case "dict":
		items, err := list()
		if err != nil {
			return nil, err
		}
		for i, item := range items {
			if pair, ok := item.([]any); !ok || len(pair) != 2 {
				return nil, typedValueError(fmt.Sprintf("%s.items[%d]", path, i), "must be a two-element list [key, value]")
			}
		}
		out := make(Dict, len(items))
		for i, item := range items {
			pair := item.([]any)
			ipath := fmt.Sprintf("%s.items[%d]", path, i)
			var err error
			if out[i].Key, err = d.value(pair[0], ipath+"[0]", place); err != nil {
				return nil, err
			}
			if out[i].Value, err = d.value(pair[1], ipath+"[1]", place); err != nil {
				return nil, err
			}
		}
		return out, nil
	case "dtype":
		name, err := str("name")
		if err == nil && !torchDtypeNames[name] {
			err = typedValueError(path+".name", fmt.Sprintf("%q is not a dtype name", name))
		}
		return TorchDtype{Name: name}, err
	case "float":
		value, err := str("value")
		if err != nil {
			return nil, err
		}
		switch value {
		case "inf":
			return math.Inf(1), nil
		case "-inf":
			return math.Inf(-1), nil
		case "nan":
			return math.NaN(), nil
		}
		return nil, typedValueError(path+".value", fmt.Sprintf(`%q is not "inf", "-inf" or "nan"`, value))
	case "object":
		codec, err := str("codec")
		if err != nil {
			return nil, err
		}
		if codec == "" {
			return nil, typedValueError(path+".codec", "must be a non-empty string")
		}
		if m["class"] != nil {
			if _, ok := m["class"].(string); !ok {
				return nil, typedValueError(path+".class", "must be a string or null")
			}
		}
		fields, err := obj("fields")
		if err != nil {
			return nil, err
		}
		o := CodecObject{Codec: codec}
		if m["class"] != nil {
			if o.Class, err = className("class"); err != nil {
				return nil, err
			}
		}
		o.Fields, err = d.object(fields, path+".fields", place)
		return o, err
	case "spec":
		if _, err := str("class"); err != nil {
			return nil, err
		}
		kwargs, err := obj("kwargs")
		if err != nil {
			return nil, err
		}
		s := ClassSpec{}
		if s.Class, err = className("class"); err != nil {
			return nil, err
		}
		s.Kwargs, err = d.object(kwargs, path+".kwargs", place)
		return s, err
	case "callable":
		name, err := str("name")
		if err != nil {
			return nil, err
		}
		if name == "" {
			return nil, typedValueError(path+".name", "must be a non-empty string")
		}
		if place != placeSchedulerKwargs {
			return nil, typedValueError(path, "a callable tag outside scheduler_kwargs")
		}
		return CallableRef{Name: name}, nil
	default: // "tensor"
		name, err := str("name")
		if err != nil {
			return nil, err
		}
		if place != placeExtraState {
			return nil, typedValueError(path, "a tensor tag outside extra state")
		}
		if first, twice := d.tensors[name]; twice {
			return nil, typedValueError(path, fmt.Sprintf("tensor %q is named by %s too", name, first))
		}
		d.tensors[name] = path
		return TensorRef{Name: name}, nil
	}
}

// typedValueError is a typed value that docs/FORMAT.md section 11.2
// does not allow, as the library reports one (FormatError::TypedValue).
func typedValueError(field, reason string) *Error {
	return &Error{Code: CodeFormat, Kind: "TypedValue", Message: "metadata.json: field " + field + ": " + reason}
}

func jsonText(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// cloneTyped deep-copies a typed value (a decoded JSON value or a tag's
// Go value).
func cloneTyped(v any) any {
	switch v := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(v))
		for k, x := range v {
			out[k] = cloneTyped(x)
		}
		return out
	case []any:
		out := make([]any, len(v))
		for i, x := range v {
			out[i] = cloneTyped(x)
		}
		return out
	case Tuple:
		return Tuple(cloneTyped([]any(v)).([]any))
	case Dict:
		out := make(Dict, len(v))
		for i, item := range v {
			out[i] = DictItem{Key: cloneTyped(item.Key), Value: cloneTyped(item.Value)}
		}
		return out
	case CodecObject:
		v.Fields = cloneTypedObject(v.Fields)
		return v
	case ClassSpec:
		v.Kwargs = cloneTypedObject(v.Kwargs)
		return v
	}
	return v
}

func cloneTypedObject(m map[string]any) map[string]any {
	if m == nil {
		return nil
	}
	return cloneTyped(m).(map[string]any)
}
