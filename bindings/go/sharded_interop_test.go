package pytorchsaver

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// trainedBy4PythonRanks runs the Python package's 4-rank test script
// (gloo processes, FSDP2) that trains, saves sharded and records what the
// ranks held; it returns the output directory's train.json.
func trainedBy4PythonRanks(t *testing.T) (dir string, run map[string]any) {
	t.Helper()
	dir = t.TempDir()
	script := filepath.Join(repoRoot, "bindings", "python", "tests", "sharded_ranks.py")
	cmd := exec.Command(venvPython(t), script, "train_save", "--world", "4", "--out", dir)
	cmd.Env = append(os.Environ(), "OMP_NUM_THREADS=1")
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("the Python ranks: %v", err)
	}
	raw, err := os.ReadFile(filepath.Join(dir, "train.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &run); err != nil {
		t.Fatal(err)
	}
	return dir, run
}

func float32Matrix(t *testing.T, v any) (flat []float32, rows int64) {
	t.Helper()
	for _, row := range v.([]any) {
		rows++
		for _, x := range row.([]any) {
			flat = append(flat, float32(x.(float64)))
		}
	}
	return flat, rows
}

// Go opens the index that 4 Python ranks wrote: every tensor equals what
// the ranks held; the consolidated file serves the model with the sharded
// model's outputs.
func TestShardedWrittenByPythonRanksReadsAndServesInGo(t *testing.T) {
	dir, run := trainedBy4PythonRanks(t)
	index := run["index"].(string)
	sharded, err := OpenSharded(index)
	if err != nil {
		t.Fatal(err)
	}
	defer sharded.Close()
	if err := sharded.Verify(); err != nil {
		t.Fatal(err)
	}
	if got := sharded.Index().WorldSize; got != 4 {
		t.Fatalf("world size %d", got)
	}
	expected, err := OpenCheckpoint(run["expected"].(string))
	if err != nil {
		t.Fatal(err)
	}
	defer expected.Close()
	names, err := expected.TensorNames(MemberModel)
	if err != nil {
		t.Fatal(err)
	}
	got, err := sharded.TensorNames()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(names) {
		t.Fatalf("tensors %v, the ranks held %v", got, names)
	}
	for _, name := range names {
		want, wantShape, err := expected.ReadBytes(MemberModel, name)
		if err != nil {
			t.Fatal(err)
		}
		have, shape, err := sharded.ReadBytes(name)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !bytes.Equal(have, want) || len(shape) != len(wantShape) {
			t.Fatalf("%s differs from what the ranks held", name)
		}
	}

	out := filepath.Join(dir, "consolidated.zip")
	if err := Consolidate(index, out); err != nil {
		t.Fatal(err)
	}
	served, meta, err := LoadContainer(out)
	if err != nil {
		t.Fatal(err)
	}
	defer served.Close()
	if meta["step"] != float64(4) {
		t.Fatalf("metadata %v", meta)
	}
	input, rows := float32Matrix(t, run["input"])
	want, _ := float32Matrix(t, run["output"])
	output, shape, err := served.Forward(input, []int64{rows, int64(len(input)) / rows})
	if err != nil {
		t.Fatal(err)
	}
	if len(shape) != 2 || shape[0] != rows || len(output) != len(want) {
		t.Fatalf("forward shape %v", shape)
	}
	for i := range want {
		if math.Abs(float64(output[i]-want[i])) > 1e-6*math.Max(1, math.Abs(float64(want[i]))) {
			t.Fatalf("output %d: %v, the sharded model's %v", i, output[i], want[i])
		}
	}
}

// Every golden sharded checkpoint (tests/golden/sharded_v1) reads with the
// recorded tensors, bit for bit, and its consolidated file computes the
// recorded output.
func TestShardedGoldenReadsAsRecorded(t *testing.T) {
	sidecars, err := filepath.Glob(filepath.Join(goldenRoot, "sharded_v1", "*.json"))
	if err != nil || len(sidecars) == 0 {
		t.Fatalf("no golden sharded checkpoint: %v", err)
	}
	for _, path := range sidecars {
		raw, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var want struct {
			Index   string                   `json:"index"`
			Tensors map[string]sidecarTensor `json:"tensors"`
			Forward struct {
				Input  []float32 `json:"input"`
				Shape  []int64   `json:"shape"`
				Output []float32 `json:"output"`
			} `json:"forward"`
		}
		if err := json.Unmarshal(raw, &want); err != nil {
			t.Fatal(err)
		}
		index := filepath.Join(goldenRoot, want.Index)
		sharded, err := OpenSharded(index)
		if err != nil {
			t.Fatal(err)
		}
		if err := sharded.Verify(); err != nil {
			t.Fatal(err)
		}
		for name, tensor := range want.Tensors {
			have, _, err := sharded.ReadBytes(name)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if hex.EncodeToString(have) != tensor.Hex {
				t.Fatalf("%s: %s differs from the recorded bytes", path, name)
			}
		}
		sharded.Close()
		out := filepath.Join(t.TempDir(), "whole.zip")
		if err := Consolidate(index, out); err != nil {
			t.Fatal(err)
		}
		served, _, err := LoadContainer(out)
		if err != nil {
			t.Fatal(err)
		}
		output, _, err := served.Forward(want.Forward.Input, want.Forward.Shape)
		served.Close()
		if err != nil {
			t.Fatal(err)
		}
		for i, w := range want.Forward.Output {
			if math.Abs(float64(output[i]-w)) > 1e-6*math.Max(1, math.Abs(float64(w))) {
				t.Fatalf("%s: output %d: %v, recorded %v", path, i, output[i], w)
			}
		}
	}
}
