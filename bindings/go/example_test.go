package pytorchsaver_test

import (
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"sync"

	pytorchsaver "github.com/pytorch-saver/pytorch-saver/bindings/go"
)

// A checkpoint's metadata and tensors, read without building the model.
func ExampleOpenCheckpoint() {
	ckpt, err := pytorchsaver.OpenCheckpoint("../../tests/golden/v1/rust_mlp_inference.zip")
	if err != nil {
		log.Fatal(err)
	}
	defer ckpt.Close()
	fmt.Println(ckpt.Kind(), ckpt.ModelClass(), ckpt.ModelKwargs())
	names, err := ckpt.TensorNames(pytorchsaver.MemberModel)
	if err != nil {
		log.Fatal(err)
	}
	for _, name := range names[:2] {
		info, err := ckpt.TensorInfo(pytorchsaver.MemberModel, name)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(name, info.DType, info.Shape)
	}
	bias, shape, err := ckpt.ReadFloat32(pytorchsaver.MemberModel, "hidden_layers.4.bias")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%v %.4f\n", shape, bias)
	// Output:
	// inference pytorch_saver.models.MLP map[hidden_dim:8 in_dim:4 n_classes:3 n_layers:3]
	// fc1.bias F32 [8]
	// fc1.weight F32 [8 4]
	// [3] [0.1699 0.1249 -0.0850]
}

// A model loaded by name from its file, run on a batch of two examples.
func ExampleLoadContainer() {
	model, metadata, err := pytorchsaver.LoadContainer("../../tests/golden/v1/rust_mlp_inference.zip")
	if err != nil {
		log.Fatal(err)
	}
	defer model.Close()
	fmt.Println(metadata["model_kwargs"])

	input := []float32{-1, -0.7142857, -0.4285714, -0.1428571, 0.1428571, 0.4285714, 0.7142857, 1}
	output, shape, err := model.Forward(input, []int64{2, 4})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(shape)
	for row := range shape[0] {
		scores := output[row*shape[1] : (row+1)*shape[1]]
		fmt.Printf("%.3f\n", scores)
	}
	// Output:
	// map[hidden_dim:8 in_dim:4 n_classes:3 n_layers:3]
	// [2 3]
	// [0.083 0.043 -0.078]
	// [0.076 0.061 -0.077]
}

// A model loaded for inference, shared by goroutines: Forward calls on
// one Model run in parallel.
func ExampleLoadModel() {
	model, metadata, err := pytorchsaver.LoadModel("../../tests/golden/v1/rust_mlp_inference.zip", pytorchsaver.LoadOptions{})
	if err != nil {
		log.Fatal(err)
	}
	defer model.Close()
	fmt.Println(model.Class(), model.Concurrent(), metadata["model_kwargs"])

	inputs := [][]float32{{-1, -0.7142857, -0.4285714, -0.1428571}, {0.1428571, 0.4285714, 0.7142857, 1}}
	outputs := make([][]float32, len(inputs))
	var wg sync.WaitGroup
	for i, input := range inputs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, _, err := model.Forward(input, []int64{1, 4})
			if err != nil {
				log.Fatal(err)
			}
			outputs[i] = out
		}()
	}
	wg.Wait()
	for _, out := range outputs {
		fmt.Printf("%.3f\n", out)
	}
	// Output:
	// pytorch_saver.models.MLP true map[hidden_dim:8 in_dim:4 n_classes:3 n_layers:3]
	// [0.083 0.043 -0.078]
	// [0.076 0.061 -0.077]
}

