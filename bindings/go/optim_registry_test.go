package pytorchsaver

import (
	"fmt"
	"math"
	"slices"
	"testing"
)

const signMomentum = "my_project.SignMomentum"

// signMomentumClass is sign descent on a momentum buffer, its step size
// decaying as lr / sqrt(step): m = beta m + (1 - beta) g;
// p -= lr / sqrt(step) sign(m), in float32 on Go slices.
func signMomentumClass() OptimizerClass {
	return OptimizerClass{
		Hyperparameters: []Hyperparameter{{"lr", 0.01}, {"beta", 0.9}},
		StateKeys:       []OptimizerStateKey{{Name: "momentum_buffer"}, {Name: "step", Rank0: true}},
		CheckGroup: func(g OptimizerGroup) error {
			beta, err := g.Float("beta")
			if err != nil {
				return err
			}
			if beta < 0 || beta >= 1 {
				return fmt.Errorf("beta must be in [0, 1), got %v", beta)
			}
			return nil
		},
		Step: func(g OptimizerGroup, param, grad *Tensor, state OptimizerState) error {
			lr, err := g.LR()
			if err != nil {
				return err
			}
			beta, err := g.Float("beta")
			if err != nil {
				return err
			}
			p, err := param.Float32s()
			if err != nil {
				return err
			}
			gr, err := grad.Float32s()
			if err != nil {
				return err
			}
			buf, err := state.Get("momentum_buffer")
			if err != nil {
				return err
			}
			counter, err := state.Get("step")
			if err != nil {
				return err
			}
			if buf == nil {
				shape, err := param.Shape()
				if err != nil {
					return err
				}
				if buf, err = NewTensorOf(make([]float32, len(p)), shape); err != nil {
					return err
				}
				if counter, err = NewTensorOf([]float32{0}, nil); err != nil {
					return err
				}
				if err := state.Set("momentum_buffer", buf); err != nil {
					return err
				}
				if err := state.Set("step", counter); err != nil {
					return err
				}
			}
			defer buf.Close()
			defer counter.Close()
			m, err := buf.Float32s()
			if err != nil {
				return err
			}
			s, err := counter.Float32s()
			if err != nil {
				return err
			}
			s[0]++
			scale := float32(lr / math.Sqrt(float64(s[0])))
			for i := range p {
				m[i] = m[i]*float32(beta) + gr[i]*float32(1-beta)
				switch {
				case m[i] > 0:
					p[i] -= scale
				case m[i] < 0:
					p[i] += scale
				}
			}
			if err := buf.SetFloat32s(m); err != nil {
				return err
			}
			if err := counter.SetFloat32s(s); err != nil {
				return err
			}
			return param.SetFloat32s(p)
		},
	}
}

func signMomentumRegistry(t *testing.T) *Registry {
	t.Helper()
	r, err := NewRegistry()
	if err != nil {
		t.Fatal(err)
	}
	if err := r.RegisterOptimizer(signMomentum, signMomentumClass()); err != nil {
		t.Fatal(err)
	}
	return r
}

// trainGo adds the gradients of each step (the same in every run) to
// every parameter, then steps the optimizer and the scheduler.
func trainGo(t *testing.T, c *Container, from, steps int) {
	t.Helper()
	n, err := c.ParameterCount()
	if err != nil {
		t.Fatal(err)
	}
	for step := from; step < from+steps; step++ {
		if err := c.ZeroGrad(); err != nil {
			t.Fatal(err)
		}
		for i := range n {
			_, param, err := c.Parameter(i)
			if err != nil {
				t.Fatal(err)
			}
			info, err := param.Info()
			if err != nil {
				t.Fatal(err)
			}
			g := make([]float32, info.NumBytes/4)
			for j := range g {
				g[j] = float32(math.Sin(0.37*float64(j) + 0.61*float64(step) + float64(i)))
			}
			grad, err := NewTensorOf(g, info.Shape)
			if err != nil {
				t.Fatal(err)
			}
			if err := param.Backward(grad); err != nil {
				t.Fatal(err)
			}
			grad.Close()
			param.Close()
		}
		if err := c.Step(); err != nil {
			t.Fatal(err)
		}
		if err := c.SchedulerStep(); err != nil {
			t.Fatal(err)
		}
	}
}

