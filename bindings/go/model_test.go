package pytorchsaver

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// requestInput is request i of the concurrency tests: the recorded input,
// scaled and shifted by i so that every request has its own answer.
func requestInput(base []float32, i int) []float32 {
	x := make([]float32, len(base))
	for j, v := range base {
		x[j] = v*(1+float32(i)/16) + float32(i%7)/10 - float32(j%3)/5
	}
	return x
}

// sameBits reports whether two outputs are equal bit for bit.
func sameBits(a, b []float32) bool {
	return slices.EqualFunc(a, b, func(x, y float32) bool { return math.Float32bits(x) == math.Float32bits(y) })
}

// 64 requests from 8 goroutines against one Model answer exactly what the
// same 64 requests answer one after another, for a built-in MLP and a
// Python-trained Sequential conv net; both run concurrently.
func TestModelConcurrentForwardMatchesSequential(t *testing.T) {
	for _, name := range []string{"rust_mlp_inference.zip", "python_sequential_convnet_adam_warm_restarts.zip"} {
		t.Run(name, func(t *testing.T) {
			path := goldenFile(t, name)
			rec := readSidecar(t, path).Forward
			m, metadata, err := LoadModel(path, LoadOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			ckpt, err := OpenCheckpoint(path)
			if err != nil {
				t.Fatal(err)
			}
			defer ckpt.Close()
			if m.Class() != ckpt.ModelClass() || !m.Concurrent() || metadata["model_kwargs"] == nil {
				t.Fatalf("class %q (file %q), concurrent %v, metadata %v", m.Class(), ckpt.ModelClass(), m.Concurrent(), metadata)
			}
			// The recorded forward.
			out, shape, err := m.Forward(float32s(rec.Input), rec.InputShape)
			if err != nil {
				t.Fatal(err)
			}
			if len(out) != len(rec.Output) || shape[0] != rec.InputShape[0] {
				t.Fatalf("output %v shape %v", out, shape)
			}
			for i, v := range float32s(rec.Output) {
				if !closeEnough(out[i], v) {
					t.Fatalf("output %v, recorded %v", out, rec.Output)
				}
			}

			const requests, workers = 64, 8
			inputs := make([][]float32, requests)
			want := make([][]float32, requests)
			for i := range inputs {
				inputs[i] = requestInput(float32s(rec.Input), i)
				if want[i], _, err = m.Forward(inputs[i], rec.InputShape); err != nil {
					t.Fatal(err)
				}
			}
			got := make([][]float32, requests)
			errs := make([]error, requests)
			var wg sync.WaitGroup
			for w := range workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := w; i < requests; i += workers {
						got[i], _, errs[i] = m.Forward(inputs[i], rec.InputShape)
					}
				}()
			}
			wg.Wait()
			for i := range requests {
				if errs[i] != nil {
					t.Fatalf("request %d: %v", i, errs[i])
				}
				if !sameBits(got[i], want[i]) {
					t.Fatalf("request %d: concurrent %v, sequential %v", i, got[i], want[i])
				}
			}

			// ForwardTensor gives the same bits.
			x, err := NewTensorOf(inputs[5], rec.InputShape)
			if err != nil {
				t.Fatal(err)
			}
			defer x.Close()
			y, err := m.ForwardTensor(x)
			if err != nil {
				t.Fatal(err)
			}
			defer y.Close()
			if v, err := y.Float32s(); err != nil || !sameBits(v, want[5]) {
				t.Fatalf("ForwardTensor: %v %v, want %v", v, err, want[5])
			}
		})
	}
}

