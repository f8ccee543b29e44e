package pytorchsaver

import (
	"errors"
	"slices"
	"testing"
)

// The regression of the LBFGS tests: y = 1.5 x0 - 2 x1 + 0.5 x2 + 0.25 on
// a fixed grid, for torch.nn.Linear(3, 1).
func regressionData() ([][3]float32, []float32) {
	xs := make([][3]float32, 16)
	ys := make([]float32, 16)
	for i := range xs {
		xs[i] = [3]float32{float32(i%4) - 1.5, float32(i/4)*0.5 - 0.75, float32((i*7)%5)*0.3 - 0.6}
		ys[i] = 1.5*xs[i][0] - 2*xs[i][1] + 0.5*xs[i][2] + 0.25
	}
	return xs, ys
}

func lbfgsContainer(t *testing.T) *Container {
	t.Helper()
	c, err := NewContainer()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	err = c.Initialize(Spec{
		Model:           "torch.nn.Linear",
		ModelKwargs:     map[string]any{"in_features": 3, "out_features": 1},
		Optimizer:       "torch.optim.LBFGS",
		OptimizerKwargs: map[string]any{"line_search_fn": "strong_wolfe", "history_size": 3, "max_iter": 5},
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// mseClosure computes the MSE and its gradient in Go and hands the
// gradient over with SetGrad. weight and bias come from Parameter.
func mseClosure(weight, bias *Tensor) func() (float64, error) {
	xs, ys := regressionData()
	return func() (float64, error) {
		w, err := weight.Float32s()
		if err != nil {
			return 0, err
		}
		b, err := bias.Float32s()
		if err != nil {
			return 0, err
		}
		gw, gb := make([]float32, 3), make([]float32, 1)
		var sum float32
		n := float32(len(xs))
		for i, x := range xs {
			e := w[0]*x[0] + w[1]*x[1] + w[2]*x[2] + b[0] - ys[i]
			sum += e * e
			for j := range gw {
				gw[j] += 2 * e * x[j] / n
			}
			gb[0] += 2 * e / n
		}
		for _, g := range []struct {
			param  *Tensor
			values []float32
			shape  []int64
		}{{weight, gw, []int64{1, 3}}, {bias, gb, []int64{1}}} {
			grad, err := NewTensorOf(g.values, g.shape)
			if err != nil {
				return 0, err
			}
			err = g.param.SetGrad(nil)
			if err == nil {
				err = g.param.SetGrad(grad)
			}
			_ = grad.Close()
			if err != nil {
				return 0, err
			}
		}
		return float64(sum / n), nil
	}
}

func parameters(t *testing.T, c *Container) (*Tensor, *Tensor) {
	t.Helper()
	var weight, bias *Tensor
	for i := 0; i < 2; i++ {
		name, p, err := c.Parameter(i)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = p.Close() })
		if name == "weight" {
			weight = p
		} else {
			bias = p
		}
	}
	return weight, bias
}

func trainLBFGS(t *testing.T, c *Container, steps int) []float64 {
	t.Helper()
	closure := mseClosure(parameters(t, c))
	var losses []float64
	for s := 0; s < steps; s++ {
		loss, err := c.StepClosure(closure)
		if err != nil {
			t.Fatal(err)
		}
		losses = append(losses, loss)
	}
	return losses
}

func paramValues(t *testing.T, c *Container) []float32 {
	w, b := parameters(t, c)
	wv, err := w.Float32s()
	if err != nil {
		t.Fatal(err)
	}
	bv, err := b.Float32s()
	if err != nil {
		t.Fatal(err)
	}
	return append(wv, bv...)
}

func TestLBFGSClosureTrainsAndResumesBitForBit(t *testing.T) {
	dir := t.TempDir()
	straight := lbfgsContainer(t)
	if err := straight.Step(); !errors.Is(err, ErrUsage) {
		t.Fatalf("Step without a closure: %v, want ErrUsage", err)
	}
	initPath, err := straight.Save(dir, "init", nil)
	if err != nil {
		t.Fatal(err)
	}
	losses := trainLBFGS(t, straight, 10)
	if !(losses[9] < losses[0]*1e-3) {
		t.Fatalf("the loss did not fall: %v", losses)
	}

	first, _, err := LoadContainer(initPath)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	resumedLosses := trainLBFGS(t, first, 5)
	halfPath, err := first.Save(dir, "half", nil)
	if err != nil {
		t.Fatal(err)
	}
	resumed, _, err := LoadContainer(halfPath)
	if err != nil {
		t.Fatal(err)
	}
	defer resumed.Close()
	resumedLosses = append(resumedLosses, trainLBFGS(t, resumed, 5)...)
	if !slices.Equal(losses, resumedLosses) {
		t.Fatalf("losses: uninterrupted %v, resumed %v", losses, resumedLosses)
	}
	if a, b := paramValues(t, straight), paramValues(t, resumed); !slices.Equal(a, b) {
		t.Fatalf("parameters: uninterrupted %v, resumed %v", a, b)
	}
}

var errNoBatches = errors.New("no more batches")

func TestLBFGSClosureErrorsComeBackAsThemselves(t *testing.T) {
	c := lbfgsContainer(t)
	_, err := c.StepClosure(func() (float64, error) { return 0, errNoBatches })
	if err != errNoBatches {
		t.Fatalf("got %v, want the closure's own error", err)
	}
	// Inside the closure the container refuses calls instead of waiting.
	var inner error
	closure := mseClosure(parameters(t, c))
	_, err = c.StepClosure(func() (float64, error) {
		inner = c.ZeroGrad()
		return closure()
	})
	if err != nil || !errors.Is(inner, ErrUsage) {
		t.Fatalf("step %v; ZeroGrad inside the closure %v, want ErrUsage", err, inner)
	}
	func() {
		defer func() {
			if p := recover(); p != "boom" {
				t.Fatalf("recovered %v, want the closure's panic", p)
			}
		}()
		_, _ = c.StepClosure(func() (float64, error) { panic("boom") })
	}()
	// The container works after all of that.
	if _, err := c.StepClosure(closure); err != nil {
		t.Fatal(err)
	}
}
