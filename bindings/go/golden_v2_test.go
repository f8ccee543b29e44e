package pytorchsaver

import (
	"encoding/hex"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"testing"
)

// goldenV2File is a golden file of tests/golden/v2. A missing one fails
// the test: the version 2 files are part of the suite.
func goldenV2File(t testing.TB, name string) string {
	t.Helper()
	path := filepath.Join(goldenRoot, "v2", name)
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("version 2 golden file %s is missing (written by `cargo run --release --example golden` "+
			"and tests/golden/generate_python.py): %v", path, err)
	}
	return path
}

// openV2Golden opens a version 2 golden file and checks what every one
// holds: the typed metadata is the sidecar's metadata typed, and every
// extra tensor is named by exactly one tensor tag and has the recorded
// dtype, shape and bytes.
func openV2Golden(t *testing.T, name string) (*Checkpoint, string, sidecar) {
	t.Helper()
	path := goldenV2File(t, name)
	want := readSidecar(t, path)
	ckpt, err := OpenCheckpoint(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ckpt.Close() })

	m := ckpt.TypedMetadata()
	exp, err := ParseMetadata(string(want.Metadata))
	if err != nil {
		t.Fatalf("the sidecar's metadata: %v", err)
	}
	m.object, exp.object = nil, nil
	if !reflect.DeepEqual(m, exp) {
		t.Fatalf("typed metadata\n%#v\nthe sidecar's\n%#v", m, exp)
	}
	if ckpt.FormatVersion() != 2 || m.Internals.FormatVersion != 2 {
		t.Errorf("format version %d", ckpt.FormatVersion())
	}
	// The entries come in the file's order, which the sidecar keeps.
	var names []string
	for _, e := range ckpt.Extra() {
		names = append(names, e.Name)
	}
	if order := extraKeyOrder(string(want.Metadata)); len(order) == 0 || !slices.Equal(names, order) {
		t.Errorf("extra entries %v, the sidecar's %v", names, order)
	}
	if !reflect.DeepEqual(ckpt.Extra(), m.Internals.Extra) {
		t.Errorf("Extra() %v, typed %v", ckpt.Extra(), m.Internals.Extra)
	}

	var tagged []string
	for _, e := range m.Internals.Extra {
		tagged = append(tagged, tensorRefs(e.State)...)
	}
	sort.Strings(tagged)
	stored, err := ckpt.TensorNames(MemberExtra)
	if err != nil {
		t.Fatal(err)
	}
	recorded := want.Tensors["extra.safetensors"]
	if sorted := slices.Sorted(slices.Values(stored)); len(tagged) == 0 || !slices.Equal(sorted, tagged) || len(recorded) != len(stored) {
		t.Fatalf("extra.safetensors holds %v, the tags name %v, the sidecar records %d", stored, tagged, len(recorded))
	}
	for _, tensor := range stored {
		exp, ok := recorded[tensor]
		if !ok {
			t.Fatalf("extra tensor %q is not in the sidecar", tensor)
		}
		info, err := ckpt.TensorInfo(MemberExtra, tensor)
		if err != nil {
			t.Fatal(err)
		}
		data, shape, err := ckpt.ReadBytes(MemberExtra, tensor)
		if err != nil {
			t.Fatal(err)
		}
		if info.DType.String() != exp.DType || !slices.Equal(shape, exp.Shape) && len(shape)+len(exp.Shape) > 0 {
			t.Errorf("%s: %v %v, want %s %v", tensor, info.DType, shape, exp.DType, exp.Shape)
		}
		if hex.EncodeToString(data) != exp.Hex {
			t.Errorf("%s: bytes %x, want %s", tensor, data, exp.Hex)
		}
	}
	return ckpt, path, want
}

