package pytorchsaver

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"reflect"
	"strings"
	"testing"
)

// ema is a Go object with state: a step count and a running average.
type ema struct {
	class   string
	count   int64
	average []float32 // 2x2
	failIn  string    // the method that returns an error
}

// emaValue is ema's typed value.
type emaValue struct {
	Count   int64     `json:"count"`
	Average TensorRef `json:"average"`
}

func (e *ema) ClassName() string { return e.class }

func (e *ema) State() (*State, error) {
	if e.failIn == "State" {
		return nil, errors.New("the average is not ready")
	}
	t, err := NewTensorOf(e.average, []int64{2, 2})
	if err != nil {
		return nil, err
	}
	return &State{
		Value:   emaValue{Count: e.count, Average: TensorRef{Name: "average"}},
		Tensors: map[string]*Tensor{"average": t},
	}, nil
}

// read decodes and checks a state: its count and average.
func (e *ema) read(s *State) (int64, []float32, error) {
	var v emaValue
	if err := json.Unmarshal(s.Value.(json.RawMessage), &v); err != nil {
		return 0, nil, fmt.Errorf("%w: %v", ErrInvalidState, err)
	}
	t, err := s.Tensor(v.Average)
	if err != nil {
		return 0, nil, err
	}
	values, err := t.Float32s()
	if err != nil || len(values) != len(e.average) {
		return 0, nil, errorf(CodeInvalidState, "average holds %d float32 values, want %d", len(values), len(e.average))
	}
	return v.Count, values, nil
}

func (e *ema) CheckState(s *State) error {
	if e.failIn == "CheckState" {
		return errors.New("refused by the object")
	}
	_, _, err := e.read(s)
	return err
}

func (e *ema) LoadState(s *State) error {
	count, values, err := e.read(s)
	if err != nil {
		return err
	}
	e.count, e.average = count, values
	return nil
}

func newEma(count int64, v float32) *ema {
	return &ema{class: "go_test.EMA", count: count, average: []float32{v, v + 1, v + 2, v + 3}}
}

// mlpParameters is every parameter of c's model, as float32 values.
func mlpParameters(t *testing.T, c *Container) [][]float32 {
	t.Helper()
	n, err := c.ParameterCount()
	if err != nil {
		t.Fatal(err)
	}
	out := make([][]float32, n)
	for i := range out {
		_, p, err := c.Parameter(i)
		if err != nil {
			t.Fatal(err)
		}
		if out[i], err = p.Float32s(); err != nil {
			t.Fatal(err)
		}
		p.Close()
	}
	return out
}

// freshMLP initializes a new MLP: its initial weights are draws from
// libtorch's CPU generator.
func freshMLP(t *testing.T) [][]float32 {
	t.Helper()
	c := newTestContainer(t)
	defer c.Close()
	if err := c.Initialize(Spec{Model: "pytorch_saver.models.MLP",
		ModelKwargs: map[string]any{"in_dim": 4, "hidden_dim": 8, "n_classes": 3}}); err != nil {
		t.Fatal(err)
	}
	return mlpParameters(t, c)
}