func signMomentumSpec(kwargs map[string]any) Spec {
	if kwargs == nil {
		kwargs = map[string]any{}
	}
	return Spec{
		Model:           "pytorch_saver.models.MLP",
		ModelKwargs:     map[string]any{"in_dim": 4, "hidden_dim": 8, "n_classes": 3},
		Optimizer:       signMomentum,
		OptimizerKwargs: kwargs,
		Scheduler:       "torch.optim.lr_scheduler.StepLR",
		SchedulerKwargs: map[string]any{"step_size": 5, "gamma": 0.5},
	}
}

// sameMember fails unless two files hold the same tensors in member,
// byte for byte.
func sameMember(t *testing.T, a, b string, member Member) {
	t.Helper()
	ca, err := OpenCheckpoint(a)
	if err != nil {
		t.Fatal(err)
	}
	defer ca.Close()
	cb, err := OpenCheckpoint(b)
	if err != nil {
		t.Fatal(err)
	}
	defer cb.Close()
	names, err := ca.TensorNames(member)
	if err != nil {
		t.Fatal(err)
	}
	other, err := cb.TensorNames(member)
	if err != nil || !slices.Equal(names, other) || len(names) == 0 {
		t.Fatalf("%v tensors %v and %v (%v)", member, names, other, err)
	}
	for _, name := range names {
		x, _, err := ca.ReadBytes(member, name)
		if err != nil {
			t.Fatal(err)
		}
		y, _, err := cb.ReadBytes(member, name)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(x, y) {
			t.Errorf("%v tensor %s differs", member, name)
		}
	}
}

// A Go optimizer class trains, saves with its class, kwargs and state,
// loads into a fresh container over the same registry and trains on:
// bit-identical to an uninterrupted run.
func TestRegisteredOptimizerResumesBitForBit(t *testing.T) {
	dir := t.TempDir()
	r := signMomentumRegistry(t)
	defer r.Close()
	if ok, err := r.ContainsOptimizer(signMomentum); err != nil || !ok {
		t.Fatalf("ContainsOptimizer = %v, %v", ok, err)
	}
	kwargs := map[string]any{"lr": 0.05, "beta": 0.8}

	// Both runs start from the same parameters (Go has no seed): the
	// second loads them from a file saved before any step.
	straight, err := r.NewContainer()
	if err != nil {
		t.Fatal(err)
	}
	defer straight.Close()
	if err := straight.Initialize(signMomentumSpec(kwargs)); err != nil {
		t.Fatal(err)
	}
	init, err := straight.Save(dir, "init", map[string]any{"step": 0})
	if err != nil {
		t.Fatal(err)
	}
	first, _, err := r.LoadContainer(init)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	trainGo(t, straight, 0, 24)
	straightPath, err := straight.Save(dir, "straight", map[string]any{"step": 24})
	if err != nil {
		t.Fatal(err)
	}
	trainGo(t, first, 0, 12)
	half, err := first.Save(dir, "half", map[string]any{"step": 12})
	if err != nil {
		t.Fatal(err)
	}

	ckpt, err := OpenCheckpoint(half)
	if err != nil {
		t.Fatal(err)
	}
	if ckpt.OptimizerClass() != signMomentum {
		t.Errorf("optimizer class %q", ckpt.OptimizerClass())
	}
	if kw := ckpt.OptimizerKwargs(); kw["lr"] != 0.05 || kw["beta"] != 0.8 || len(kw) != 2 {
		t.Errorf("optimizer kwargs %v", kw)
	}
	step, _, err := ckpt.ReadFloat32(MemberOptimizer, "state.0.step")
	if err != nil || !slices.Equal(step, []float32{12}) {
		t.Errorf("state.0.step = %v, %v", step, err)
	}
	ckpt.Close()

	resumed, _, err := r.LoadContainer(half)
	if err != nil {
		t.Fatal(err)
	}
	defer resumed.Close()
	trainGo(t, resumed, 12, 12)
	resumedPath, err := resumed.Save(dir, "resumed", map[string]any{"step": 24})
	if err != nil {
		t.Fatal(err)
	}
	sameMember(t, straightPath, resumedPath, MemberModel)
	sameMember(t, straightPath, resumedPath, MemberOptimizer)
	lrA, errA := straight.LR(0)
	lrB, errB := resumed.LR(0)
	if errA != nil || errB != nil || lrA != lrB || lrA != 0.05/16 {
		t.Errorf("LR %v %v (%v, %v)", lrA, lrB, errA, errB)
	}

	// A registry without the class refuses the file, listing its own.
	other, err := NewRegistry()
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if err := other.RegisterOptimizer("my_project.Other", signMomentumClass()); err != nil {
		t.Fatal(err)
	}
	_, _, err = other.LoadContainer(half)
	mustCode(t, err, ErrUnknownName, "my_project.Other")
}

