package pytorchsaver

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func TestErrorValues(t *testing.T) {
	err := error(&Error{Code: CodeNotFound, Message: `no tensor "x"`})
	if err.Error() != `pytorchsaver: not found: no tensor "x"` {
		t.Fatalf("Error() = %q", err.Error())
	}
	if ErrNotFound.Error() != "pytorchsaver: not found" || Code(99).String() != "error code 99" {
		t.Fatalf("sentinel %q, code %q", ErrNotFound.Error(), Code(99).String())
	}
	if !errors.Is(err, ErrNotFound) || errors.Is(err, ErrIO) || errors.Is(err, (*Error)(nil)) {
		t.Fatal("errors.Is compares codes")
	}
	wrapped := errors.Join(errors.New("context"), err)
	var e *Error
	if !errors.Is(wrapped, ErrNotFound) || !errors.As(wrapped, &e) || e.Code != CodeNotFound {
		t.Fatal("a wrapped error still matches")
	}
	for c := CodeNullArgument; c <= CodeUnsupportedClass; c++ {
		if c.String() == "" || c.String() == Code(99).String() {
			t.Errorf("code %d has no name", c)
		}
	}
	if e := errorf(CodeUsage, "x"); e.Kind != "Usage" {
		t.Fatalf("an error made in Go has kind %q", e.Kind)
	}
}

// The library loaded is the one whose header the package was built
// against.
func TestVersionIsTheHeaders(t *testing.T) {
	if Version() != HeaderVersion {
		t.Fatalf("the library is version %q, its header says %q", Version(), HeaderVersion)
	}
	parts := strings.Split(HeaderVersion, ".")
	if len(parts) != 3 {
		t.Fatalf("version %q is not MAJOR.MINOR.PATCH", HeaderVersion)
	}
	for _, p := range parts {
		if _, err := strconv.ParseUint(p, 10, 32); err != nil {
			t.Fatalf("version %q is not MAJOR.MINOR.PATCH", HeaderVersion)
		}
	}
}

// mustKind checks that err is an *Error of the given code and kind.
func mustKind(t *testing.T, err error, code Code, kind string) {
	t.Helper()
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("%T %v is not an *Error", err, err)
	}
	if e.Code != code || e.Kind != kind {
		t.Fatalf("[%d %q] %v; want [%d %q]", e.Code, e.Kind, err, code, kind)
	}
}