// tensorRefs lists the tensor names a typed value's TensorRefs hold.
func tensorRefs(v any) []string {
	var out []string
	switch v := v.(type) {
	case TensorRef:
		out = append(out, v.Name)
	case map[string]any:
		for _, x := range v {
			out = append(out, tensorRefs(x)...)
		}
	case []any:
		for _, x := range v {
			out = append(out, tensorRefs(x)...)
		}
	case Tuple:
		out = tensorRefs([]any(v))
	case Dict:
		for _, item := range v {
			out = append(out, tensorRefs(item.Key)...)
			out = append(out, tensorRefs(item.Value)...)
		}
	case CodecObject:
		out = tensorRefs(v.Fields)
	case ClassSpec:
		out = tensorRefs(v.Kwargs)
	}
	return out
}

// extraEntry is the entry named name, failing the test without one.
func extraEntry(t *testing.T, ckpt *Checkpoint, name, class string) ExtraEntry {
	t.Helper()
	for _, e := range ckpt.Extra() {
		if e.Name == name {
			if e.Class != class {
				t.Fatalf("extra entry %q is a %q, want %q", name, e.Class, class)
			}
			return e
		}
	}
	t.Fatalf("no extra entry %q", name)
	return ExtraEntry{}
}

// The Python package's version 2 file: a torch.nn.Linear whose kwargs
// hold a dtype, Adam's betas as a tuple, and the RNG, GradScaler and
// Counters extra state.
func TestGoldenV2PythonTypedKwargsAndExtraState(t *testing.T) {
	ckpt, _, _ := openV2Golden(t, "python_v2_typed_extra_checkpoint.zip")
	if ckpt.ModelClass() != "torch.nn.Linear" || ckpt.Kind() != KindCheckpoint || ckpt.Producer().Language != "python" {
		t.Errorf("model %q, kind %q, producer %+v", ckpt.ModelClass(), ckpt.Kind(), ckpt.Producer())
	}
	kw := ckpt.ModelKwargs()
	if kw["in_features"] != 4.0 || kw["out_features"] != 3.0 || kw["dtype"] != (TorchDtype{Name: "float64"}) {
		t.Errorf("model_kwargs %#v, want in_features 4, out_features 3, dtype TorchDtype{float64}", kw)
	}
	if ckpt.OptimizerClass() != "torch.optim.Adam" ||
		!reflect.DeepEqual(ckpt.OptimizerKwargs()["betas"], Tuple{0.9, 0.99}) {
		t.Errorf("optimizer %q, betas %#v, want Tuple{0.9, 0.99}", ckpt.OptimizerClass(), ckpt.OptimizerKwargs()["betas"])
	}
	if ckpt.SchedulerClass() != "torch.optim.lr_scheduler.StepLR" {
		t.Errorf("scheduler %q", ckpt.SchedulerClass())
	}
	// The model is float64, as its dtype kwarg says.
	for _, name := range []string{"weight", "bias"} {
		if info, err := ckpt.TensorInfo(MemberModel, name); err != nil || info.DType != Float64 {
			t.Errorf("%s: %+v, %v", name, info, err)
		}
	}

	rng := extraEntry(t, ckpt, "rng", "pytorch_saver.RNG").State.(map[string]any)
	torch, _ := rng["torch"].(map[string]any)
	if torch["cpu"] != (TensorRef{Name: "rng.torch.cpu"}) {
		t.Fatalf("rng state torch %#v, want cpu: TensorRef{rng.torch.cpu}", rng["torch"])
	}
	cpu, shape, err := ckpt.ReadUint8(MemberExtra, "rng.torch.cpu")
	if err != nil || len(shape) != 1 || int64(len(cpu)) != shape[0] || len(cpu) == 0 {
		t.Errorf("rng.torch.cpu: %d bytes of shape %v, %v", len(cpu), shape, err)
	}
	// random.getstate(): (version, a tuple of 625 ints, the Gaussian cache).
	python, ok := rng["python"].(Tuple)
	if !ok || len(python) != 3 {
		t.Fatalf("rng state python %#v, want a Tuple of 3", rng["python"])
	}
	if words, ok := python[1].(Tuple); !ok || len(words) != 625 {
		t.Errorf("rng state python[1]: %T of %d, want a Tuple of 625 ints", python[1], len(python[1].(Tuple)))
	}
	if _, ok := rng["numpy"].(map[string]any); !ok {
		t.Errorf("rng state numpy %#v, want an object", rng["numpy"])
	}
	if _, ok := extraEntry(t, ckpt, "scaler", "torch.amp.GradScaler").State.(map[string]any); !ok {
		t.Errorf("scaler state is not an object")
	}
	counters := extraEntry(t, ckpt, "counters", "pytorch_saver.Counters").State.(map[string]any)
	for k, v := range counters {
		if f, ok := v.(float64); !ok || f != float64(int64(f)) {
			t.Errorf("counter %s = %v, want an integer", k, v)
		}
	}
}