func TestRegisteredOptimizerErrors(t *testing.T) {
	r := signMomentumRegistry(t)
	defer r.Close()
	mustCode(t, r.RegisterOptimizer(signMomentum, signMomentumClass()), ErrDuplicateName, signMomentum)
	mustCode(t, r.RegisterOptimizer("torch.optim.SignMomentum", signMomentumClass()), ErrDuplicateName, "torch.optim")
	noLR := signMomentumClass()
	noLR.Hyperparameters = []Hyperparameter{{"eta", 0.1}}
	mustCode(t, r.RegisterOptimizer("my_project.NoLR", noLR), ErrInvalidKwargs, `"lr"`)
	failing := signMomentumClass()
	failing.Step = func(OptimizerGroup, *Tensor, *Tensor, OptimizerState) error {
		return fmt.Errorf("the step was asked to fail")
	}
	if err := r.RegisterOptimizer("my_project.Failing", failing); err != nil {
		t.Fatal(err)
	}
	panicking := signMomentumClass()
	panicking.Step = func(OptimizerGroup, *Tensor, *Tensor, OptimizerState) error { panic("boom") }
	if err := r.RegisterOptimizer("my_project.Panicking", panicking); err != nil {
		t.Fatal(err)
	}

	c, err := r.NewContainer()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	mustCode(t, c.Initialize(signMomentumSpec(map[string]any{"momentum": 0.9})), ErrInvalidKwargs, "momentum")
	mustCode(t, c.Initialize(signMomentumSpec(map[string]any{"beta": true})), ErrInvalidKwargs, `"beta"`)
	mustCode(t, c.Initialize(signMomentumSpec(map[string]any{"beta": 1.5})), ErrInvalidKwargs, "beta must be in [0, 1)")
	spec := signMomentumSpec(nil)
	spec.Optimizer = "my_project.Nobody"
	mustCode(t, c.Initialize(spec), ErrUnknownName, signMomentum)

	for name, needle := range map[string]string{
		"my_project.Failing":   "the step was asked to fail",
		"my_project.Panicking": "panic in the step of my_project.Panicking: boom",
	} {
		spec := signMomentumSpec(nil)
		spec.Optimizer = name
		spec.Scheduler = ""
		spec.SchedulerKwargs = nil
		if err := c.Initialize(spec); err != nil {
			t.Fatal(err)
		}
		_, param, err := c.Parameter(0)
		if err != nil {
			t.Fatal(err)
		}
		info, _ := param.Info()
		grad, err := NewTensorOf(make([]float32, info.NumBytes/4), info.Shape)
		if err != nil {
			t.Fatal(err)
		}
		if err := param.Backward(grad); err != nil {
			t.Fatal(err)
		}
		mustCode(t, c.Step(), ErrCallback, needle)
	}
}

// The class's handle is released once the registry and every container
// holding it are closed; a group or state kept past its step fails.
func TestRegisteredOptimizerHandles(t *testing.T) {
	base := liveHandles.Load()
	r, err := NewRegistry()
	if err != nil {
		t.Fatal(err)
	}
	var kept OptimizerState
	var keptGroup OptimizerGroup
	class := signMomentumClass()
	step := class.Step
	class.Step = func(g OptimizerGroup, p, gr *Tensor, s OptimizerState) error {
		kept, keptGroup = s, g
		return step(g, p, gr, s)
	}
	if err := r.RegisterOptimizer(signMomentum, class); err != nil {
		t.Fatal(err)
	}
	if got := liveHandles.Load(); got != base+1 {
		t.Fatalf("%d handles after registering, want %d", got, base+1)
	}
	c, err := r.NewContainer()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Initialize(signMomentumSpec(nil)); err != nil {
		t.Fatal(err)
	}
	r.Close() // the container keeps the class
	trainGo(t, c, 0, 2)
	_, err = kept.Get("step")
	mustCode(t, err, ErrUsage, "after the call")
	_, err = keptGroup.LR()
	mustCode(t, err, ErrUsage, "after the call")
	c.Close()
	waitForHandles(t, base)
}
