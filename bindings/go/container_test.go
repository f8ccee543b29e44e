package pytorchsaver

import (
	"bytes"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// A training checkpoint saved from Go loads back with the same
// parameters bit for bit, the same forward output, learning rate and
// metadata; an inference file holds the model alone.
func TestSaveLoadRoundTrip(t *testing.T) {
	dir := t.TempDir()
	c, err := NewContainer()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Initialize(mlpSpec()); err != nil {
		t.Fatal(err)
	}
	// No gradients from Go: zero_grad and step are no-ops, as in PyTorch;
	// the scheduler still counts its steps.
	for range 3 {
		if err := c.ZeroGrad(); err != nil {
			t.Fatal(err)
		}
		if err := c.Step(); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 {
		if err := c.SchedulerStep(); err != nil {
			t.Fatal(err)
		}
	}
	if lr, err := c.LR(0); err != nil || lr != 0.005 {
		t.Fatalf("LR = %v, %v; want 0.005", lr, err)
	}
	if n, err := c.ParamGroupCount(); err != nil || n != 1 {
		t.Fatalf("ParamGroupCount = %v, %v", n, err)
	}
	names, err := c.ParameterNames()
	if err != nil {
		t.Fatal(err)
	}
	if len(names) != 8 || names[0] != "fc1.weight" {
		t.Fatalf("parameter names %v", names)
	}

	input := []float32{0.5, -1, 2, 0.25, 1, 1, 1, 1}
	shape := []int64{2, 4}
	before, outShape, err := c.Forward(input, shape)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(outShape, []int64{2, 3}) || len(before) != 6 {
		t.Fatalf("output %v of shape %v", before, outShape)
	}

	path, err := c.Save(dir, "go_test", map[string]any{"epoch": 2, "loss": 0.5, "note": "from Go"})
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Dir(path) != filepath.Clean(dir) || !strings.HasPrefix(filepath.Base(path), "go_test_checkpoint_") {
		t.Fatalf("saved as %s", path)
	}
	second, err := c.Save(dir, "go_test", nil)
	if err != nil || second == path {
		t.Fatalf("second save in the same second: %s, %v (first %s)", second, err, path)
	}

	loaded, meta, err := LoadContainer(path)
	if err != nil {
		t.Fatal(err)
	}
	defer loaded.Close()
	// What Go saves names Go as its producer's language, also after a load.
	resaved, err := loaded.SaveInference(dir, "go_resaved", nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, file := range []string{path, resaved} {
		ckpt, err := OpenCheckpoint(file)
		if err != nil {
			t.Fatal(err)
		}
		if lang := ckpt.Producer().Language; lang != "go" {
			t.Errorf("%s: producer language %q, want \"go\"", file, lang)
		}
		ckpt.Close()
	}
	flat, err := MetadataFromMap(meta)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(flat.User, map[string]any{"epoch": 2.0, "loss": 0.5, "note": "from Go"}) {
		t.Fatalf("user metadata %v", flat.User)
	}
	if flat.ModelKwargs["hidden_dim"] != 8.0 || flat.OptimizerKwargs["lr"] != 0.01 || flat.SchedulerKwargs["step_size"] != 2.0 {
		t.Fatalf("kwargs %v %v %v", flat.ModelKwargs, flat.OptimizerKwargs, flat.SchedulerKwargs)
	}
	if flat.Timestamp <= 0 || flat.Internals != nil {
		t.Fatalf("timestamp %d, internals %+v", flat.Timestamp, flat.Internals)
	}
	if lr, err := loaded.LR(0); err != nil || lr != 0.005 {
		t.Fatalf("loaded LR = %v, %v", lr, err)
	}
	for i := range names {
		na, a, err := c.Parameter(i)
		if err != nil {
			t.Fatal(err)
		}
		nb, b, err := loaded.Parameter(i)
		if err != nil {
			t.Fatal(err)
		}
		ba, err := a.Bytes()
		if err != nil {
			t.Fatal(err)
		}
		bb, err := b.Bytes()
		if err != nil {
			t.Fatal(err)
		}
		if na != nb || !bytes.Equal(ba, bb) || len(ba) == 0 {
			t.Fatalf("parameter %d: %s %x vs %s %x", i, na, ba, nb, bb)
		}
		a.Close()
		b.Close()
	}
	after, _, err := loaded.Forward(input, shape)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(before, after) {
		t.Fatalf("forward before %v, after loading %v", before, after)
	}
	w, wshape, err := loaded.StateFloat32("hidden_layers.4.bias")
	if err != nil || len(w) != 3 || !slices.Equal(wshape, []int64{3}) {
		t.Fatalf("StateFloat32 = %v %v %v", w, wshape, err)
	}

	// The checkpoint reader sees what Go saved.
	ckpt, err := OpenCheckpoint(path)
	if err != nil {
		t.Fatal(err)
	}
	if ckpt.Kind() != KindCheckpoint || ckpt.OptimizerClass() != "torch.optim.Adam" ||
		ckpt.SchedulerClass() != "torch.optim.lr_scheduler.StepLR" || ckpt.ModelClass() != "pytorch_saver.models.MLP" {
		t.Fatalf("checkpoint %s: %s", path, ckpt.MetadataJSON())
	}
	if user := ckpt.UserMetadata(); len(user) != 3 || user["note"] != "from Go" {
		t.Fatalf("user metadata %v", user)
	}
	if kw := ckpt.OptimizerKwargs(); kw["lr"] != 0.01 {
		t.Fatalf("optimizer kwargs %v", kw)
	}
	if optim, err := ckpt.TensorNames(MemberOptimizer); err != nil {
		t.Fatal(err)
	} else if len(optim) != 0 {
		// No step had gradients: Adam holds no state yet.
		t.Fatalf("optimizer tensors %v", optim)
	}
	ckpt.Close()

	inference, err := c.SaveInference(dir, "", json.RawMessage(`{"purpose": "serving"}`))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(filepath.Base(inference), "inference_") {
		t.Fatalf("inference file %s", inference)
	}
	ckpt, err = OpenCheckpoint(inference)
	if err != nil {
		t.Fatal(err)
	}
	defer ckpt.Close()
	if ckpt.Kind() != KindInference || ckpt.OptimizerClass() != "" || ckpt.OptimizerKwargs() != nil ||
		ckpt.UserMetadata()["purpose"] != "serving" {
		t.Fatalf("inference metadata %s", ckpt.MetadataJSON())
	}
	served, _, err := LoadContainer(inference)
	if err != nil {
		t.Fatal(err)
	}
	defer served.Close()
	if out, _, err := served.Forward(input, shape); err != nil || !slices.Equal(out, before) {
		t.Fatalf("inference forward %v, %v", out, err)
	}
	if err := served.Step(); !isCode(err, CodeUsage) {
		t.Fatalf("Step without optimizer: %v", err)
	}
}

func isCode(err error, code Code) bool {
	e, ok := err.(*Error)
	return ok && e.Code == code
}

// Restore loads a file into the objects a container holds, in place: a
// Tensor taken before sees the file's values.
func TestRestoreInPlace(t *testing.T) {
	path := goldenFile(t, "rust_mlp_inference.zip")
	ckpt, err := OpenCheckpoint(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ckpt.Close()
	c, err := NewContainer()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Initialize(Spec{Model: ckpt.ModelClass(), ModelKwargs: ckpt.ModelKwargs()}); err != nil {
		t.Fatal(err)
	}
	weight, err := c.StateTensor("fc1.weight")
	if err != nil {
		t.Fatal(err)
	}
	defer weight.Close()
	meta, err := c.Restore(path)
	if err != nil {
		t.Fatal(err)
	}
	if meta["model_kwargs"] == nil {
		t.Fatalf("metadata %v", meta)
	}
	got, err := weight.Float32s()
	if err != nil {
		t.Fatal(err)
	}
	want, _, err := ckpt.ReadFloat32(MemberModel, "fc1.weight")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("restored weight %v, file %v", got, want)
	}
}

// Tensors made from Go slices of every element type read back the same;
// Float16 and BFloat16 travel as bytes.
func TestTensorRoundTrip(t *testing.T) {
	check := func(name string, got, want any, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !slicesEqualAny(got, want) {
			t.Fatalf("%s: %v, want %v", name, got, want)
		}
	}
	f32 := []float32{1.5, -2, float32(math.Inf(1)), 0}
	tf32, err := NewTensorOf(f32, []int64{2, 2})
	if err != nil {
		t.Fatal(err)
	}
	got, err := tf32.Float32s()
	check("float32", got, f32, err)
	if info, err := tf32.Info(); err != nil || info.DType != Float32 || !slices.Equal(info.Shape, []int64{2, 2}) || info.NumBytes != 16 {
		t.Fatalf("info %+v %v", info, err)
	}
	if _, err := tf32.Int64s(); !isCode(err, CodeInvalidArgument) {
		t.Fatalf("Int64s of a float32 tensor: %v", err)
	}
	tf32.Close()

	f64, _ := NewTensorOf([]float64{math.Pi}, nil) // a scalar
	v64, err := f64.Float64s()
	check("float64 scalar", v64, []float64{math.Pi}, err)
	if shape, err := f64.Shape(); err != nil || len(shape) != 0 {
		t.Fatalf("scalar shape %v %v", shape, err)
	}
	i64, _ := NewTensorOf([]int64{math.MinInt64, 7}, []int64{2})
	vi64, err := i64.Int64s()
	check("int64", vi64, []int64{math.MinInt64, 7}, err)
	i32, _ := NewTensorOf([]int32{-3}, []int64{1})
	vi32, err := i32.Int32s()
	check("int32", vi32, []int32{-3}, err)
	i16, _ := NewTensorOf([]int16{-300, 300}, []int64{1, 2})
	vi16, err := i16.Int16s()
	check("int16", vi16, []int16{-300, 300}, err)
	i8, _ := NewTensorOf([]int8{-128}, []int64{1})
	vi8, err := i8.Int8s()
	check("int8", vi8, []int8{-128}, err)
	u8, _ := NewTensorOf([]uint8{255, 0}, []int64{2})
	vu8, err := u8.Uint8s()
	check("uint8", vu8, []uint8{255, 0}, err)
	b, _ := NewTensorOf([]bool{true, false, true}, []int64{3})
	vb, err := b.Bools()
	check("bool", vb, []bool{true, false, true}, err)
	empty, err := NewTensorOf([]float32{}, []int64{0, 4})
	if err != nil {
		t.Fatal(err)
	}
	ve, err := empty.Float32s()
	check("empty", ve, []float32{}, err)

	half := []byte{0x00, 0x3c, 0x00, 0xc0} // 1.0, -2.0 as float16
	for _, d := range []DType{Float16, BFloat16} {
		h, err := NewTensor(d, []int64{2}, half)
		if err != nil {
			t.Fatal(err)
		}
		raw, err := h.Bytes()
		check(d.String(), raw, half, err)
		if dt, err := h.DType(); err != nil || dt != d {
			t.Fatalf("dtype %v %v", dt, err)
		}
		h.Close()
	}
	if _, err := NewTensorOf([]float32{1, 2, 3}, []int64{2, 2}); !isCode(err, CodeInvalidArgument) {
		t.Fatalf("3 values for shape [2 2]: %v", err)
	}
	if _, err := NewTensorOf([]float32{1}, []int64{-1}); !isCode(err, CodeInvalidArgument) {
		t.Fatalf("negative dimension: %v", err)
	}
	if _, err := NewTensor(DType(99), []int64{1}, []byte{1}); !isCode(err, CodeInvalidArgument) {
		t.Fatalf("unknown dtype: %v", err)
	}
	if DType(99).String() != "DType(99)" || DType(99).Size() != 0 || Bool.Size() != 1 || BFloat16.String() != "BF16" {
		t.Fatal("DType String/Size")
	}
}

func slicesEqualAny(a, b any) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return bytes.Equal(ja, jb) && (a != nil) == (b != nil)
}

// A container of a Linear model with every optimizer's state and a
// scheduler that needs a metric.
func TestSchedulerWithMetric(t *testing.T) {
	c, err := NewContainer()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	err = c.Initialize(Spec{
		Model:           "torch.nn.Linear",
		ModelKwargs:     struct{ InFeatures, OutFeatures int }{3, 2}, // fields must be named as kwargs
		Optimizer:       "torch.optim.SGD",
		OptimizerKwargs: map[string]any{"lr": 0.1},
	})
	mustCode(t, err, ErrInvalidKwargs, "")

	type linearKwargs struct {
		InFeatures  int  `json:"in_features"`
		OutFeatures int  `json:"out_features"`
		Bias        bool `json:"bias"`
	}
	err = c.Initialize(Spec{
		Model:           "torch.nn.Linear",
		ModelKwargs:     linearKwargs{3, 2, true},
		Optimizer:       "torch.optim.SGD",
		OptimizerKwargs: map[string]any{"lr": 0.1},
		Scheduler:       "torch.optim.lr_scheduler.ReduceLROnPlateau",
		SchedulerKwargs: map[string]any{"patience": 0, "factor": 0.5},
	})
	if err != nil {
		t.Fatal(err)
	}
	mustCode(t, c.SchedulerStep(), ErrUsage, "")
	for _, metric := range []float64{1, 2, 3} {
		if err := c.SchedulerStepMetric(metric); err != nil {
			t.Fatal(err)
		}
	}
	lrs, err := c.LRs()
	if err != nil || len(lrs) != 1 || lrs[0] >= 0.1 {
		t.Fatalf("LRs after plateaus: %v %v", lrs, err)
	}
	path, err := c.Save(t.TempDir(), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(filepath.Base(path), "checkpoint_") {
		t.Fatalf("saved as %s", path)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatal(err)
	}
}
