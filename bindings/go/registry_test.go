package pytorchsaver

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
)

// scaleClass is a model written in Go: y = x * weight over the last axis
// of n floats, weight starting at 1, 2, ..., n (tests/c's tests.c.Scale).
const scaleClass = "tests.go.Scale"

// scaleFactory builds scaleClass; calls counts its builds.
func scaleFactory(calls *atomic.Int64) ModelFactory {
	return func(kw *Kwargs, loading bool, model *ModelBuilder) error {
		if calls != nil {
			calls.Add(1)
		}
		n, err := kw.Int("n")
		if err != nil {
			return err
		}
		fail, err := kw.BoolOr("fail", false)
		if err != nil {
			return err
		}
		if fail {
			return errors.New("the factory was asked to fail")
		}
		if n < 1 || n > 64 {
			return &Error{Code: CodeInvalidKwargs, Message: `kwarg "n" must be 1..64`}
		}
		init := make([]float32, n)
		for i := range init {
			if !loading {
				init[i] = float32(i + 1)
			}
		}
		weight, err := NewTensorOf(init, []int64{n})
		if err != nil {
			return err
		}
		if err := model.AddParameter("scale.weight", weight); err != nil {
			return err
		}
		calls, err := NewTensorOf([]int64{0}, nil)
		if err != nil {
			return err
		}
		defer calls.Close() // the model shares its storage
		if err := model.AddBuffer("scale.calls", calls); err != nil {
			return err
		}
		return model.SetForward(func(x []float32, shape []int64, train bool) ([]float32, []int64, error) {
			if len(shape) == 0 || shape[len(shape)-1] != n {
				return nil, nil, fmt.Errorf("%s: last dimension is not %d", scaleClass, n)
			}
			w, err := weight.Float32s() // the current values: steps and loads change them
			if err != nil {
				return nil, nil, err
			}
			y := make([]float32, len(x))
			for i := range x {
				y[i] = x[i] * w[i%int(n)]
			}
			return y, shape, nil
		})
	}
}

func scaleRegistry(t *testing.T, calls *atomic.Int64) *Registry {
	t.Helper()
	r, err := NewRegistry()
	if err != nil {
		t.Fatal(err)
	}
	if err := r.RegisterModel(scaleClass, scaleFactory(calls)); err != nil {
		t.Fatal(err)
	}
	return r
}

func TestGoModel(t *testing.T) {
	base := liveHandles.Load()
	var calls atomic.Int64
	r := scaleRegistry(t, &calls)
	if ok, err := r.Contains(scaleClass); err != nil || !ok {
		t.Fatalf("Contains = %v, %v", ok, err)
	}
	mustCode(t, r.RegisterModel(scaleClass, scaleFactory(nil)), ErrDuplicateName, scaleClass)

	c, err := r.NewContainer()
	if err != nil {
		t.Fatal(err)
	}
	r.Close() // the container keeps its snapshot, and the factory
	mustCode(t, c.Initialize(Spec{Model: scaleClass}), ErrInvalidKwargs, `missing required kwarg "n"`)
	mustCode(t, c.Initialize(Spec{Model: scaleClass, ModelKwargs: map[string]any{"n": 3, "m": 1}}),
		ErrInvalidKwargs, `unexpected kwarg "m"`)
	mustCode(t, c.Initialize(Spec{Model: scaleClass, ModelKwargs: map[string]any{"n": 3, "fail": true}}),
		ErrFactory, "the factory was asked to fail")
	mustCode(t, c.Initialize(Spec{Model: scaleClass, ModelKwargs: map[string]any{"n": 99}}),
		ErrInvalidKwargs, "must be 1..64")

	err = c.Initialize(Spec{Model: scaleClass, ModelKwargs: map[string]any{"n": 3},
		Optimizer: "torch.optim.SGD", OptimizerKwargs: map[string]any{"lr": 0.1}})
	if err != nil {
		t.Fatal(err)
	}
	y, shape, err := c.Forward([]float32{1, 1, 1, 2, 2, 2}, []int64{2, 3})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(y, []float32{1, 2, 3, 2, 4, 6}) || !slices.Equal(shape, []int64{2, 3}) {
		t.Fatalf("forward %v %v", y, shape)
	}
	_, _, err = c.Forward([]float32{1, 1, 1, 2, 2, 2}, []int64{3, 2})
	mustCode(t, err, ErrCallback, "last dimension is not 3")
	names, err := c.ParameterNames()
	if err != nil || !slices.Equal(names, []string{"scale.weight"}) {
		t.Fatalf("parameters %v %v", names, err)
	}
	if err := c.ZeroGrad(); err != nil {
		t.Fatal(err)
	}
	if err := c.Step(); err != nil {
		t.Fatal(err)
	}

	// The container's parameter is the factory's tensor: writing through
	// the container (a restore) changes what forward reads.
	path, err := c.Save(t.TempDir(), "go_scale", map[string]any{"note": "Go model"})
	if err != nil {
		t.Fatal(err)
	}
	ckpt, err := OpenCheckpoint(path)
	if err != nil {
		t.Fatal(err)
	}
	w, _, err := ckpt.ReadFloat32(MemberModel, "scale.weight")
	if err != nil || !slices.Equal(w, []float32{1, 2, 3}) {
		t.Fatalf("saved weight %v %v", w, err)
	}
	n, _, err := ckpt.ReadInt64(MemberModel, "scale.calls")
	if err != nil || !slices.Equal(n, []int64{0}) {
		t.Fatalf("saved buffer %v %v", n, err)
	}
	ckpt.Close()
	c.Close()

	// Loading needs the class: not built in, so only through a registry.
	_, _, err = LoadContainer(path)
	mustCode(t, err, ErrUnknownName, scaleClass)
	r = scaleRegistry(t, &calls)
	defer r.Close()
	loaded, meta, err := r.LoadContainer(path)
	if err != nil {
		t.Fatal(err)
	}
	if meta["note"] != "Go model" {
		t.Fatalf("metadata %v", meta)
	}
	// The factory ran with loading true (zeros), then the file's values
	// were loaded into its tensor in place.
	y, _, err = loaded.Forward([]float32{1, 1, 1}, []int64{3})
	if err != nil || !slices.Equal(y, []float32{1, 2, 3}) {
		t.Fatalf("loaded forward %v %v", y, err)
	}
	loaded.Close()
	r.Close()
	if calls.Load() != 6 {
		t.Errorf("the factory ran %d times, want 6", calls.Load())
	}
	// Every handle the library held (factories, model instances) is
	// released once the last registry and container are freed.
	waitForHandles(t, base)
}

