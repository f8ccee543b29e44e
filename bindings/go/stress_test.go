package pytorchsaver

import (
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"testing"
)

// Thousands of handles of every kind opened and closed, and as many left
// to the finalizers, with the garbage collector running in between.
func TestManyHandles(t *testing.T) {
	path := goldenFile(t, "rust_mlp_inference.zip")
	rounds := 2000
	if testing.Short() {
		rounds = 200
	}
	for i := range rounds {
		ckpt, err := OpenCheckpoint(path)
		if err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 {
			if _, _, err := ckpt.ReadFloat32(MemberModel, "fc1.bias"); err != nil {
				t.Fatal(err)
			}
			ckpt.Close()
		}
		x, err := NewTensorOf([]float32{1, 2, 3}, []int64{3})
		if err != nil {
			t.Fatal(err)
		}
		if i%2 == 1 {
			x.Close()
		}
		c, err := NewContainer()
		if err != nil {
			t.Fatal(err)
		}
		if i%3 == 0 {
			c.Close()
		}
		r, err := NewRegistry()
		if err != nil {
			t.Fatal(err)
		}
		if i%4 == 0 {
			r.Close()
		}
		if i%500 == 0 {
			runtime.GC()
		}
	}
	for i := range rounds / 10 {
		c, _, err := LoadContainer(path)
		if err != nil {
			t.Fatal(err)
		}
		_, w, err := c.Parameter(0)
		if err != nil {
			t.Fatal(err)
		}
		m, _, err := LoadModel(path, LoadOptions{Copy: i%4 == 1})
		if err != nil {
			t.Fatal(err)
		}
		ws, err := m.StateTensor("fc1.weight")
		if err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 {
			w.Close()
			c.Close()
			ws.Close()
			m.Close()
		}
	}
	runtime.GC()
	runtime.GC()
}

// One Checkpoint read from many goroutines at once gives every reader the
// same bytes.
func TestSharedCheckpoint(t *testing.T) {
	ckpt, err := OpenCheckpoint(goldenFile(t, "rust_mlp_adam_warm_restarts_checkpoint.zip"))
	if err != nil {
		t.Fatal(err)
	}
	defer ckpt.Close()
	want := map[string][]byte{}
	for _, m := range []Member{MemberModel, MemberOptimizer} {
		names, err := ckpt.TensorNames(m)
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range names {
			data, _, err := ckpt.ReadBytes(m, name)
			if err != nil {
				t.Fatal(err)
			}
			want[fmt.Sprint(m, "/", name)] = data
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 25 {
				for _, m := range []Member{MemberModel, MemberOptimizer} {
					names, err := ckpt.TensorNames(m)
					if err != nil {
						errs <- err
						return
					}
					for _, name := range names {
						data, _, err := ckpt.ReadBytes(m, name)
						if err != nil {
							errs <- err
							return
						}
						if !slices.Equal(data, want[fmt.Sprint(m, "/", name)]) {
							errs <- fmt.Errorf("%v %s: bytes differ", m, name)
							return
						}
						t, err := ckpt.Tensor(m, name)
						if err != nil {
							errs <- err
							return
						}
						t.Close()
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// One Container used from many goroutines at once: every call is
// serialized, and every forward gives the same output.
func TestSharedContainer(t *testing.T) {
	path := goldenFile(t, "rust_mlp_inference.zip")
	want := readSidecar(t, path).Forward
	c, _, err := LoadContainer(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	dir := t.TempDir()
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 40 {
				out, _, err := c.Forward(float32s(want.Input), want.InputShape)
				if err != nil {
					errs <- err
					return
				}
				for j, v := range float32s(want.Output) {
					if !closeEnough(out[j], v) {
						errs <- fmt.Errorf("goroutine %d: output %v", g, out)
						return
					}
				}
				switch i % 4 {
				case 0:
					if _, _, err := c.StateFloat32("fc1.weight"); err != nil {
						errs <- err
						return
					}
				case 1:
					if _, err := c.ParameterNames(); err != nil {
						errs <- err
						return
					}
				case 2:
					if g == 0 {
						if _, err := c.SaveInference(dir, fmt.Sprint("g", g), nil); err != nil {
							errs <- err
							return
						}
					}
				case 3:
					// No optimizer in an inference file.
					if err := c.Step(); !errors.Is(err, ErrUsage) {
						errs <- fmt.Errorf("Step: %v", err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// Close racing with calls on other goroutines: each call either works or
// fails with ErrUsage; nothing crashes.
func TestCloseRacesWithUse(t *testing.T) {
	path := goldenFile(t, "rust_mlp_inference.zip")
	input := []float32{1, 2, 3, 4}
	for range 20 {
		ckpt, err := OpenCheckpoint(path)
		if err != nil {
			t.Fatal(err)
		}
		c, _, err := LoadContainer(path)
		if err != nil {
			t.Fatal(err)
		}
		x, err := NewTensorOf(input, []int64{1, 4})
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		errs := make(chan error, 64)
		use := func(f func() error) {
			defer wg.Done()
			for range 20 {
				if err := f(); err != nil && !errors.Is(err, ErrUsage) {
					errs <- err
					return
				}
			}
		}
		wg.Add(4)
		go use(func() error { _, _, err := ckpt.ReadFloat32(MemberModel, "fc1.weight"); return err })
		go use(func() error { _, _, err := c.Forward(input, []int64{1, 4}); return err })
		go use(func() error {
			y, err := c.ForwardTensor(x)
			y.Close()
			return err
		})
		go use(func() error { _, err := x.Float32s(); return err })
		ckpt.Close()
		c.Close()
		x.Close()
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
	}
}