// StateTensor and StateFloat32 read the file's tensors.
func TestModelState(t *testing.T) {
	path := goldenFile(t, "rust_mlp_inference.zip")
	m, _, err := LoadModel(path, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ckpt, err := OpenCheckpoint(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ckpt.Close()
	want, wantShape, err := ckpt.ReadFloat32(MemberModel, "fc1.weight")
	if err != nil {
		t.Fatal(err)
	}
	got, shape, err := m.StateFloat32("fc1.weight")
	if err != nil || !sameBits(got, want) || !slices.Equal(shape, wantShape) {
		t.Fatalf("StateFloat32: %v %v %v", got, shape, err)
	}
	w, err := m.StateTensor("fc1.weight")
	if err != nil {
		t.Fatal(err)
	}
	m.Close() // the tensor keeps its storage
	if v, err := w.Float32s(); err != nil || !sameBits(v, want) {
		t.Fatalf("StateTensor after Close: %v %v", v, err)
	}
	w.Close()

	m, _, err = LoadModel(path, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	_, err = m.StateTensor("no.such")
	mustCode(t, err, ErrNotFound, "no.such")
	_, _, err = m.StateFloat32("no.such")
	mustCode(t, err, ErrNotFound, "no.such")
	_, err = m.StateTensor("a\x00b")
	mustCode(t, err, ErrInvalidArgument, "NUL")
	_, _, err = m.Forward([]float32{1, 2, 3}, []int64{1, 3})
	mustCode(t, err, ErrTorch, "")
	_, _, err = m.Forward([]float32{1, 2, 3}, []int64{1, 4})
	mustCode(t, err, ErrInvalidArgument, "")

	_, _, err = LoadModel(filepath.Join(t.TempDir(), "missing.zip"), LoadOptions{})
	mustCode(t, err, ErrIO, "missing.zip")
	_, _, err = LoadModel("a\x00b", LoadOptions{})
	mustCode(t, err, ErrInvalidArgument, "NUL")
}

// Close while idle, twice, and use after Close: ErrUsage, never a crash;
// Class and Concurrent still answer. A nil Model is an error too.
func TestModelClose(t *testing.T) {
	path := goldenFile(t, "rust_mlp_inference.zip")
	m, _, err := LoadModel(path, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	_, _, err = m.Forward([]float32{1, 2, 3, 4}, []int64{1, 4})
	mustCode(t, err, ErrUsage, "closed")
	x, err := NewTensorOf([]float32{1, 2, 3, 4}, []int64{1, 4})
	if err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	_, err = m.ForwardTensor(x)
	mustCode(t, err, ErrUsage, "closed")
	_, err = m.StateTensor("fc1.weight")
	mustCode(t, err, ErrUsage, "closed")
	_, _, err = m.StateFloat32("fc1.weight")
	mustCode(t, err, ErrUsage, "closed")
	if m.Class() != "pytorch_saver.models.MLP" || !m.Concurrent() {
		t.Fatalf("after Close: %q %v", m.Class(), m.Concurrent())
	}

	var nilModel *Model
	if err := nilModel.Close(); err != nil {
		t.Fatal(err)
	}
	_, _, err = nilModel.Forward([]float32{1}, []int64{1})
	mustCode(t, err, ErrNullArgument, "nil")

	// Close racing with Forward calls in flight on other goroutines: each
	// call works or fails with ErrUsage.
	for range 10 {
		m, _, err := LoadModel(path, LoadOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		var worked atomic.Int64
		errs := make(chan error, 8)
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					_, _, err := m.Forward([]float32{1, 2, 3, 4}, []int64{1, 4})
					if errors.Is(err, ErrUsage) {
						return
					}
					if err != nil {
						errs <- err
						return
					}
					worked.Add(1)
				}
			}()
		}
		for worked.Load() < 16 {
			runtime.Gosched()
		}
		m.Close()
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
	}
}

// concurrencyProbe records how many forward calls of a Go model run at
// once.
type concurrencyProbe struct {
	inFlight, max atomic.Int64
	calls         atomic.Int64
	// rendezvous: a call waits (up to 10 s) until it has seen another
	// call in flight, so a model that runs calls in parallel shows it
	// whatever the scheduling; otherwise a call sleeps 2 ms.
	rendezvous bool
}

func (p *concurrencyProbe) enter() {
	p.calls.Add(1)
	n := p.inFlight.Add(1)
	for {
		m := p.max.Load()
		if n <= m || p.max.CompareAndSwap(m, n) {
			break
		}
	}
	if !p.rendezvous {
		time.Sleep(2 * time.Millisecond)
		return
	}
	deadline := time.Now().Add(10 * time.Second)
	for p.max.Load() < 2 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
}

func (p *concurrencyProbe) leave() { p.inFlight.Add(-1) }

// probeFactory builds y = x * weight (n weights, 1..n), declaring its
// forward thread-safe when threadSafe; it records in loads whether it was
// called to load, and builds into EmptyTensor memory then.
func probeFactory(p *concurrencyProbe, threadSafe bool, loads *atomic.Int64) ModelFactory {
	return func(kw *Kwargs, loading bool, model *ModelBuilder) error {
		n, err := kw.Int("n")
		if err != nil {
			return err
		}
		var weight *Tensor
		if loading {
			loads.Add(1)
			weight, err = EmptyTensor(Float32, []int64{n})
		} else {
			init := make([]float32, n)
			for i := range init {
				init[i] = float32(i + 1)
			}
			weight, err = NewTensorOf(init, []int64{n})
		}
		if err != nil {
			return err
		}
		if err := model.AddParameter("weight", weight); err != nil {
			return err
		}
		if threadSafe {
			if err := model.SetThreadSafe(); err != nil {
				return err
			}
		}
		return model.SetForward(func(x []float32, shape []int64, train bool) ([]float32, []int64, error) {
			p.enter()
			defer p.leave()
			w, err := weight.Float32s()
			if err != nil {
				return nil, nil, err
			}
			y := make([]float32, len(x))
			for i := range x {
				y[i] = x[i] * w[i%len(w)]
			}
			return y, shape, nil
		})
	}
}

// saveProbeModel saves class (n = 3) with a container over r.
func saveProbeModel(t *testing.T, r *Registry, class string) string {
	t.Helper()
	c, err := r.NewContainer()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Initialize(Spec{Model: class, ModelKwargs: map[string]any{"n": 3}}); err != nil {
		t.Fatal(err)
	}
	path, err := c.SaveInference(t.TempDir(), "probe", nil)
	if err != nil {
		t.Fatal(err)
	}
	return path
}

// A Go model that declared itself thread-safe runs concurrent Forward
// calls in parallel; one that did not runs them one at a time.
func TestModelGoThreadSafety(t *testing.T) {
	base := liveHandles.Load()
	for _, threadSafe := range []bool{true, false} {
		t.Run(fmt.Sprint("threadSafe=", threadSafe), func(t *testing.T) {
			probe := &concurrencyProbe{rendezvous: threadSafe}
			var loads atomic.Int64
			r, err := NewRegistry()
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			const class = "tests.go.Probe"
			if err := r.RegisterModel(class, probeFactory(probe, threadSafe, &loads)); err != nil {
				t.Fatal(err)
			}
			path := saveProbeModel(t, r, class)
			m, _, err := r.LoadModel(path, LoadOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			if m.Class() != class || m.Concurrent() != threadSafe || loads.Load() != 1 {
				t.Fatalf("class %q, concurrent %v, loads %d", m.Class(), m.Concurrent(), loads.Load())
			}
			const workers, each = 8, 4
			var wg sync.WaitGroup
			errs := make(chan error, workers)
			for g := range workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range each {
						k := float32(g*each + i)
						y, shape, err := m.Forward([]float32{k, k, k}, []int64{1, 3})
						if err != nil {
							errs <- err
							return
						}
						// The weights came from the file (the factory
						// built them uninitialized).
						if !slices.Equal(y, []float32{k, 2 * k, 3 * k}) || !slices.Equal(shape, []int64{1, 3}) {
							errs <- fmt.Errorf("forward of %v: %v %v", k, y, shape)
							return
						}
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
			if probe.calls.Load() != workers*each {
				t.Fatalf("%d forward calls, want %d", probe.calls.Load(), workers*each)
			}
			if threadSafe && probe.max.Load() < 2 {
				t.Fatalf("a thread-safe model never ran two calls at once")
			}
			if !threadSafe && probe.max.Load() != 1 {
				t.Fatalf("a model that did not declare itself thread-safe ran %d calls at once", probe.max.Load())
			}
		})
	}
	waitForHandles(t, base)
}

// SetThreadSafe after the factory returned is ErrUsage; EmptyTensor makes
// a tensor of the dtype and shape asked, and refuses a bad one.
func TestEmptyTensorAndBuilderUsage(t *testing.T) {
	x, err := EmptyTensor(Int64, []int64{2, 3})
	if err != nil {
		t.Fatal(err)
	}
	info, err := x.Info()
	if err != nil || info.DType != Int64 || !slices.Equal(info.Shape, []int64{2, 3}) || info.NumBytes != 48 {
		t.Fatalf("info %+v %v", info, err)
	}
	x.Close()
	s, err := EmptyTensor(Float32, nil)
	if err != nil {
		t.Fatal(err)
	}
	if shape, err := s.Shape(); err != nil || len(shape) != 0 {
		t.Fatalf("scalar shape %v %v", shape, err)
	}
	s.Close()
	_, err = EmptyTensor(DType(99), []int64{2})
	mustCode(t, err, ErrInvalidArgument, "")
	_, err = EmptyTensor(Float32, []int64{-1})
	mustCode(t, err, ErrInvalidArgument, "")

	r, err := NewRegistry()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var kept *ModelBuilder
	err = r.RegisterModel("tests.go.Keep", func(kw *Kwargs, loading bool, model *ModelBuilder) error {
		kept = model
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	c, err := r.NewContainer()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Initialize(Spec{Model: "tests.go.Keep"}); err != nil {
		t.Fatal(err)
	}
	mustCode(t, kept.SetThreadSafe(), ErrUsage, "after the factory returned")
}

// corruptCopy writes a copy of a golden file with one byte of the tensor
// name's data flipped, and returns its path and the element that changed.
func corruptCopy(t *testing.T, golden, name string) (string, int) {
	t.Helper()
	data, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	ckpt, err := OpenCheckpoint(golden)
	if err != nil {
		t.Fatal(err)
	}
	tensor, _, err := ckpt.ReadBytes(MemberModel, name)
	ckpt.Close()
	if err != nil {
		t.Fatal(err)
	}
	at := bytes.Index(data, tensor)
	if at < 0 || bytes.Index(data[at+1:], tensor) >= 0 {
		t.Fatalf("%s's bytes are not stored once, uncompressed, in %s", name, golden)
	}
	const flipped = 9 // element 2, its second byte (mantissa)
	data[at+flipped] ^= 0x10
	return writeFile(t, t.TempDir(), "corrupt.zip", data), flipped / 4
}

// A flipped bit in tensor data is refused by default (ErrFormat) and
// loaded with SkipVerify; every loader takes the options.
func TestLoadOptionsSkipVerify(t *testing.T) {
	golden := goldenFile(t, "rust_mlp_inference.zip")
	path, element := corruptCopy(t, golden, "fc1.weight")
	ckpt, err := OpenCheckpoint(golden)
	if err != nil {
		t.Fatal(err)
	}
	want, _, err := ckpt.ReadFloat32(MemberModel, "fc1.weight")
	ckpt.Close()
	if err != nil {
		t.Fatal(err)
	}
	// checkFlipped: exactly the flipped element differs from the golden.
	checkFlipped := func(what string, got []float32) {
		t.Helper()
		for i := range want {
			if (math.Float32bits(got[i]) != math.Float32bits(want[i])) != (i == element) {
				t.Fatalf("%s: fc1.weight %v, golden %v (element %d flipped)", what, got, want, element)
			}
		}
	}

	_, _, err = LoadModel(path, LoadOptions{})
	mustCode(t, err, ErrFormat, "")
	_, _, err = LoadModel(path, LoadOptions{Copy: true})
	mustCode(t, err, ErrFormat, "")
	_, _, err = LoadContainer(path)
	mustCode(t, err, ErrFormat, "")
	_, _, err = LoadContainerWith(path, LoadOptions{})
	mustCode(t, err, ErrFormat, "")
	_, err = OpenCheckpoint(path)
	mustCode(t, err, ErrFormat, "")
	_, err = OpenCheckpointWith(path, LoadOptions{})
	mustCode(t, err, ErrFormat, "")

	for _, opts := range []LoadOptions{{SkipVerify: true}, {SkipVerify: true, Copy: true}} {
		m, _, err := LoadModel(path, opts)
		if err != nil {
			t.Fatalf("LoadModel %+v: %v", opts, err)
		}
		got, _, err := m.StateFloat32("fc1.weight")
		m.Close()
		if err != nil {
			t.Fatal(err)
		}
		checkFlipped(fmt.Sprintf("LoadModel %+v", opts), got)

		c, _, err := LoadContainerWith(path, opts)
		if err != nil {
			t.Fatalf("LoadContainerWith %+v: %v", opts, err)
		}
		got, _, err = c.StateFloat32("fc1.weight")
		c.Close()
		if err != nil {
			t.Fatal(err)
		}
		checkFlipped(fmt.Sprintf("LoadContainerWith %+v", opts), got)
	}
	ckpt, err = OpenCheckpointWith(path, LoadOptions{SkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	got, _, err := ckpt.ReadFloat32(MemberModel, "fc1.weight")
	ckpt.Close()
	if err != nil {
		t.Fatal(err)
	}
	checkFlipped("OpenCheckpointWith", got)

	// Restore: refused by default, nothing changed; applied with
	// SkipVerify.
	c, _, err := LoadContainer(golden)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.Restore(path)
	mustCode(t, err, ErrFormat, "")
	_, err = c.RestoreWith(path, LoadOptions{})
	mustCode(t, err, ErrFormat, "")
	if got, _, err := c.StateFloat32("fc1.weight"); err != nil || !sameBits(got, want) {
		t.Fatalf("after a refused restore: %v %v", got, err)
	}
	if _, err := c.RestoreWith(path, LoadOptions{SkipVerify: true}); err != nil {
		t.Fatal(err)
	}
	got, _, err = c.StateFloat32("fc1.weight")
	if err != nil {
		t.Fatal(err)
	}
	checkFlipped("RestoreWith", got)

	// The Registry's loaders take options too.
	r, err := NewRegistry()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	_, _, err = r.LoadModel(path, LoadOptions{})
	mustCode(t, err, ErrFormat, "")
	_, _, err = r.LoadContainerWith(path, LoadOptions{})
	mustCode(t, err, ErrFormat, "")
	m, _, err := r.LoadModel(path, LoadOptions{SkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	m.Close()
	rc, _, err := r.LoadContainerWith(path, LoadOptions{SkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	rc.Close()
}

// With Copy, a model and a container own their tensors: the file can be
// truncated and rewritten under them (a mapping would fault).
func TestLoadOptionsCopy(t *testing.T) {
	golden := goldenFile(t, "rust_mlp_inference.zip")
	rec := readSidecar(t, golden).Forward
	data, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	path := writeFile(t, t.TempDir(), "model.zip", data)
	ref, _, err := LoadModel(golden, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer ref.Close()
	want, _, err := ref.Forward(float32s(rec.Input), rec.InputShape)
	if err != nil {
		t.Fatal(err)
	}
	m, _, err := LoadModel(path, LoadOptions{Copy: true})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	c, _, err := LoadContainerWith(path, LoadOptions{Copy: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := os.Truncate(path, 0); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, bytes.Repeat([]byte{0xff}, len(data)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, 10); err != nil {
		t.Fatal(err)
	}
	got, _, err := m.Forward(float32s(rec.Input), rec.InputShape)
	if err != nil || !sameBits(got, want) {
		t.Fatalf("Model after truncation: %v %v, want %v", got, err, want)
	}
	got, _, err = c.Forward(float32s(rec.Input), rec.InputShape)
	if err != nil || !sameBits(got, want) {
		t.Fatalf("Container after truncation: %v %v, want %v", got, err, want)
	}
	for _, name := range []string{"fc1.weight", "hidden_layers.4.bias"} {
		a, _, err := m.StateFloat32(name)
		if err != nil {
			t.Fatal(err)
		}
		b, _, err := ref.StateFloat32(name)
		if err != nil || !sameBits(a, b) {
			t.Fatalf("%s: %v, want %v (%v)", name, a, b, err)
		}
	}
}

// Models left to the finalizers, built-in and Go, release everything:
// the library gives back every Go handle.
func TestModelFinalizers(t *testing.T) {
	base := liveHandles.Load()
	path := goldenFile(t, "rust_mlp_inference.zip")
	rounds := 200
	if testing.Short() {
		rounds = 40
	}
	probe := &concurrencyProbe{}
	var loads atomic.Int64
	r, err := NewRegistry()
	if err != nil {
		t.Fatal(err)
	}
	if err := r.RegisterModel("tests.go.Probe", probeFactory(probe, true, &loads)); err != nil {
		t.Fatal(err)
	}
	goPath := saveProbeModel(t, r, "tests.go.Probe")
	for i := range rounds {
		m, _, err := LoadModel(path, LoadOptions{Copy: i%3 == 0})
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := m.Forward([]float32{1, 2, 3, 4}, []int64{1, 4}); err != nil {
			t.Fatal(err)
		}
		g, _, err := r.LoadModel(goPath, LoadOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := g.Forward([]float32{1, 2, 3}, []int64{1, 3}); err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 {
			m.Close()
			g.Close()
		}
		if i%50 == 0 {
			runtime.GC()
		}
	}
	r.Close()
	waitForHandles(t, base)
}