func TestGoModelPanicsAndMisuse(t *testing.T) {
	base := liveHandles.Load()
	r, err := NewRegistry()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var kept *Kwargs
	var keptBuilder *ModelBuilder
	must := func(err error) {
		if err != nil {
			t.Error(err) // not t.Fatal: no Goexit inside a callback
		}
	}
	must(r.RegisterModel("tests.go.Panics", func(kw *Kwargs, loading bool, m *ModelBuilder) error {
		kept, keptBuilder = kw, m
		mode, err := kw.IntOr("mode", 0)
		if err != nil {
			return err
		}
		if mode == 1 {
			var nothing map[string]int
			nothing["boom"] = 1 // a runtime panic
		}
		lr, err := kw.FloatOr("scale", 2)
		if err != nil {
			return err
		}
		x, err := NewTensorOf([]float32{1}, []int64{1})
		if err != nil {
			return err
		}
		if err := m.AddParameter("a.w", x); err != nil {
			return err
		}
		mustCode(t, m.AddParameter("a.w", x), ErrDuplicateName, "added twice")
		mustCode(t, m.AddParameter("a..w", x), ErrInvalidArgument, "empty component")
		closed, _ := NewTensorOf([]float32{1}, []int64{1})
		closed.Close()
		mustCode(t, m.AddBuffer("a.b", closed), ErrUsage, "closed")
		mustCode(t, m.SetForward(nil), ErrNullArgument, "nil")
		if mode == 2 {
			return nil // no forward function
		}
		must(m.SetForward(func(in []float32, shape []int64, train bool) ([]float32, []int64, error) {
			switch {
			case len(in) > 0 && in[0] < 0:
				panic("negative input")
			case len(in) > 0 && in[0] == 0:
				return in, []int64{99}, nil // output that does not fit its shape
			}
			out := make([]float32, len(in))
			for i := range in {
				out[i] = in[i] * float32(lr)
			}
			return out, shape, nil
		}))
		mustCode(t, m.SetForward(func([]float32, []int64, bool) ([]float32, []int64, error) { return nil, nil, nil }),
			ErrUsage, "already set")
		return nil
	}))
	c, err := r.NewContainer()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	mustCode(t, c.Initialize(Spec{Model: "tests.go.Panics", ModelKwargs: map[string]any{"mode": 1}}),
		ErrFactory, "panic in the Go factory of tests.go.Panics")
	// A Kwargs or ModelBuilder kept past the call is dead.
	_, err = kept.Int("mode")
	mustCode(t, err, ErrUsage, "after the factory returned")
	_, err = kept.JSON()
	mustCode(t, err, ErrUsage, "after the factory returned")
	x, _ := NewTensorOf([]float32{1}, []int64{1})
	mustCode(t, keptBuilder.AddParameter("late", x), ErrUsage, "after the factory returned")
	mustCode(t, keptBuilder.SetForward(func([]float32, []int64, bool) ([]float32, []int64, error) { return nil, nil, nil }),
		ErrUsage, "after the factory returned")

	if err := c.Initialize(Spec{Model: "tests.go.Panics", ModelKwargs: map[string]any{"mode": 2}}); err != nil {
		t.Fatal(err)
	}
	_, _, err = c.Forward([]float32{1}, []int64{1})
	mustCode(t, err, ErrUsage, "no forward function")

	if err := c.Initialize(Spec{Model: "tests.go.Panics", ModelKwargs: map[string]any{"scale": 3}}); err != nil {
		t.Fatal(err)
	}
	y, _, err := c.Forward([]float32{1, 2}, []int64{2})
	if err != nil || !slices.Equal(y, []float32{3, 6}) {
		t.Fatalf("forward %v %v", y, err)
	}
	_, _, err = c.Forward([]float32{-1}, []int64{1})
	mustCode(t, err, ErrCallback, "panic in the forward function of tests.go.Panics: negative input")
	_, _, err = c.Forward([]float32{0}, []int64{1})
	mustCode(t, err, ErrCallback, "the forward output (1 values, shape [99])")
	ints, _ := NewTensorOf([]int64{1}, []int64{1})
	_, err = c.ForwardTensor(ints)
	mustCode(t, err, ErrCallback, "takes F32 input, got I64")
	// The container still works after all that.
	if y, _, err := c.Forward([]float32{1}, []int64{1}); err != nil || y[0] != 3 {
		t.Fatalf("forward after failures %v %v", y, err)
	}
	c.Close()
	r.Close()
	waitForHandles(t, base)
}