// Every error from C carries the library's kind; errors made in Go carry
// the kind the library gives the same code.
func TestErrorKinds(t *testing.T) {
	// The Go table of codes' kinds is the library's: an error object made
	// from a bare code comes back with that code's kind.
	for c := CodeNullArgument; c <= CodeUnsupportedClass; c++ {
		mustKind(t, takeError(newCError(c, "m")), c, c.kind())
	}
	mustKind(t, takeError(newCError(0, "m")), CodeCallback, "Callback")

	dir := t.TempDir()
	_, err := OpenCheckpoint(filepath.Join(dir, "missing.zip"))
	mustKind(t, err, CodeIO, "Io")
	good, err := os.ReadFile(goldenFile(t, "rust_mlp_inference.zip"))
	if err != nil {
		t.Fatal(err)
	}
	flipped := bytes.Clone(good)
	flipped[len(flipped)/2] ^= 0x55
	_, err = OpenCheckpoint(writeFile(t, dir, "flipped.zip", flipped))
	mustKind(t, err, CodeFormat, "CrcMismatch")
	_, _, err = LoadModel(writeFile(t, dir, "flipped.zip", flipped), LoadOptions{})
	mustKind(t, err, CodeFormat, "CrcMismatch")
	_, err = OpenCheckpoint(writeFile(t, dir, "trailing.zip", append(bytes.Clone(good), 0)))
	mustKind(t, err, CodeFormat, "TrailingBytes")
	newer := writeFile(t, dir, "v2.zip", rewriteMetadata(t, good, `"format_version": 1`, `"format_version": 9`))
	_, err = OpenCheckpoint(newer)
	mustKind(t, err, CodeUnsupportedVersion, "UnsupportedVersion")
	_, _, err = LoadContainer(newer)
	mustKind(t, err, CodeUnsupportedVersion, "UnsupportedVersion")
	badKind := writeFile(t, dir, "kind.zip", rewriteMetadata(t, good, `"kind": "inference"`, `"kind": "inferencX"`))
	_, err = OpenCheckpoint(badKind)
	mustKind(t, err, CodeFormat, "Schema")
	_, err = OpenCheckpoint("nul\x00.zip")
	mustKind(t, err, CodeInvalidArgument, "InvalidArgument")

	ckpt, err := OpenCheckpoint(goldenFile(t, "rust_mlp_inference.zip"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = ckpt.TensorInfo(MemberModel, "no.such")
	mustKind(t, err, CodeNotFound, "TensorNotFound")
	ckpt.Close()
	_, err = ckpt.TensorNames(MemberModel)
	mustKind(t, err, CodeUsage, "Usage")

	c, err := NewContainer()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	mustKind(t, c.Step(), CodeNotInitialized, "NotInitialized")
	mustKind(t, c.Initialize(Spec{Model: "no.such.Model"}), CodeUnknownName, "UnknownName")
	mustKind(t, c.Initialize(Spec{Model: "torch.nn.Linear", ModelKwargs: map[string]any{"in_features": 4}}),
		CodeInvalidKwargs, "InvalidKwargs")
	if err := c.Initialize(Spec{Model: "torch.nn.Linear",
		ModelKwargs: map[string]any{"in_features": 4, "out_features": 3}}); err != nil {
		t.Fatal(err)
	}
	_, err = c.Save(dir, "x", map[string]any{"timestamp": 1})
	mustKind(t, err, CodeInvalidMetadata, "ReservedMetadataKey")
	_, err = c.Save(dir, "x", map[string]any{"loss": math.Inf(1)})
	mustKind(t, err, CodeInvalidMetadata, "InvalidMetadata")
	_, _, err = c.Forward([]float32{1, 2, 3, 4, 5, 6, 7, 8}, []int64{4, 2})
	mustKind(t, err, CodeTorch, "Torch")
	mustKind(t, c.SchedulerStep(), CodeUsage, "Usage")
	_, err = c.Restore(goldenFile(t, "rust_mlp_inference.zip"))
	mustKind(t, err, CodeStateMismatch, "StateMismatch")
}

// rewriteMetadata returns a copy of a checkpoint whose metadata.json has
// old replaced by new (of the same length), with its CRC-32 fixed in the
// local and central headers: a file valid but for what new says.
func rewriteMetadata(t *testing.T, file []byte, old, new string) []byte {
	t.Helper()
	if len(old) != len(new) {
		t.Fatal("same length only")
	}
	out := bytes.Clone(file)
	le := binary.LittleEndian
	// metadata.json is the first member: its local header is at 0.
	size := int(le.Uint32(out[18:]))
	start := 30 + int(le.Uint16(out[26:])) + int(le.Uint16(out[28:]))
	data := out[start : start+size]
	at := bytes.Index(data, []byte(old))
	if at < 0 {
		t.Fatalf("metadata.json holds no %q", old)
	}
	copy(data[at:], new)
	crc := crc32.ChecksumIEEE(data)
	le.PutUint32(out[14:], crc)
	// The central directory's first entry describes it too.
	eocd := bytes.LastIndex(out, []byte("PK\x05\x06"))
	central := int(le.Uint32(out[eocd+16:]))
	le.PutUint32(out[central+16:], crc)
	return out
}

func TestFileErrors(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "does_not_exist.zip")
	_, err := OpenCheckpoint(missing)
	mustCode(t, err, ErrIO, "does_not_exist.zip")
	_, _, err = LoadContainer(missing)
	mustCode(t, err, ErrIO, "does_not_exist.zip")

	good, err := os.ReadFile(goldenFile(t, "rust_mlp_inference.zip"))
	if err != nil {
		t.Fatal(err)
	}
	truncated := writeFile(t, dir, "truncated.zip", good[:len(good)/2])
	_, err = OpenCheckpoint(truncated)
	mustCode(t, err, ErrFormat, "")
	_, _, err = LoadContainer(truncated)
	mustCode(t, err, ErrFormat, "")

	flipped := bytes.Clone(good)
	flipped[len(flipped)/2] ^= 0x55
	_, err = OpenCheckpoint(writeFile(t, dir, "flipped.zip", flipped))
	mustCode(t, err, ErrFormat, "CRC-32 mismatch")

	_, err = OpenCheckpoint(writeFile(t, dir, "garbage.zip", []byte("definitely not a zip archive, just text")))
	mustCode(t, err, ErrFormat, "")
	_, err = OpenCheckpoint(writeFile(t, dir, "empty.zip", nil))
	mustCode(t, err, ErrFormat, "")

	newer := writeFile(t, dir, "v2.zip", rewriteMetadata(t, good, `"format_version": 1`, `"format_version": 9`))
	_, err = OpenCheckpoint(newer)
	mustCode(t, err, ErrUnsupportedVersion, "9")
	_, _, err = LoadContainer(newer)
	mustCode(t, err, ErrUnsupportedVersion, "9")
	// The rewriting itself keeps a file valid.
	same := writeFile(t, dir, "v1.zip", rewriteMetadata(t, good, `"format_version": 1`, `"format_version": 1`))
	if c, err := OpenCheckpoint(same); err != nil {
		t.Fatal(err)
	} else {
		c.Close()
	}

	_, err = OpenCheckpoint("bad\x00path.zip")
	mustCode(t, err, ErrInvalidArgument, "NUL")
	_, err = OpenCheckpoint(dir) // a directory
	if err == nil || !(errors.Is(err, ErrIO) || errors.Is(err, ErrFormat)) {
		t.Fatalf("opening a directory: %v", err)
	}
}

func TestCheckpointErrors(t *testing.T) {
	ckpt, err := OpenCheckpoint(goldenFile(t, "rust_mlp_inference.zip"))
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = ckpt.ReadFloat32(MemberModel, "no.such")
	mustCode(t, err, ErrNotFound, "no.such")
	_, err = ckpt.TensorInfo(MemberOptimizer, "fc1.weight")
	mustCode(t, err, ErrNotFound, "fc1.weight")
	_, _, err = ckpt.ReadInt64(MemberModel, "fc1.weight")
	mustCode(t, err, ErrInvalidArgument, "F32, not I64")
	_, err = ckpt.TensorNames(Member(7))
	mustCode(t, err, ErrInvalidArgument, "unknown member code 7")
	_, err = ckpt.Tensor(MemberModel, "fc1\x00weight")
	mustCode(t, err, ErrInvalidArgument, "NUL")
	sentinel := errors.New("stop")
	if err := ckpt.View(MemberModel, "fc1.bias", func([]byte) error { return sentinel }); err != sentinel {
		t.Fatalf("View returns fn's error: %v", err)
	}

	// Use after Close: an error, never a crash; Close again is a no-op.
	if err := ckpt.Close(); err != nil {
		t.Fatal(err)
	}
	if err := ckpt.Close(); err != nil {
		t.Fatal(err)
	}
	_, err = ckpt.TensorNames(MemberModel)
	mustCode(t, err, ErrUsage, "closed")
	_, _, err = ckpt.ReadFloat32(MemberModel, "fc1.bias")
	mustCode(t, err, ErrUsage, "closed")
	_, _, err = ckpt.ReadBytes(MemberModel, "fc1.bias")
	mustCode(t, err, ErrUsage, "closed")
	_, err = ckpt.TensorInfo(MemberModel, "fc1.bias")
	mustCode(t, err, ErrUsage, "closed")
	_, err = ckpt.Tensor(MemberModel, "fc1.bias")
	mustCode(t, err, ErrUsage, "closed")
	err = ckpt.View(MemberModel, "fc1.bias", func([]byte) error { t.Fatal("View ran after Close"); return nil })
	mustCode(t, err, ErrUsage, "closed")

	var none *Checkpoint
	_, err = none.TensorNames(MemberModel)
	mustCode(t, err, ErrNullArgument, "nil")
	if none.Close() != nil {
		t.Fatal("Close of nil")
	}
}

func TestContainerErrors(t *testing.T) {
	c, err := NewContainer()
	if err != nil {
		t.Fatal(err)
	}
	input := []float32{1, 2, 3, 4, 5, 6, 7, 8}

	// Nothing built yet.
	mustCode(t, c.Step(), ErrNotInitialized, "initialize or load")
	_, _, err = c.Forward(input, []int64{2, 4})
	mustCode(t, err, ErrNotInitialized, "")
	_, err = c.Save(t.TempDir(), "x", nil)
	mustCode(t, err, ErrNotInitialized, "")
	_, err = c.ParameterCount()
	mustCode(t, err, ErrNotInitialized, "")

	// Initialize errors leave the container empty.
	linear := map[string]any{"in_features": 4, "out_features": 3}
	mustCode(t, c.Initialize(Spec{Model: "no.such.Model"}), ErrUnknownName, "no.such.Model")
	mustCode(t, c.Initialize(Spec{Model: ""}), ErrUnknownName, "")
	mustCode(t, c.Initialize(Spec{Model: "torch.nn.Linear",
		ModelKwargs: map[string]any{"in_features": 4, "out_features": 3, "colour": 3}}),
		ErrInvalidKwargs, `unexpected kwarg "colour"`)
	mustCode(t, c.Initialize(Spec{Model: "torch.nn.Linear", ModelKwargs: map[string]any{"in_features": 4}}),
		ErrInvalidKwargs, "out_features")
	mustCode(t, c.Initialize(Spec{Model: "torch.nn.Linear", ModelKwargs: linear,
		Optimizer: "torch.optim.Adam", OptimizerKwargs: map[string]any{"lr": -1}}), ErrInvalidKwargs, "lr")
	mustCode(t, c.Initialize(Spec{Model: "torch.nn.Linear", ModelKwargs: linear,
		Optimizer: "torch.optim.NoSuch"}), ErrUnknownName, "torch.optim.NoSuch")
	mustCode(t, c.Initialize(Spec{Model: "torch.nn.Linear", ModelKwargs: []int{1, 2}}),
		ErrInvalidJSON, "JSON object")
	mustCode(t, c.Initialize(Spec{Model: "torch.nn.Linear", ModelKwargs: map[string]any{"x": math.NaN()}}),
		ErrInvalidKwargs, "NaN")
	mustCode(t, c.Initialize(Spec{Model: "torch.nn.Linear", ModelKwargs: map[string]any{"x": make(chan int)}}),
		ErrInvalidKwargs, "chan")
	mustCode(t, c.Initialize(Spec{Model: "torch.nn.Linear", ModelKwargs: linear,
		Scheduler: "torch.optim.lr_scheduler.StepLR", SchedulerKwargs: map[string]any{"step_size": 1}}),
		ErrUsage, "needs an optimizer")
	mustCode(t, c.Initialize(Spec{Model: "torch.nn.Linear", ModelKwargs: linear,
		OptimizerKwargs: map[string]any{"lr": 1}}), ErrUsage, "without Spec.Optimizer")
	mustCode(t, c.Initialize(Spec{Model: "torch\x00nn.Linear"}), ErrInvalidArgument, "NUL")
	mustCode(t, c.Step(), ErrNotInitialized, "")

	// A nil map of kwargs is no kwargs, as nil is.
	var nilKwargs map[string]any
	mustCode(t, c.Initialize(Spec{Model: "torch.nn.Linear", ModelKwargs: nilKwargs}), ErrInvalidKwargs, "in_features")

	if err := c.Initialize(Spec{Model: "pytorch_saver.models.MLP",
		ModelKwargs: map[string]any{"in_dim": 4, "hidden_dim": 16, "n_classes": 3},
		Optimizer:   "torch.optim.SGD", OptimizerKwargs: map[string]any{"lr": 0.1}}); err != nil {
		t.Fatal(err)
	}
	// A wrong input shape is libtorch's error, not a crash.
	_, _, err = c.Forward(input, []int64{4, 2})
	mustCode(t, err, ErrTorch, "shapes cannot be multiplied")
	_, _, err = c.Forward(input[:3], []int64{2, 4})
	mustCode(t, err, ErrInvalidArgument, "needs 32 bytes, the buffer has 12")
	_, _, err = c.Forward(input, []int64{-2, -4})
	mustCode(t, err, ErrInvalidArgument, "negative dimension")
	_, _, err = c.Forward(nil, nil)
	mustCode(t, err, ErrInvalidArgument, "")
	if out, _, err := c.Forward(input, []int64{2, 4}); err != nil || len(out) != 6 {
		t.Fatalf("a good forward after bad ones: %v %v", out, err)
	}
	mustCode(t, c.SchedulerStep(), ErrUsage, "")
	_, err = c.LR(1)
	mustCode(t, err, ErrInvalidArgument, "past the optimizer's 1 groups")
	_, err = c.LR(-1)
	mustCode(t, err, ErrInvalidArgument, "negative")
	_, _, err = c.Parameter(100)
	mustCode(t, err, ErrInvalidArgument, "past the model's 8 parameters")
	_, err = c.StateTensor("hidden_layers.9.bias")
	mustCode(t, err, ErrNotFound, "hidden_layers.9.bias")
	_, _, err = c.StateFloat32("nope")
	mustCode(t, err, ErrNotFound, "nope")

	dir := t.TempDir()
	_, err = c.Save(dir, "x", map[string]any{"timestamp": 1})
	mustCode(t, err, ErrInvalidMetadata, "reserved")
	_, err = c.Save(dir, "x", map[string]any{"loss": math.Inf(1)})
	mustCode(t, err, ErrInvalidMetadata, "+Inf")
	_, err = c.Save(dir, "x", []int{1, 2})
	mustCode(t, err, ErrInvalidJSON, "JSON object")
	_, err = c.SaveInference(filepath.Join(dir, "no", "such", "dir"), "x", nil)
	mustCode(t, err, ErrIO, "")
	if files, _ := os.ReadDir(dir); len(files) != 0 {
		t.Fatalf("failed saves left %d files", len(files))
	}

	// State that does not fit: the file's MLP is 8 wide, this one 16.
	_, err = c.Restore(goldenFile(t, "rust_mlp_inference.zip"))
	mustCode(t, err, ErrStateMismatch, "does not fit")
	_, err = c.Restore(goldenFile(t, "rust_linear_checkpoint.zip"))
	mustCode(t, err, ErrStateMismatch, "does not fit")

	// Use after Close.
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	c.Close()
	mustCode(t, c.Step(), ErrUsage, "closed")
	mustCode(t, c.ZeroGrad(), ErrUsage, "closed")
	mustCode(t, c.SchedulerStep(), ErrUsage, "closed")
	mustCode(t, c.SchedulerStepMetric(1), ErrUsage, "closed")
	mustCode(t, c.Initialize(Spec{Model: "torch.nn.Linear", ModelKwargs: linear}), ErrUsage, "closed")
	_, _, err = c.Forward(input, []int64{2, 4})
	mustCode(t, err, ErrUsage, "closed")
	_, err = c.Save(dir, "x", nil)
	mustCode(t, err, ErrUsage, "closed")
	_, err = c.LR(0)
	mustCode(t, err, ErrUsage, "closed")
	_, err = c.LRs()
	mustCode(t, err, ErrUsage, "closed")
	_, _, err = c.Parameter(0)
	mustCode(t, err, ErrUsage, "closed")
	_, err = c.ParameterNames()
	mustCode(t, err, ErrUsage, "closed")
	_, err = c.Restore(goldenFile(t, "rust_mlp_inference.zip"))
	mustCode(t, err, ErrUsage, "closed")
	x, _ := NewTensorOf(input, []int64{2, 4})
	_, err = c.ForwardTensor(x)
	mustCode(t, err, ErrUsage, "closed")

	var none *Container
	mustCode(t, none.Step(), ErrNullArgument, "nil")
}

func TestTensorErrors(t *testing.T) {
	x, err := NewTensorOf([]float32{1, 2}, []int64{2})
	if err != nil {
		t.Fatal(err)
	}
	x.Close()
	x.Close()
	_, err = x.Float32s()
	mustCode(t, err, ErrUsage, "closed")
	_, err = x.Info()
	mustCode(t, err, ErrUsage, "closed")
	_, err = x.Bytes()
	mustCode(t, err, ErrUsage, "closed")

	c, _, err := LoadContainer(goldenFile(t, "rust_mlp_inference.zip"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.ForwardTensor(x)
	mustCode(t, err, ErrUsage, "closed")
	_, err = c.ForwardTensor(nil)
	mustCode(t, err, ErrNullArgument, "nil")
	ints, _ := NewTensorOf([]int64{1, 2, 3, 4}, []int64{1, 4})
	defer ints.Close()
	_, err = c.ForwardTensor(ints)
	mustCode(t, err, ErrTorch, "")

	// A parameter outlives its container.
	_, w, err := c.Parameter(0)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if v, err := w.Float32s(); err != nil || len(v) != 32 {
		t.Fatalf("parameter after its container closed: %d values, %v", len(v), err)
	}
	w.Close()
}

func TestRegistryErrors(t *testing.T) {
	r, err := NewRegistry()
	if err != nil {
		t.Fatal(err)
	}
	for _, class := range []string{"torch.nn.Linear", "pytorch_saver.models.MLP"} {
		if ok, err := r.Contains(class); err != nil || !ok {
			t.Fatalf("Contains(%q) = %v, %v", class, ok, err)
		}
	}
	if ok, err := r.Contains("no.such"); err != nil || ok {
		t.Fatalf("Contains(no.such) = %v, %v", ok, err)
	}
	mustCode(t, r.RegisterModel("torch.nn.Linear", func(*Kwargs, bool, *ModelBuilder) error { return nil }),
		ErrDuplicateName, "torch.nn.Linear")
	mustCode(t, r.RegisterModel("x", nil), ErrNullArgument, "nil")
	mustCode(t, r.RegisterModel("x\x00y", func(*Kwargs, bool, *ModelBuilder) error { return nil }),
		ErrInvalidArgument, "NUL")
	r.Close()
	r.Close()
	_, err = r.Contains("torch.nn.Linear")
	mustCode(t, err, ErrUsage, "closed")
	mustCode(t, r.RegisterModel("y", func(*Kwargs, bool, *ModelBuilder) error { return nil }), ErrUsage, "closed")
	_, err = r.NewContainer()
	mustCode(t, err, ErrUsage, "closed")
	_, _, err = r.LoadContainer(goldenFile(t, "rust_mlp_inference.zip"))
	mustCode(t, err, ErrUsage, "closed")
	waitForHandles(t, 0)
}
