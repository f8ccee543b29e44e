package pytorchsaver

import (
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// goldenRoot is tests/golden of the repository, found from this
// package's directory (bindings/go).
const goldenRoot = "../../tests/golden"

// writeFile writes data to dir/name and returns the path.
func writeFile(t testing.TB, dir, name string, data []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// goldenFile is one golden file of tests/golden/v1.
func goldenFile(t testing.TB, name string) string {
	t.Helper()
	path := filepath.Join(goldenRoot, "v1", name)
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("golden file: %v", err)
	}
	return path
}

// goldenVersion is the format version of a golden file: that of its
// directory (tests/golden/v1, tests/golden/v2, ...).
func goldenVersion(path string) int {
	v, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(filepath.Dir(path)), "v"))
	if err != nil {
		panic("a golden file outside a vN directory: " + path)
	}
	return v
}

// goldenFiles lists every golden checkpoint of every format version.
func goldenFiles(t testing.TB) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(goldenRoot, "*", "*.zip"))
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(files)
	return files
}

// sidecarTensor is one tensor as a sidecar records it.
type sidecarTensor struct {
	DType string  `json:"dtype"`
	Shape []int64 `json:"shape"`
	Hex   string  `json:"hex"`
}

// sidecarForward is a recorded forward: an input and the writer's output.
type sidecarForward struct {
	Input      []float64 `json:"input"`
	InputShape []int64   `json:"input_shape"`
	Output     []float64 `json:"output"`
}

// sidecar is what X.zip.json records about X.zip (tests/golden/README.md).
type sidecar struct {
	Metadata json.RawMessage                     `json:"metadata"`
	Tensors  map[string]map[string]sidecarTensor `json:"tensors"`
	Forward  *sidecarForward                     `json:"forward"`
	Resume   json.RawMessage                     `json:"resume"`
	// raw is the whole sidecar.
	raw []byte
}

func readSidecar(t testing.TB, zipPath string) sidecar {
	t.Helper()
	data, err := os.ReadFile(zipPath + ".json")
	if err != nil {
		t.Fatal(err)
	}
	var s sidecar
	if err := json.Unmarshal(data, &s); err != nil {
		t.Fatalf("%s.json: %v", zipPath, err)
	}
	s.raw = data
	return s
}

// canonicalJSON decodes JSON so that two documents compare equal with
// reflect.DeepEqual exactly when they hold the same values: integers stay
// exact (as their decimal text) and apart from floats, which compare as
// float64 (so 1e-3 and 0.001 agree, 1 and 1.0 do not).
func canonicalJSON(t testing.TB, text []byte) any {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(string(text)))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("JSON: %v", err)
	}
	return canonical(v)
}

func canonical(v any) any {
	switch v := v.(type) {
	case map[string]any:
		for k, x := range v {
			v[k] = canonical(x)
		}
		return v
	case []any:
		for i, x := range v {
			v[i] = canonical(x)
		}
		return v
	case json.Number:
		if strings.ContainsAny(string(v), ".eE") {
			f, _ := v.Float64()
			return f
		}
		return "int:" + string(v)
	}
	return v
}

func float32s(v []float64) []float32 {
	out := make([]float32, len(v))
	for i, x := range v {
		out[i] = float32(x)
	}
	return out
}

// closeEnough is the golden files' forward tolerance: 1e-6 relative.
func closeEnough(a, b float32) bool {
	return math.Abs(float64(a)-float64(b)) <= 1e-6*math.Max(math.Abs(float64(b)), 1)
}

// mustCode checks that err is an *Error matching sentinel, with a
// message, and that errors.Is tells it from another code.
func mustCode(t testing.TB, err error, sentinel *Error, needle string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want %v", sentinel)
	}
	if !errors.Is(err, sentinel) {
		t.Fatalf("error %q does not match %v", err, sentinel)
	}
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("error %T is not an *Error", err)
	}
	if e.Message == "" {
		t.Fatalf("error %v has no message", err)
	}
	if !strings.Contains(e.Message, needle) {
		t.Fatalf("error message %q does not contain %q", e.Message, needle)
	}
	other := ErrPanic
	if sentinel == ErrPanic {
		other = ErrIO
	}
	if errors.Is(err, other) {
		t.Fatalf("error %v matches %v too", err, other)
	}
}

// mlpSpec is a small MLP with Adam and StepLR, as the C tests use.
func mlpSpec() Spec {
	return Spec{
		Model:           "pytorch_saver.models.MLP",
		ModelKwargs:     map[string]any{"in_dim": 4, "hidden_dim": 8, "n_classes": 3},
		Optimizer:       "torch.optim.Adam",
		OptimizerKwargs: map[string]any{"lr": 0.01},
		Scheduler:       "torch.optim.lr_scheduler.StepLR",
		SchedulerKwargs: map[string]any{"step_size": 2, "gamma": 0.5},
	}
}

// waitForHandles runs the garbage collector until the library holds
// want Go handles or the deadline passes (cleanups run asynchronously).
func waitForHandles(t testing.TB, want int64) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for liveHandles.Load() != want && time.Now().Before(deadline) {
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
	if got := liveHandles.Load(); got != want {
		t.Fatalf("the library holds %d Go handles, want %d", got, want)
	}
}