// Python's ModelContainer from Go: build a model with its optimizer and
// scheduler, save a checkpoint with metadata, load it back by name.
func ExampleContainer_Save() {
	dir, err := os.MkdirTemp("", "pytorch-saver-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	c, err := pytorchsaver.NewContainer()
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	err = c.Initialize(pytorchsaver.Spec{
		Model:           "pytorch_saver.models.MLP",
		ModelKwargs:     map[string]any{"in_dim": 4, "hidden_dim": 32, "n_classes": 3},
		Optimizer:       "torch.optim.Adam",
		OptimizerKwargs: map[string]any{"lr": 0.001},
		Scheduler:       "torch.optim.lr_scheduler.StepLR",
		SchedulerKwargs: map[string]any{"step_size": 1, "gamma": 0.5},
	})
	if err != nil {
		log.Fatal(err)
	}
	if err := c.SchedulerStep(); err != nil {
		log.Fatal(err)
	}
	path, err := c.Save(dir, "tutorial", map[string]any{"loss": 0.55, "epoch": 5})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(filepath.Base(path)[:len("tutorial_checkpoint_")])

	loaded, metadata, err := pytorchsaver.LoadContainer(path)
	if err != nil {
		log.Fatal(err)
	}
	defer loaded.Close()
	lr, err := loaded.LR(0)
	if err != nil {
		log.Fatal(err)
	}
	meta, err := pytorchsaver.MetadataFromMap(metadata)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(meta.User["loss"], meta.User["epoch"], meta.OptimizerKwargs, lr)
	// Output:
	// tutorial_checkpoint_
	// 0.55 5 map[lr:0.001] 0.0005
}

// Errors carry a stable code, matched with errors.Is, and a finer kind:
// for a file the reader refuses, the check that failed.
func ExampleError() {
	_, err := pytorchsaver.OpenCheckpoint("no_such_checkpoint.zip")
	fmt.Println(errors.Is(err, pytorchsaver.ErrIO), errors.Is(err, pytorchsaver.ErrFormat))
	var e *pytorchsaver.Error
	if errors.As(err, &e) {
		fmt.Println(e.Code, e.Kind)
	}

	dir, err := os.MkdirTemp("", "pytorch-saver-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	data, err := os.ReadFile("../../tests/golden/v1/rust_mlp_inference.zip")
	if err != nil {
		log.Fatal(err)
	}
	truncated := filepath.Join(dir, "truncated.zip")
	if err := os.WriteFile(truncated, data[:len(data)-1], 0o644); err != nil {
		log.Fatal(err)
	}
	_, err = pytorchsaver.OpenCheckpoint(truncated)
	if errors.As(err, &e) {
		fmt.Println(e.Code, e.Kind)
	}
	// Output:
	// true false
	// I/O error Io
	// invalid checkpoint NoEndRecord
}

// A model written in Go: y = x * weight, with the weight a parameter the
// container saves, loads and (given gradients) trains.
func ExampleRegistry_RegisterModel() {
	registry, err := pytorchsaver.NewRegistry()
	if err != nil {
		log.Fatal(err)
	}
	defer registry.Close()
	err = registry.RegisterModel("example.Scale", func(kw *pytorchsaver.Kwargs, loading bool, model *pytorchsaver.ModelBuilder) error {
		n, err := kw.Int("n")
		if err != nil {
			return err
		}
		var weight *pytorchsaver.Tensor
		if loading {
			// The values come from the file: leave the memory untouched.
			weight, err = pytorchsaver.EmptyTensor(pytorchsaver.Float32, []int64{n})
		} else {
			init := make([]float32, n)
			for i := range init {
				init[i] = float32(i + 1)
			}
			weight, err = pytorchsaver.NewTensorOf(init, []int64{n})
		}
		if err != nil {
			return err
		}
		if err := model.AddParameter("weight", weight); err != nil {
			return err
		}
		// The forward only reads the weight: a Model may run it on
		// several goroutines at once.
		if err := model.SetThreadSafe(); err != nil {
			return err
		}
		return model.SetForward(func(x []float32, shape []int64, train bool) ([]float32, []int64, error) {
			w, err := weight.Float32s() // the current values
			if err != nil {
				return nil, nil, err
			}
			if len(shape) == 0 || shape[len(shape)-1] != n {
				return nil, nil, fmt.Errorf("want a last dimension of %d, got shape %v", n, shape)
			}
			y := make([]float32, len(x))
			for i := range x {
				y[i] = x[i] * w[i%len(w)]
			}
			return y, shape, nil
		})
	})
	if err != nil {
		log.Fatal(err)
	}

	c, err := registry.NewContainer()
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	if err := c.Initialize(pytorchsaver.Spec{Model: "example.Scale", ModelKwargs: map[string]any{"n": 3}}); err != nil {
		log.Fatal(err)
	}
	y, shape, err := c.Forward([]float32{1, 1, 1, 2, 2, 2}, []int64{2, 3})
	fmt.Println(y, shape, err)
	_, _, err = c.Forward([]float32{1, 1}, []int64{1, 2})
	fmt.Println(errors.Is(err, pytorchsaver.ErrCallback))

	// Saved, and loaded back for concurrent inference.
	dir, err := os.MkdirTemp("", "pytorch-saver-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	path, err := c.SaveInference(dir, "scale", nil)
	if err != nil {
		log.Fatal(err)
	}
	m, _, err := registry.LoadModel(path, pytorchsaver.LoadOptions{})
	if err != nil {
		log.Fatal(err)
	}
	defer m.Close()
	y, _, err = m.Forward([]float32{2, 2, 2}, []int64{1, 3})
	fmt.Println(m.Class(), m.Concurrent(), y, err)
	// Output:
	// [1 2 3 2 4 6] [2 3] <nil>
	// true
	// example.Scale true [2 4 6] <nil>
}