// A factory that takes its kwargs whole decodes them into a struct that
// refuses unknown fields.
func TestGoModelDecodesKwargs(t *testing.T) {
	r, err := NewRegistry()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	type kwargs struct {
		Sizes []int64 `json:"sizes"`
		Name  string  `json:"name"`
	}
	var got kwargs
	err = r.RegisterModel("tests.go.Decoded", func(kw *Kwargs, loading bool, m *ModelBuilder) error {
		got = kwargs{}
		if err := kw.Decode(&got); err != nil {
			return err
		}
		x, err := NewTensorOf(make([]float32, len(got.Sizes)), []int64{int64(len(got.Sizes))})
		if err != nil {
			return err
		}
		defer x.Close()
		return m.AddParameter("p", x)
	})
	if err != nil {
		t.Fatal(err)
	}
	c, err := r.NewContainer()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Initialize(Spec{Model: "tests.go.Decoded", ModelKwargs: map[string]any{"sizes": []int{2, 3}, "name": "x"}}); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got.Sizes, []int64{2, 3}) || got.Name != "x" {
		t.Fatalf("decoded %+v", got)
	}
	mustCode(t, c.Initialize(Spec{Model: "tests.go.Decoded", ModelKwargs: map[string]any{"colour": 1}}),
		ErrInvalidKwargs, `unknown field "colour"`)
	mustCode(t, c.Initialize(Spec{Model: "tests.go.Decoded", ModelKwargs: map[string]any{"sizes": "no"}}),
		ErrInvalidKwargs, "cannot unmarshal")
}

// Containers of a Go model on several goroutines at once: the factory
// and forward functions run concurrently, each container one call at a
// time.
func TestGoModelConcurrently(t *testing.T) {
	base := liveHandles.Load()
	var calls atomic.Int64
	r := scaleRegistry(t, &calls)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 20 {
				c, err := r.NewContainer()
				if err != nil {
					errs <- err
					return
				}
				n := int64(g%4 + 1)
				if err := c.Initialize(Spec{Model: scaleClass, ModelKwargs: map[string]any{"n": n}}); err != nil {
					errs <- err
					return
				}
				x := make([]float32, n)
				for j := range x {
					x[j] = float32(i)
				}
				y, _, err := c.Forward(x, []int64{n})
				if err != nil {
					errs <- err
					return
				}
				for j := range y {
					if y[j] != float32(i*(j+1)) {
						errs <- fmt.Errorf("goroutine %d: y = %v", g, y)
						return
					}
				}
				if i%2 == 0 {
					c.Close() // the others are left to the finalizer
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	r.Close()
	waitForHandles(t, base)
}