func newTestContainer(t *testing.T) *Container {
	t.Helper()
	c, err := NewContainer()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func mustOK(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestExtraStateRNGAndCountersRoundTrip(t *testing.T) {
	base := liveHandles.Load()
	dir := t.TempDir()
	c := newTestContainer(t)
	defer c.Close()
	mustOK(t, c.Initialize(mlpSpec()))
	mustOK(t, c.TrackRNG("rng"))
	mustOK(t, c.TrackCounters("counters", map[string]int64{"step": 30, "epoch": 2}))
	if v, err := c.IncrementCounter("counters", "step"); err != nil || v != 31 {
		t.Fatalf("IncrementCounter = %d, %v", v, err)
	}
	mustOK(t, c.SetCounter("counters", "epoch", 3))
	obj := newEma(7, 0.5)
	mustOK(t, c.Track("ema", obj))
	names, err := c.TrackedNames()
	if err != nil || !reflect.DeepEqual(names, []string{"rng", "counters", "ema"}) {
		t.Fatalf("TrackedNames = %v, %v", names, err)
	}
	path, err := c.Save(dir, "extra", nil)
	mustOK(t, err)
	drawn := freshMLP(t) // what the generator draws after the save

	fresh := newTestContainer(t)
	defer fresh.Close()
	mustOK(t, fresh.TrackRNG("rng"))
	mustOK(t, fresh.TrackCounters("counters", nil))
	restored := newEma(0, 9)
	mustOK(t, fresh.Track("ema", restored))
	_, err = fresh.LoadInto(path)
	mustOK(t, err)
	for key, want := range map[string]int64{"step": 31, "epoch": 3} {
		if got, err := fresh.Counter("counters", key); err != nil || got != want {
			t.Errorf("counter %s = %d, %v; want %d", key, got, err, want)
		}
	}
	if _, err := fresh.Counter("counters", "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("an unset counter: %v", err)
	}
	if restored.count != 7 || !reflect.DeepEqual(restored.average, obj.average) {
		t.Errorf("the object got %d %v, want 7 %v", restored.count, restored.average, obj.average)
	}
	if !reflect.DeepEqual(mlpParameters(t, fresh), mlpParameters(t, c)) {
		t.Error("the model's parameters differ")
	}
	// The generator replays the draws that followed the save.
	if !reflect.DeepEqual(freshMLP(t), drawn) {
		t.Error("the RNG did not resume where the save left it")
	}

	// Restore into the same objects does the same.
	restored.count = 0
	mustOK(t, fresh.SetCounter("counters", "step", 0))
	_, err = fresh.Restore(path)
	mustOK(t, err)
	if got, _ := fresh.Counter("counters", "step"); got != 31 || restored.count != 7 {
		t.Errorf("after Restore: step %d, count %d", got, restored.count)
	}
	if !reflect.DeepEqual(freshMLP(t), drawn) {
		t.Error("Restore did not resume the RNG")
	}

	mustOK(t, fresh.Untrack("ema"))
	if err := fresh.Untrack("ema"); !errors.Is(err, ErrUsage) {
		t.Errorf("untracking twice: %v", err)
	}
	c.Close()
	fresh.Close()
	waitForHandles(t, base)
}

func TestExtraStateErrors(t *testing.T) {
	base := liveHandles.Load()
	dir := t.TempDir()
	c := newTestContainer(t)
	defer c.Close()
	mustOK(t, c.Initialize(mlpSpec()))
	mustOK(t, c.TrackCounters("counters", map[string]int64{"step": 5}))
	mustOK(t, c.Track("ema", newEma(3, 1)))
	if err := c.Track("ema", newEma(0, 0)); !errors.Is(err, ErrDuplicateName) {
		t.Errorf("a name tracked twice: %v", err)
	}
	if err := c.TrackRNG(""); !errors.Is(err, ErrUsage) {
		t.Errorf("an empty name: %v", err)
	}
	if err := c.SetCounter("ema", "step", 1); !errors.Is(err, ErrUsage) || !strings.Contains(err.Error(), "go_test.EMA") {
		t.Errorf("counters of a Go object: %v", err)
	}
	path, err := c.Save(dir, "extra", nil)
	mustOK(t, err)

	// A State error fails the save, naming the entry, and writes nothing.
	failing := newTestContainer(t)
	defer failing.Close()
	mustOK(t, failing.Initialize(mlpSpec()))
	mustOK(t, failing.Track("broken", &ema{class: "go_test.EMA", failIn: "State"}))
	empty := t.TempDir()
	_, err = failing.Save(empty, "broken", nil)
	var e *Error
	if !errors.As(err, &e) || e.Code != CodeCallback || e.Kind != "Callback" ||
		!strings.Contains(e.Message, `get_state of the object tracked as "broken"`) ||
		!strings.Contains(e.Message, "the average is not ready") {
		t.Errorf("a failing State: %v", err)
	}
	if entries, _ := os.ReadDir(empty); len(entries) != 0 {
		t.Errorf("a failed save left %d files", len(entries))
	}

	// Another class under the name: a mismatch, and nothing loaded.
	other := newTestContainer(t)
	defer other.Close()
	mustOK(t, other.TrackCounters("counters", map[string]int64{"step": 99}))
	wrong := &ema{class: "go_test.Other", average: make([]float32, 4)}
	mustOK(t, other.Track("ema", wrong))
	_, err = other.LoadInto(path)
	if !errors.Is(err, ErrStateMismatch) || !strings.Contains(err.Error(), "__pytorch_saver__.extra.ema") ||
		!strings.Contains(err.Error(), "go_test.Other") {
		t.Errorf("a class mismatch: %v", err)
	}
	if got, _ := other.Counter("counters", "step"); got != 99 || wrong.count != 0 {
		t.Errorf("a refused load changed the objects: step %d, count %d", got, wrong.count)
	}

	// The object's own refusals: a typed code is kept, another error is a
	// callback error; both name the entry.
	mustOK(t, other.Untrack("ema"))
	mustOK(t, other.Track("ema", &ema{class: "go_test.EMA", average: make([]float32, 3)}))
	_, err = other.LoadInto(path)
	if !errors.Is(err, ErrInvalidState) || !strings.Contains(err.Error(), "__pytorch_saver__.extra.ema.state") ||
		!strings.Contains(err.Error(), "want 3") {
		t.Errorf("a state of the wrong size: %v", err)
	}
	mustOK(t, other.Untrack("ema"))
	mustOK(t, other.Track("ema", &ema{class: "go_test.EMA", failIn: "CheckState"}))
	_, err = other.LoadInto(path)
	if !errors.As(err, &e) || e.Code != CodeCallback || !strings.Contains(e.Message, `check_state of the object tracked as "ema"`) {
		t.Errorf("a refusing CheckState: %v", err)
	}

	// A tracked name the file lacks.
	mustOK(t, other.Untrack("ema"))
	mustOK(t, other.TrackRNG("rng"))
	_, err = other.LoadInto(path)
	if !errors.Is(err, ErrStateMismatch) || !strings.Contains(err.Error(), "no extra-state entry") {
		t.Errorf("a missing entry: %v", err)
	}
	mustOK(t, other.Untrack("rng"))
	_, err = other.LoadInto(path)
	mustOK(t, err)

	c.Close()
	failing.Close()
	other.Close()
	waitForHandles(t, base)
}
