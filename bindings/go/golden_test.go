package pytorchsaver

import (
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"math"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// builtinClasses are the model classes every implementation builds in
// (docs/MODELS.md): their golden files load into a container here.
var builtinClasses = map[string]bool{
	"torch.nn.Linear":                 true,
	"pytorch_saver.models.MLP":        true,
	"pytorch_saver.models.Sequential": true,
}

var members = map[string]Member{
	"model.safetensors":     MemberModel,
	"optimizer.safetensors": MemberOptimizer,
	"extra.safetensors":     MemberExtra,
}

// Every golden file reads with exactly the metadata, dtypes, shapes and
// bytes its sidecar records.
func TestGoldenFilesReadWithRecordedValues(t *testing.T) {
	files := goldenFiles(t)
	if len(files) < 22 {
		t.Fatalf("found %d golden files, want at least 22: %v", len(files), files)
	}
	tensorsChecked := 0
	for _, path := range files {
		t.Run(filepath.Base(path), func(t *testing.T) {
			want := readSidecar(t, path)
			ckpt, err := OpenCheckpoint(path)
			if err != nil {
				t.Fatal(err)
			}
			defer ckpt.Close()

			got := canonicalJSON(t, []byte(ckpt.MetadataJSON()))
			if exp := canonicalJSON(t, want.Metadata); !reflect.DeepEqual(got, exp) {
				t.Fatalf("metadata\n got %v\nwant %v", got, exp)
			}
			for name, member := range members {
				names, err := ckpt.TensorNames(member)
				if err != nil {
					t.Fatal(err)
				}
				recorded := want.Tensors[name]
				if len(names) != len(recorded) {
					t.Fatalf("%s: %d tensors, the sidecar records %d", name, len(names), len(recorded))
				}
				for _, tensor := range names {
					exp, ok := recorded[tensor]
					if !ok {
						t.Fatalf("%s: tensor %q is not in the sidecar", name, tensor)
					}
					info, err := ckpt.TensorInfo(member, tensor)
					if err != nil {
						t.Fatal(err)
					}
					if info.DType.String() != exp.DType {
						t.Errorf("%s: dtype %v, want %s", tensor, info.DType, exp.DType)
					}
					if !slices.Equal(info.Shape, exp.Shape) && !(len(info.Shape) == 0 && len(exp.Shape) == 0) {
						t.Errorf("%s: shape %v, want %v", tensor, info.Shape, exp.Shape)
					}
					data, shape, err := ckpt.ReadBytes(member, tensor)
					if err != nil {
						t.Fatal(err)
					}
					if hex.EncodeToString(data) != exp.Hex {
						t.Errorf("%s: bytes %x, want %s", tensor, data, exp.Hex)
					}
					if info.NumBytes != len(data) || !slices.Equal(shape, info.Shape) {
						t.Errorf("%s: ReadBytes gave %d bytes of shape %v, TensorInfo %+v", tensor, len(data), shape, info)
					}
					tensorsChecked++
				}
			}
		})
	}
	if tensorsChecked < 200 {
		t.Fatalf("checked %d tensors, want at least 200", tensorsChecked)
	}
}

// The metadata accessors agree with the typed metadata, which is the
// sidecar's.
func TestGoldenMetadataAccessors(t *testing.T) {
	for _, path := range goldenFiles(t) {
		ckpt, err := OpenCheckpoint(path)
		if err != nil {
			t.Fatal(err)
		}
		m := ckpt.TypedMetadata()
		in := m.Internals
		// The sidecar records the file's metadata: the typed kwargs and
		// user keys are its, as JSON.
		var sidecar struct {
			Metadata struct {
				ModelKwargs     json.RawMessage `json:"model_kwargs"`
				OptimKwargs     json.RawMessage `json:"optim_kwargs"`
				SchedulerKwargs json.RawMessage `json:"scheduler_kwargs"`
				Timestamp       int64           `json:"timestamp"`
			} `json:"metadata"`
		}
		if err := json.Unmarshal(readSidecar(t, path).raw, &sidecar); err != nil {
			t.Fatal(err)
		}
		for _, part := range []struct {
			name   string
			typed  map[string]any
			record json.RawMessage
		}{
			{"model_kwargs", m.ModelKwargs, sidecar.Metadata.ModelKwargs},
			{"optim_kwargs", m.OptimizerKwargs, sidecar.Metadata.OptimKwargs},
			{"scheduler_kwargs", m.SchedulerKwargs, sidecar.Metadata.SchedulerKwargs},
		} {
			// Typed values marshal back to their tags: the typed kwargs
			// of either version are the sidecar's JSON.
			if (part.typed == nil) != (part.record == nil) {
				t.Errorf("%s: %s is %v, the sidecar's %s", path, part.name, part.typed, part.record)
			} else if part.record != nil && !sameJSONValue(t, asJSON(t, part.typed), part.record) {
				t.Errorf("%s: %s is %v, the sidecar's %s", path, part.name, part.typed, part.record)
			}
		}
		if m.Timestamp != sidecar.Metadata.Timestamp || ckpt.Timestamp().Unix() != m.Timestamp {
			t.Errorf("%s: Timestamp %v, typed %d, sidecar %d", path, ckpt.Timestamp(), m.Timestamp, sidecar.Metadata.Timestamp)
		}
		// A weights file names no model class; every other file does.
		if got := ckpt.ModelClass(); got != in.ModelClass || (got == "") != (in.Kind == KindWeights) {
			t.Errorf("%s: ModelClass %q, typed %q", path, got, in.ModelClass)
		}
		if !reflect.DeepEqual(ckpt.ModelKwargs(), m.ModelKwargs) {
			t.Errorf("%s: ModelKwargs %v", path, ckpt.ModelKwargs())
		}
		if v := goldenVersion(path); ckpt.FormatVersion() != v || in.FormatVersion != v {
			t.Errorf("%s: format version %d", path, ckpt.FormatVersion())
		}
		hasOptim := in.Optimizer != nil
		if hasOptim != (ckpt.OptimizerClass() != "") || (hasOptim && in.Optimizer.Class != ckpt.OptimizerClass()) {
			t.Errorf("%s: OptimizerClass %q", path, ckpt.OptimizerClass())
		}
		if !reflect.DeepEqual(ckpt.OptimizerKwargs(), m.OptimizerKwargs) {
			t.Errorf("%s: OptimizerKwargs %v", path, ckpt.OptimizerKwargs())
		}
		hasSched := in.Scheduler != nil
		if hasSched != (ckpt.SchedulerClass() != "") || (hasSched && in.Scheduler.Class != ckpt.SchedulerClass()) {
			t.Errorf("%s: SchedulerClass %q", path, ckpt.SchedulerClass())
		}
		if !reflect.DeepEqual(ckpt.SchedulerKwargs(), m.SchedulerKwargs) {
			t.Errorf("%s: SchedulerKwargs %v", path, ckpt.SchedulerKwargs())
		}
		kind := ckpt.Kind()
		if kind != KindCheckpoint && kind != KindInference && kind != KindWeights || kind != in.Kind {
			t.Errorf("%s: Kind %q", path, kind)
		}
		if p := ckpt.Producer(); p.Library != "pytorch-saver" || p.Language == "" || p.Version == "" || p != in.Producer {
			t.Errorf("%s: Producer %+v", path, p)
		}
		user := ckpt.UserMetadata()
		if !reflect.DeepEqual(user, m.User) {
			t.Errorf("%s: UserMetadata %v, typed %v", path, user, m.User)
		}
		for k := range user {
			if k == "model_kwargs" || k == "timestamp" || strings.HasPrefix(k, "__") {
				t.Errorf("%s: UserMetadata holds %q", path, k)
			}
		}
		ckpt.Close()
		// The metadata is a copy: it outlives the handle.
		if ckpt.ModelClass() != in.ModelClass || ckpt.Metadata() == nil || ckpt.TypedMetadata() == nil {
			t.Errorf("%s: metadata lost after Close", path)
		}
	}
}

// asJSON is a typed value as encoding/json decodes its JSON form.
func asJSON(t testing.TB, v any) any {
	t.Helper()
	text, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("%v does not marshal: %v", v, err)
	}
	var out any
	if err := json.Unmarshal(text, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

// sameJSONValue reports whether a decoded value and JSON text hold the
// same value, numbers compared as float64.
func sameJSONValue(t testing.TB, v any, text json.RawMessage) bool {
	t.Helper()
	var want any
	if err := json.Unmarshal(text, &want); err != nil {
		t.Fatal(err)
	}
	return reflect.DeepEqual(v, want)
}

// Every golden file of a built-in model with a recorded forward loads into
// a container that computes the recorded output (within 1e-6 relative).
//
// Sidecars' "resume" records (MSE loss, backward, optimizer step,
// scheduler step) are not replayed here: Go has no autograd, so it cannot
// compute the gradients those steps need. The Rust, Python, C and C++
// suites replay them.
func TestGoldenModelsComputeTheRecordedOutput(t *testing.T) {
	checked := 0
	for _, path := range goldenFiles(t) {
		want := readSidecar(t, path)
		ckpt, err := OpenCheckpoint(path)
		if err != nil {
			t.Fatal(err)
		}
		class, scheduler := ckpt.ModelClass(), ckpt.SchedulerClass()
		ckpt.Close()
		if want.Forward == nil || !builtinClasses[class] {
			continue
		}
		t.Run(filepath.Base(path), func(t *testing.T) {
			forward := func(input []float32, shape []int64) ([]float32, []int64, error) {
				c, _, err := LoadContainer(path)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				return c.Forward(input, shape)
			}
			if pythonOnlySchedulers[scheduler] {
				// The model alone serves, its optimizer and scheduler ignored.
				forward = func(input []float32, shape []int64) ([]float32, []int64, error) {
					m, _, err := LoadModel(path, LoadOptions{})
					if err != nil {
						t.Fatal(err)
					}
					defer m.Close()
					return m.Forward(input, shape)
				}
			}
			out, shape, err := forward(float32s(want.Forward.Input), want.Forward.InputShape)
			if err != nil {
				t.Fatal(err)
			}
			exp := float32s(want.Forward.Output)
			if len(out) != len(exp) {
				t.Fatalf("%d outputs of shape %v, want %d", len(out), shape, len(exp))
			}
			if shape[0] != want.Forward.InputShape[0] {
				t.Errorf("output shape %v for input shape %v", shape, want.Forward.InputShape)
			}
			for i := range out {
				if !closeEnough(out[i], exp[i]) {
					t.Errorf("output %d: %v, want %v", i, out[i], exp[i])
				}
			}
		})
		checked++
	}
	// 17 Linear and MLP files, 4 Sequentials (2 written by Python).
	if checked < 21 {
		t.Fatalf("checked the forward of %d golden files, want at least 21", checked)
	}
}

// Every golden file of a built-in model loads into a container whose
// state dict is the file's bytes exactly.
func TestGoldenModelsLoadWithTheirBytes(t *testing.T) {
	byLanguage := map[string]int{}
	for _, path := range goldenFiles(t) {
		want := readSidecar(t, path)
		ckpt, err := OpenCheckpoint(path)
		if err != nil {
			t.Fatal(err)
		}
		class, producer, scheduler := ckpt.ModelClass(), ckpt.Producer(), ckpt.SchedulerClass()
		ckpt.Close()
		if !builtinClasses[class] {
			continue
		}
		if pythonOnlySchedulers[scheduler] {
			expectRefusedOutsidePython(t, path, scheduler)
			continue
		}
		c, meta, err := LoadContainer(path)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if flat, err := MetadataFromMap(meta); err != nil {
			t.Errorf("%s: flat metadata %v: %v", path, meta, err)
		} else if flat.Internals != nil {
			t.Errorf("%s: flat metadata holds the internals", path)
		}
		for name, exp := range want.Tensors["model.safetensors"] {
			tensor, err := c.StateTensor(name)
			if err != nil {
				t.Fatalf("%s: %v", path, err)
			}
			data, err := tensor.Bytes()
			tensor.Close()
			if err != nil {
				t.Fatal(err)
			}
			if hex.EncodeToString(data) != exp.Hex {
				t.Errorf("%s: %s: %x, want %s", path, name, data, exp.Hex)
			}
		}
		n, err := c.ParameterCount()
		if err != nil || n == 0 || n > len(want.Tensors["model.safetensors"]) {
			t.Errorf("%s: %d parameters, %v", path, n, err)
		}
		c.Close()
		byLanguage[producer.Language]++
	}
	if byLanguage["rust"] < 8 || byLanguage["python"] < 8 {
		t.Fatalf("built-in golden files by language: %v", byLanguage)
	}
}

// The schedulers whose function is a callable tag (FORMAT.md 11.2): only
// Python, given the function again, can build them.
var pythonOnlySchedulers = map[string]bool{
	"torch.optim.lr_scheduler.LambdaLR":         true,
	"torch.optim.lr_scheduler.MultiplicativeLR": true,
}

// Loading a file whose scheduler only Python can build is an
// ErrUnsupportedClass naming the class, and yields no container.
func expectRefusedOutsidePython(t *testing.T, path, scheduler string) {
	t.Helper()
	c, _, err := LoadContainer(path)
	if c != nil || !errors.Is(err, ErrUnsupportedClass) || !strings.Contains(err.Error(), scheduler) {
		t.Errorf("%s: container %v, error %v; want ErrUnsupportedClass naming %s", path, c, err, scheduler)
	}
}

// The typed readers, the raw bytes, the zero-copy view and a tensor copy
// agree on every dtype, scalar and empty tensor of the all-dtypes files.
func TestGoldenEveryDtypeReadsTheSameEveryWay(t *testing.T) {
	for _, name := range []string{"rust_all_dtypes_inference.zip", "python_all_dtypes_inference.zip"} {
		ckpt, err := OpenCheckpoint(goldenFile(t, name))
		if err != nil {
			t.Fatal(err)
		}
		names, err := ckpt.TensorNames(MemberModel)
		if err != nil {
			t.Fatal(err)
		}
		if len(names) != 30 {
			t.Fatalf("%s: %d tensors, want 30", name, len(names))
		}
		seen := map[DType]int{}
		for _, tensor := range names {
			info, err := ckpt.TensorInfo(MemberModel, tensor)
			if err != nil {
				t.Fatal(err)
			}
			seen[info.DType]++
			raw, shape, err := ckpt.ReadBytes(MemberModel, tensor)
			if err != nil {
				t.Fatal(err)
			}
			if strings.HasSuffix(tensor, ".scalar") && len(shape) != 0 {
				t.Errorf("%s: a scalar of shape %v", tensor, shape)
			}
			if strings.HasSuffix(tensor, ".empty") && (len(raw) != 0 || !slices.Equal(shape, []int64{0, 4})) {
				t.Errorf("%s: empty tensor of %d bytes, shape %v", tensor, len(raw), shape)
			}
			decoded, err := readTyped(ckpt, info.DType, tensor)
			if err != nil {
				t.Fatalf("%s: %v", tensor, err)
			}
			if exp := decodeLittleEndian(info.DType, raw); !reflect.DeepEqual(decoded, exp) {
				t.Errorf("%s: typed read %v, bytes decode to %v", tensor, decoded, exp)
			}
			if err := ckpt.View(MemberModel, tensor, func(view []byte) error {
				if !slices.Equal(view, raw) {
					t.Errorf("%s: view %x, read %x", tensor, view, raw)
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			handle, err := ckpt.Tensor(MemberModel, tensor)
			if err != nil {
				t.Fatal(err)
			}
			hinfo, err := handle.Info()
			if err != nil {
				t.Fatal(err)
			}
			hraw, err := handle.Bytes()
			if err != nil {
				t.Fatal(err)
			}
			if hinfo.DType != info.DType || !slices.Equal(hinfo.Shape, info.Shape) || !slices.Equal(hraw, raw) {
				t.Errorf("%s: tensor %+v %x, file %+v %x", tensor, hinfo, hraw, info, raw)
			}
			if decoded, err := tensorTyped(handle, info.DType); err != nil || !reflect.DeepEqual(decoded, decodeLittleEndian(info.DType, raw)) {
				t.Errorf("%s: tensor values %v, %v", tensor, decoded, err)
			}
			handle.Close()
		}
		for d := Float64; d <= Bool; d++ {
			if seen[d] != 3 {
				t.Errorf("%s: %d tensors of %v, want 3", name, seen[d], d)
			}
		}
		ckpt.Close()
	}
}

// readTyped reads a tensor with the checkpoint's reader for its dtype.
func readTyped(c *Checkpoint, d DType, name string) (any, error) {
	var v any
	var err error
	switch d {
	case Float32:
		v, _, err = c.ReadFloat32(MemberModel, name)
	case Float64:
		v, _, err = c.ReadFloat64(MemberModel, name)
	case Int64:
		v, _, err = c.ReadInt64(MemberModel, name)
	case Int32:
		v, _, err = c.ReadInt32(MemberModel, name)
	case Int16:
		v, _, err = c.ReadInt16(MemberModel, name)
	case Int8:
		v, _, err = c.ReadInt8(MemberModel, name)
	case Uint8:
		v, _, err = c.ReadUint8(MemberModel, name)
	case Bool:
		v, _, err = c.ReadBool(MemberModel, name)
	default:
		v, _, err = c.ReadBytes(MemberModel, name)
	}
	return v, err
}

// tensorTyped reads a tensor's values with the Tensor method for its dtype.
func tensorTyped(t *Tensor, d DType) (any, error) {
	switch d {
	case Float32:
		return t.Float32s()
	case Float64:
		return t.Float64s()
	case Int64:
		return t.Int64s()
	case Int32:
		return t.Int32s()
	case Int16:
		return t.Int16s()
	case Int8:
		return t.Int8s()
	case Uint8:
		return t.Uint8s()
	case Bool:
		return t.Bools()
	}
	return t.Bytes()
}

// decodeLittleEndian is the reference decoding of stored bytes.
func decodeLittleEndian(d DType, raw []byte) any {
	le := binary.LittleEndian
	n := 0
	if size := d.Size(); size > 0 {
		n = len(raw) / size
	}
	switch d {
	case Float32:
		out := make([]float32, n)
		for i := range out {
			out[i] = math.Float32frombits(le.Uint32(raw[4*i:]))
		}
		return out
	case Float64:
		out := make([]float64, n)
		for i := range out {
			out[i] = math.Float64frombits(le.Uint64(raw[8*i:]))
		}
		return out
	case Int64:
		out := make([]int64, n)
		for i := range out {
			out[i] = int64(le.Uint64(raw[8*i:]))
		}
		return out
	case Int32:
		out := make([]int32, n)
		for i := range out {
			out[i] = int32(le.Uint32(raw[4*i:]))
		}
		return out
	case Int16:
		out := make([]int16, n)
		for i := range out {
			out[i] = int16(le.Uint16(raw[2*i:]))
		}
		return out
	case Int8:
		out := make([]int8, n)
		for i := range out {
			out[i] = int8(raw[i])
		}
		return out
	case Uint8:
		return slices.Clone(raw)
	case Bool:
		out := make([]bool, n)
		for i := range out {
			out[i] = raw[i] != 0
		}
		return out
	}
	return slices.Clone(raw)
}