// The Rust writer's version 2 file: the built-in MLP with Adam, StepLR,
// and RNG and Counters extra state. It loads into a container whose
// state is the file's.
func TestGoldenV2RustMLPWithExtraState(t *testing.T) {
	ckpt, path, want := openV2Golden(t, "rust_v2_mlp_extra_checkpoint.zip")
	if ckpt.ModelClass() != "pytorch_saver.models.MLP" || ckpt.OptimizerClass() != "torch.optim.Adam" ||
		ckpt.SchedulerClass() == "" || ckpt.Producer().Language != "rust" {
		t.Errorf("model %q, optimizer %q, scheduler %q, producer %+v",
			ckpt.ModelClass(), ckpt.OptimizerClass(), ckpt.SchedulerClass(), ckpt.Producer())
	}
	rng := extraEntry(t, ckpt, "rng", "pytorch_saver.RNG").State.(map[string]any)
	if torch, _ := rng["torch"].(map[string]any); torch["cpu"] != (TensorRef{Name: "rng.torch.cpu"}) {
		t.Errorf("rng state %#v, want torch.cpu: TensorRef{rng.torch.cpu}", rng)
	}
	extraEntry(t, ckpt, "counters", "pytorch_saver.Counters")

	c, meta, err := LoadContainer(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if flat, err := MetadataFromMap(meta); err != nil || !reflect.DeepEqual(flat.ModelKwargs, ckpt.ModelKwargs()) {
		t.Errorf("the load's metadata %v: %v", meta, err)
	}
	for name, exp := range want.Tensors["model.safetensors"] {
		tensor, err := c.StateTensor(name)
		if err != nil {
			t.Fatal(err)
		}
		data, err := tensor.Bytes()
		tensor.Close()
		if err != nil || hex.EncodeToString(data) != exp.Hex {
			t.Errorf("%s: %x, %v; want %s", name, data, err, exp.Hex)
		}
	}
	if n, err := c.ParamGroupCount(); err != nil || n == 0 {
		t.Errorf("the loaded optimizer has %d param groups, %v", n, err)
	}
}

// Python's LambdaLR and MultiplicativeLR checkpoints: their function is a
// callable tag. Go reads the file and its scheduler section, and refuses
// to build the scheduler, naming the class.
func TestGoldenV2PythonOnlySchedulersAreRefused(t *testing.T) {
	for name, class := range map[string]string{
		"python_v2_mlp_adam_lambda_checkpoint.zip":        "torch.optim.lr_scheduler.LambdaLR",
		"python_v2_mlp_sgd_multiplicative_checkpoint.zip": "torch.optim.lr_scheduler.MultiplicativeLR",
	} {
		ckpt, err := OpenCheckpoint(goldenV2File(t, name))
		if err != nil {
			t.Fatal(err)
		}
		defer ckpt.Close()
		if ckpt.SchedulerClass() != class {
			t.Errorf("%s: scheduler %q", name, ckpt.SchedulerClass())
		}
		if tag, ok := ckpt.SchedulerKwargs()["lr_lambda"].(CallableRef); !ok || tag.Name == "" {
			t.Errorf("%s: lr_lambda %#v, want a callable placeholder", name, ckpt.SchedulerKwargs()["lr_lambda"])
		}
		expectRefusedOutsidePython(t, goldenV2File(t, name), class)
	}
}
