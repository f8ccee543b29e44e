package pytorchsaver

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
)

// ---- index.json alone ----------------------------------------------------

// indexDocument is a valid index of two ranks (a container checkpoint
// when withContainer), as a JSON object to change and marshal.
func indexDocument(withContainer bool) map[string]any {
	doc := map[string]any{
		"format":         "pytorch-saver-sharded",
		"format_version": 1,
		"checkpoint_id":  "0123456789abcdef0123456789abcdef",
		"timestamp":      1795885728,
		"producer":       map[string]any{"library": "pytorch-saver", "version": "0.2.0", "language": "python", "torch_version": "2.13.0"},
		"world_size":     2,
		"shards": []any{
			map[string]any{"file": "shard-00000-of-00002_weights_1795885728.zip", "rank": 0, "size": 1000},
			map[string]any{"file": "shard-00001-of-00002_weights_1795885728.zip", "rank": 1, "size": 1200},
		},
		"tensors": map[string]any{
			"w": map[string]any{"dtype": "F32", "shape": []any{4, 3}, "requires_grad": true, "chunks": []any{
				map[string]any{"offsets": []any{0, 0}, "sizes": []any{2, 3}, "shard": 0, "tensor": "w"},
				map[string]any{"offsets": []any{2, 0}, "sizes": []any{2, 3}, "shard": 1, "tensor": "w"},
			}},
			"step": map[string]any{"dtype": "I64", "shape": []any{}, "requires_grad": false, "chunks": []any{
				map[string]any{"offsets": []any{}, "sizes": []any{}, "shard": 0, "tensor": "step"},
			}},
		},
		"values":       map[string]any{"epoch": 3, "note": "hi"},
		"planner_data": map[string]any{"w": []any{"w"}, "step": []any{"step"}, "epoch": []any{"epoch"}, "note": []any{"note", 0}},
	}
	if withContainer {
		doc["values"] = map[string]any{}
		doc["planner_data"] = map[string]any{"w": []any{"model", "w"}, "step": []any{"model", "step"}}
		doc["container"] = map[string]any{
			"metadata": map[string]any{
				"model_kwargs": map[string]any{"in_features": 3, "out_features": 4},
				"timestamp":    1795885728,
				"__pytorch_saver__": map[string]any{
					"format_version": 2, "kind": "inference",
					"producer": map[string]any{"library": "pytorch-saver", "version": "0.2.0", "language": "python"},
					"model":    map[string]any{"class": "torch.nn.Linear"},
				},
			},
			"placements": map[string]any{"w": map[string]any{"mesh_shape": []any{2}, "placements": []any{"S(0)"}}},
		}
	}
	return doc
}

func marshalIndex(t *testing.T, doc map[string]any) string {
	t.Helper()
	text, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	return string(text)
}

// ParseShardedIndex types every key of section 13.1.
func TestShardedIndexParsesEveryKey(t *testing.T) {
	x, err := ParseShardedIndex(marshalIndex(t, indexDocument(false)))
	if err != nil {
		t.Fatal(err)
	}
	if x.FormatVersion != 1 || x.CheckpointID != "0123456789abcdef0123456789abcdef" || x.WorldSize != 2 ||
		x.Timestamp != 1795885728 || x.Time().Unix() != 1795885728 || x.Container != nil {
		t.Errorf("top level: %+v", x)
	}
	if want := (Producer{Library: "pytorch-saver", Version: "0.2.0", Language: "python", TorchVersion: "2.13.0"}); x.Producer != want {
		t.Errorf("producer %+v, want %+v", x.Producer, want)
	}
	if want := []ShardFile{{"shard-00000-of-00002_weights_1795885728.zip", 0, 1000}, {"shard-00001-of-00002_weights_1795885728.zip", 1, 1200}}; !reflect.DeepEqual(x.Shards, want) {
		t.Errorf("shards %+v, want %+v", x.Shards, want)
	}
	want := map[string]ShardedTensor{
		"w": {DType: Float32, Shape: []int64{4, 3}, RequiresGrad: true, Chunks: []Chunk{
			{Offsets: []int64{0, 0}, Sizes: []int64{2, 3}, Shard: 0, Tensor: "w"},
			{Offsets: []int64{2, 0}, Sizes: []int64{2, 3}, Shard: 1, Tensor: "w"},
		}},
		"step": {DType: Int64, Shape: []int64{}, Chunks: []Chunk{{Offsets: []int64{}, Sizes: []int64{}, Shard: 0, Tensor: "step"}}},
	}
	if !reflect.DeepEqual(x.Tensors, want) {
		t.Errorf("tensors %+v\nwant %+v", x.Tensors, want)
	}
	if !reflect.DeepEqual(x.Values, map[string]any{"epoch": float64(3), "note": "hi"}) {
		t.Errorf("values %#v", x.Values)
	}
	if !reflect.DeepEqual(x.PlannerData["note"], []any{"note", int64(0)}) || !reflect.DeepEqual(x.PlannerData["w"], []any{"w"}) {
		t.Errorf("planner_data %#v", x.PlannerData)
	}

	c, err := ParseShardedIndex(marshalIndex(t, indexDocument(true)))
	if err != nil {
		t.Fatal(err)
	}
	if c.Container == nil || c.Container.Metadata.Internals.Kind != KindInference ||
		c.Container.Metadata.Internals.ModelClass != "torch.nn.Linear" ||
		c.Container.Metadata.ModelKwargs["out_features"] != float64(4) {
		t.Fatalf("container %+v", c.Container)
	}
	if p := c.Container.Placements["w"]; !reflect.DeepEqual(p, Placement{MeshShape: []int64{2}, Placements: []string{"S(0)"}}) {
		t.Errorf("placements %+v", c.Container.Placements)
	}
}

// An index that breaks section 13.1 is refused with the kind the library
// gives, naming the field; a newer format version is refused as such
// before any other key is looked at.
func TestShardedIndexRefusesWhatTheSchemaForbids(t *testing.T) {
	set := func(key string, v any) func(map[string]any) {
		return func(d map[string]any) { d[key] = v }
	}
	chunk := func(f func(map[string]any)) func(map[string]any) {
		return func(d map[string]any) {
			f(d["tensors"].(map[string]any)["w"].(map[string]any)["chunks"].([]any)[0].(map[string]any))
		}
	}
	for _, c := range []struct {
		change      func(map[string]any)
		code        Code
		kind, field string
	}{
		{set("format", "other"), CodeFormat, "Schema", "field format"},
		{set("format_version", 2), CodeUnsupportedVersion, "UnsupportedVersion", "format_version 2"},
		{func(d map[string]any) { d["format_version"] = 7; d["extra"] = 1 }, CodeUnsupportedVersion, "UnsupportedVersion", "format_version 7"},
		{set("format_version", "1"), CodeFormat, "Schema", "field format_version"},
		{set("extra", 1), CodeFormat, "Schema", "field extra: not a key"},
		{func(d map[string]any) { delete(d, "planner_data") }, CodeFormat, "Schema", "field planner_data: missing"},
		{set("checkpoint_id", "0123456789ABCDEF0123456789ABCDEF"), CodeFormat, "Schema", "field checkpoint_id"},
		{set("timestamp", -1), CodeFormat, "Schema", "field timestamp"},
		{set("world_size", 0), CodeFormat, "Schema", "field world_size"},
		{set("shards", []any{map[string]any{"file": "a/b", "rank": 0, "size": 1}}), CodeFormat, "Schema", "shards[0].file"},
		{set("shards", []any{map[string]any{"file": "a", "rank": 2, "size": 1}}), CodeFormat, "Schema", "shards[0].rank"},
		{set("producer", map[string]any{"library": "pytorch-saver", "version": "1"}), CodeFormat, "Schema", "producer.language"},
		{chunk(func(c map[string]any) { c["shard"] = -1 }), CodeFormat, "Schema", `tensors.w.chunks[0].shard`},
		{chunk(func(c map[string]any) { delete(c, "tensor") }), CodeFormat, "Schema", `tensors.w.chunks[0].tensor: missing`},
		{chunk(func(c map[string]any) { c["sizes"] = []any{2, 1.5} }), CodeFormat, "Schema", `tensors.w.chunks[0].sizes[1]`},
		{func(d map[string]any) { d["tensors"].(map[string]any)["w"].(map[string]any)["dtype"] = "F8" }, CodeFormat, "Schema", `tensors.w.dtype`},
		{func(d map[string]any) { d["tensors"].(map[string]any)["w"].(map[string]any)["chunks"] = []any{} }, CodeFormat, "Schema", `tensors.w.chunks`},
		{set("planner_data", map[string]any{"w": []any{}}), CodeFormat, "Schema", `planner_data.w`},
		{set("planner_data", map[string]any{"w": []any{true}}), CodeFormat, "Schema", `planner_data.w[0]`},
		{set("values", []any{}), CodeFormat, "Schema", "field values"},
		{set("container", map[string]any{"metadata": map[string]any{"model_kwargs": map[string]any{}}}), CodeFormat, "Schema", "container.metadata.__pytorch_saver__"},
		{set("container", map[string]any{"metadata": map[string]any{"model_kwargs": []any{}}}), CodeFormat, "Schema", "index.json: container.metadata: metadata.json: field model_kwargs"},
	} {
		doc := indexDocument(false)
		c.change(doc)
		_, err := ParseShardedIndex(marshalIndex(t, doc))
		mustKind(t, err, c.code, c.kind)
		if !strings.Contains(err.Error(), c.field) || !strings.Contains(err.Error(), "index.json") {
			t.Errorf("%v does not name index.json and %q", err, c.field)
		}
	}
	for _, text := range []string{`[]`, `{"format": 1, "format": 2}`, `{} {}`, `{`} {
		_, err := ParseShardedIndex(text)
		mustKind(t, err, CodeFormat, "Json")
	}
}

// ---- refusals before any shard ------------------------------------------

// A location without index.json holds no checkpoint, whatever else it
// holds; arguments C cannot carry are refused in Go.
func TestOpenShardedRefusesALocationWithoutIndex(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "shard-00000-of-00001_weights_1795885728.zip", []byte("left by an interrupted save"))
	_, err := OpenSharded(dir)
	mustKind(t, err, CodeFormat, "NotCommitted")
	if !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), dir) {
		t.Errorf("%v does not match ErrFormat naming %s", err, dir)
	}
	_, err = OpenSharded(filepath.Join(dir, "no", "such"))
	mustKind(t, err, CodeFormat, "NotCommitted")
	_, err = OpenSharded("nul\x00dir")
	mustKind(t, err, CodeInvalidArgument, "InvalidArgument")
	mustKind(t, Consolidate("nul\x00dir", filepath.Join(dir, "out.zip")), CodeInvalidArgument, "InvalidArgument")
	mustKind(t, Consolidate(dir, "nul\x00.zip"), CodeInvalidArgument, "InvalidArgument")
	mustKind(t, Consolidate(dir, filepath.Join(dir, "out.zip")), CodeFormat, "NotCommitted")
	err = Consolidate(dir, filepath.Join(dir, "out.bin"))
	if !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), ".zip") {
		t.Errorf("an output not ending in .zip: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "out.zip")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a refused consolidation left %s: %v", filepath.Join(dir, "out.zip"), err)
	}
}

// Methods on a nil Sharded fail with an error, not a panic.
func TestShardedNilIsAnError(t *testing.T) {
	var s *Sharded
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	_, err := s.TensorNames()
	mustKind(t, err, CodeNullArgument, "NullArgument")
	mustKind(t, s.Verify(), CodeNullArgument, "NullArgument")
}

// ---- the valid sharded checkpoints of tests/corpus/generate.py -----------

// expectedSharded is what generate.py records a valid sharded checkpoint
// holds (<name>.expected.json): its values and its tensors assembled.
type expectedSharded struct {
	Values  map[string]any `json:"values"`
	Tensors map[string]struct {
		DType string    `json:"dtype"`
		Shape []int64   `json:"shape"`
		Data  []float64 `json:"data"`
	} `json:"tensors"`
}

// The valid sharded checkpoints generate.py writes: two ranks each.
const (
	shardedWeights   = "sharded_weights"   // tensors and values
	shardedContainer = "sharded_container" // an MLP with Adam
)

// writeValidSharded runs generate.py --write-valid into a new temporary
// directory and returns it: the valid sharded checkpoints are its
// subdirectories, next to their <name>.expected.json.
func writeValidSharded(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	script := filepath.Join(corpusRoot, "generate.py")
	out, err := exec.Command("python3", script, "--write-valid", dir).CombinedOutput()
	if err != nil {
		t.Fatalf("%s --write-valid: %v\n%s", script, err, out)
	}
	return dir
}

func readExpectedSharded(t *testing.T, dir, name string) expectedSharded {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, name+".expected.json"))
	if err != nil {
		t.Fatal(err)
	}
	var e expectedSharded
	if err := json.Unmarshal(data, &e); err != nil {
		t.Fatalf("%s.expected.json: %v", name, err)
	}
	if len(e.Tensors) == 0 {
		t.Fatalf("%s.expected.json lists no tensor", name)
	}
	return e
}

// littleEndian encodes values as the elements of dtype, as a file holds
// them.
func littleEndian(t *testing.T, dtype DType, values []float64) []byte {
	t.Helper()
	var out []byte
	for _, v := range values {
		switch dtype {
		case Float32:
			out = binary.LittleEndian.AppendUint32(out, math.Float32bits(float32(v)))
		case Float64:
			out = binary.LittleEndian.AppendUint64(out, math.Float64bits(v))
		case Int64:
			out = binary.LittleEndian.AppendUint64(out, uint64(int64(v)))
		case Int32:
			out = binary.LittleEndian.AppendUint32(out, uint32(int32(v)))
		default:
			t.Fatalf("no encoding of %v for the test", dtype)
		}
	}
	return out
}

// readShardedTyped reads a tensor with the typed reader of its dtype, its
// elements as float64s.
func readShardedTyped(s *Sharded, name string, dtype DType) ([]float64, []int64, error) {
	widen := func(v any, shape []int64, err error) ([]float64, []int64, error) {
		if err != nil {
			return nil, nil, err
		}
		var out []float64
		switch v := v.(type) {
		case []float32:
			for _, x := range v {
				out = append(out, float64(x))
			}
		case []float64:
			out = v
		case []int64:
			for _, x := range v {
				out = append(out, float64(x))
			}
		case []int32:
			for _, x := range v {
				out = append(out, float64(x))
			}
		}
		return out, shape, nil
	}
	switch dtype {
	case Float32:
		v, shape, err := s.ReadFloat32(name)
		return widen(v, shape, err)
	case Float64:
		v, shape, err := s.ReadFloat64(name)
		return widen(v, shape, err)
	case Int64:
		v, shape, err := s.ReadInt64(name)
		return widen(v, shape, err)
	case Int32:
		v, shape, err := s.ReadInt32(name)
		return widen(v, shape, err)
	}
	return nil, nil, errorf(CodeInvalidArgument, "no typed reader of %v in the test", dtype)
}

// checkShardedHolds checks that s holds exactly the tensors of want, each
// of its dtype and global shape, assembled to its values.
func checkShardedHolds(t *testing.T, s *Sharded, want expectedSharded) {
	t.Helper()
	names, err := s.TensorNames()
	if err != nil {
		t.Fatal(err)
	}
	var wantNames []string
	for name := range want.Tensors {
		wantNames = append(wantNames, name)
	}
	slices.Sort(wantNames)
	if !slices.Equal(names, wantNames) {
		t.Fatalf("tensors %q, want %q (sorted)", names, wantNames)
	}
	for _, name := range names {
		w := want.Tensors[name]
		dtype := dtypeByName(w.DType)
		info, err := s.TensorInfo(name)
		if err != nil {
			t.Fatal(err)
		}
		wantBytes := littleEndian(t, dtype, w.Data)
		if info.DType != dtype || !slices.Equal(info.Shape, w.Shape) || info.NumBytes != len(wantBytes) {
			t.Errorf("%s: %v %v %d bytes, want %s %v %d bytes", name, info.DType, info.Shape, info.NumBytes, w.DType, w.Shape, len(wantBytes))
		}
		values, shape, err := readShardedTyped(s, name, dtype)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !slices.Equal(values, w.Data) || !slices.Equal(shape, w.Shape) {
			t.Errorf("%s: %v of shape %v, want %v of shape %v", name, values, shape, w.Data, w.Shape)
		}
		raw, shape, err := s.ReadBytes(name)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(raw, wantBytes) || !slices.Equal(shape, w.Shape) {
			t.Errorf("%s: bytes %x, want %x", name, raw, wantBytes)
		}
	}
}

// Both valid sharded checkpoints open, from their directory or their
// index.json, with every tensor assembled to what generate.py put in its
// chunks, their index typed, and pass Verify.
func TestShardedOpensTheValidCheckpoints(t *testing.T) {
	dir := writeValidSharded(t)
	for _, name := range []string{shardedWeights, shardedContainer} {
		want := readExpectedSharded(t, dir, name)
		location := filepath.Join(dir, name)
		for label, at := range map[string]string{name: location, name + "_index.json": filepath.Join(location, "index.json")} {
			t.Run(label, func(t *testing.T) {
				s, err := OpenSharded(at)
				if err != nil {
					t.Fatal(err)
				}
				defer s.Close()
				checkShardedHolds(t, s, want)
				if err := s.Verify(); err != nil {
					t.Fatalf("Verify: %v", err)
				}
				text, err := os.ReadFile(filepath.Join(location, "index.json"))
				if err != nil {
					t.Fatal(err)
				}
				if s.IndexJSON() != string(text) {
					t.Errorf("IndexJSON is not index.json")
				}
				index := s.Index()
				if index.CheckpointID != "0123456789abcdef0123456789abcdef" || index.WorldSize != 2 || len(index.Shards) != 2 ||
					len(index.Tensors) != len(want.Tensors) || index.Producer.Language != "python" {
					t.Errorf("index %+v", index)
				}
				for i, shard := range index.Shards {
					st, err := os.Stat(filepath.Join(location, shard.File))
					if err != nil || st.Size() != shard.Size || shard.Rank != i {
						t.Errorf("shard %d %+v: %v", i, shard, err)
					}
				}
				index.Values["changed"] = true // a copy: the next Index is not changed
				if _, changed := s.Index().Values["changed"]; changed {
					t.Error("Index returns a shared map")
				}
				if !reflect.DeepEqual(s.Index().Values, want.Values) {
					t.Errorf("values %v, want %v", s.Index().Values, want.Values)
				}
				switch name {
				case shardedWeights:
					if index.Container != nil || !reflect.DeepEqual(index.PlannerData["w"], []any{"w"}) {
						t.Errorf("container %+v, planner_data %v", index.Container, index.PlannerData)
					}
				case shardedContainer:
					c := index.Container
					if c == nil || c.Metadata.Internals.Kind != KindCheckpoint || c.Metadata.Internals.ModelClass != "pytorch_saver.models.MLP" ||
						c.Metadata.Internals.Optimizer == nil || c.Metadata.Internals.Optimizer.Class != "torch.optim.Adam" ||
						c.Metadata.ModelKwargs["n_layers"] != float64(1) {
						t.Fatalf("container %+v", c)
					}
					if p := c.Placements["fc1.weight"]; !reflect.DeepEqual(p, Placement{MeshShape: []int64{2}, Placements: []string{"S(0)"}}) {
						t.Errorf("placements %+v", c.Placements)
					}
					if !reflect.DeepEqual(index.PlannerData["model.fc1.weight"], []any{"model", "fc1.weight"}) {
						t.Errorf("planner_data %v", index.PlannerData)
					}
					if chunks := index.Tensors["model.fc1.weight"].Chunks; len(chunks) != 2 || chunks[1].Shard != 1 ||
						!slices.Equal(chunks[1].Offsets, []int64{2, 0}) || !slices.Equal(chunks[1].Sizes, []int64{2, 4}) {
						t.Errorf("chunks of model.fc1.weight %+v", chunks)
					}
				}
			})
		}
	}
}

// The readers' refusals: another dtype, an unknown name, a closed
// checkpoint (whose index stays readable).
func TestShardedReadRefusals(t *testing.T) {
	dir := writeValidSharded(t)
	s, err := OpenSharded(filepath.Join(dir, shardedWeights))
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = s.ReadFloat32("emb")
	mustKind(t, err, CodeInvalidArgument, "InvalidArgument")
	if !strings.Contains(err.Error(), `"emb"`) || !strings.Contains(err.Error(), "I64") {
		t.Errorf("%v does not name the tensor and its dtype", err)
	}
	_, err = s.TensorInfo("no.such")
	mustKind(t, err, CodeNotFound, "TensorNotFound")
	_, _, err = s.ReadBytes("no.such")
	mustKind(t, err, CodeNotFound, "TensorNotFound")
	_, _, err = s.ReadBytes("nul\x00")
	mustKind(t, err, CodeInvalidArgument, "InvalidArgument")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	_, err = s.TensorNames()
	mustKind(t, err, CodeUsage, "Usage")
	_, _, err = s.ReadFloat32("w")
	mustKind(t, err, CodeUsage, "Usage")
	mustKind(t, s.Verify(), CodeUsage, "Usage")
	if s.Index().WorldSize != 2 || !strings.Contains(s.IndexJSON(), "pytorch-saver-sharded") {
		t.Error("the index is gone after Close")
	}
}

// Goroutines read one Sharded at once, each assembling every tensor to
// the same bytes, while another closes it: calls after Close fail with
// ErrUsage, none crashes.
func TestShardedIsSharedBetweenGoroutines(t *testing.T) {
	dir := writeValidSharded(t)
	want := readExpectedSharded(t, dir, shardedContainer)
	s, err := OpenSharded(filepath.Join(dir, shardedContainer))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for round := 0; round < 5; round++ {
				for name, w := range want.Tensors {
					values, _, err := s.ReadFloat32(name)
					if err != nil {
						errs <- err
						return
					}
					for i, v := range values {
						if float64(v) != w.Data[i] {
							errs <- errorf(CodeFormat, "%s[%d] = %v, want %v", name, i, v, w.Data[i])
							return
						}
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	var closers sync.WaitGroup
	for g := 0; g < 4; g++ {
		closers.Add(1)
		go func() {
			defer closers.Done()
			for i := 0; i < 20; i++ {
				if _, _, err := s.ReadBytes("model.fc1.weight"); err != nil && !errors.Is(err, ErrUsage) {
					t.Errorf("a read racing Close: %v", err)
					return
				}
			}
		}()
	}
	s.Close()
	closers.Wait()
}

// A shard whose tensor data lost a bit opens (open reads no tensor data)
// but fails Verify with CrcMismatch naming the shard file, and is not
// consolidated: no output file appears.
func TestShardedVerifyFindsADamagedShard(t *testing.T) {
	dir := writeValidSharded(t)
	location := filepath.Join(dir, shardedWeights)
	index, err := ParseShardedIndex(string(mustRead(t, filepath.Join(location, "index.json"))))
	if err != nil {
		t.Fatal(err)
	}
	shard := filepath.Join(location, index.Shards[0].File)
	data := mustRead(t, shard)
	// w's chunk on rank 0 holds the floats 0..5: flip a bit of 4 and 5.
	needle := littleEndian(t, Float32, []float64{4, 5})
	at := bytes.Index(data, needle)
	if at < 0 || bytes.Count(data, needle) != 1 {
		t.Fatalf("the floats 4, 5 are not once in %s", shard)
	}
	data[at+len(needle)-1] ^= 0x01
	if err := os.WriteFile(shard, data, 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := OpenSharded(location)
	if err != nil {
		t.Fatalf("open reads no tensor data, yet: %v", err)
	}
	defer s.Close()
	err = s.Verify()
	mustKind(t, err, CodeFormat, "CrcMismatch")
	if !strings.Contains(err.Error(), index.Shards[0].File) {
		t.Errorf("%v does not name %s", err, index.Shards[0].File)
	}
	out := filepath.Join(t.TempDir(), "consolidated.zip")
	mustKind(t, Consolidate(location, out), CodeFormat, "CrcMismatch")
	if _, err := os.Stat(out); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a refused consolidation left %s: %v", out, err)
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// Consolidate writes each valid sharded checkpoint as one file that
// OpenCheckpoint opens with the same tensors: the weights one as a
// weights file with the values as user metadata, the container one as a
// checkpoint with its model and optimizer members, which loads as a
// container. An existing output is refused and left as it was.
func TestConsolidateWritesOneFileWithTheSameTensors(t *testing.T) {
	dir := writeValidSharded(t)
	outDir := t.TempDir()
	for _, name := range []string{shardedWeights, shardedContainer} {
		t.Run(name, func(t *testing.T) {
			want := readExpectedSharded(t, dir, name)
			location := filepath.Join(dir, name)
			out := filepath.Join(outDir, name+".zip")
			if err := Consolidate(location, out); err != nil {
				t.Fatal(err)
			}
			ckpt, err := OpenCheckpoint(out)
			if err != nil {
				t.Fatal(err)
			}
			defer ckpt.Close()
			// Each member's tensors, by their name in the sharded checkpoint.
			members := map[Member]string{MemberModel: ""}
			switch name {
			case shardedWeights:
				if ckpt.Kind() != KindWeights || ckpt.ModelClass() != "" {
					t.Errorf("kind %v, class %q", ckpt.Kind(), ckpt.ModelClass())
				}
				if !reflect.DeepEqual(ckpt.UserMetadata(), want.Values) {
					t.Errorf("user metadata %v, want the values %v", ckpt.UserMetadata(), want.Values)
				}
			case shardedContainer:
				members = map[Member]string{MemberModel: "model.", MemberOptimizer: "optimizer."}
				if ckpt.Kind() != KindCheckpoint || ckpt.ModelClass() != "pytorch_saver.models.MLP" ||
					ckpt.OptimizerClass() != "torch.optim.Adam" || ckpt.ModelKwargs()["hidden_dim"] != float64(4) {
					t.Errorf("kind %v, class %q, optimizer %q, kwargs %v", ckpt.Kind(), ckpt.ModelClass(), ckpt.OptimizerClass(), ckpt.ModelKwargs())
				}
			}
			seen := 0
			for member, prefix := range members {
				names, err := ckpt.TensorNames(member)
				if err != nil {
					t.Fatal(err)
				}
				for _, short := range names {
					w, ok := want.Tensors[prefix+short]
					if !ok {
						t.Errorf("%v holds %q, which the sharded checkpoint has not", member, short)
						continue
					}
					seen++
					raw, shape, err := ckpt.ReadBytes(member, short)
					if err != nil {
						t.Fatal(err)
					}
					if !bytes.Equal(raw, littleEndian(t, dtypeByName(w.DType), w.Data)) || !slices.Equal(shape, w.Shape) {
						t.Errorf("%v %s: %x of shape %v, want %v of shape %v", member, short, raw, shape, w.Data, w.Shape)
					}
				}
			}
			if seen != len(want.Tensors) {
				t.Errorf("the file holds %d of the %d tensors", seen, len(want.Tensors))
			}
			if name == shardedContainer {
				c, _, err := LoadContainer(out)
				if err != nil {
					t.Fatalf("LoadContainer of the consolidated file: %v", err)
				}
				w, _, err := c.StateFloat32("fc1.weight")
				c.Close()
				if err != nil || !slices.Equal(float32s(want.Tensors["model.fc1.weight"].Data), w) {
					t.Errorf("the loaded fc1.weight %v (%v), want %v", w, err, want.Tensors["model.fc1.weight"].Data)
				}
			}

			before := mustRead(t, out)
			err = Consolidate(location, out)
			mustKind(t, err, CodeIO, "Io")
			if !strings.Contains(err.Error(), out) {
				t.Errorf("%v does not name %s", err, out)
			}
			if !bytes.Equal(mustRead(t, out), before) {
				t.Error("a refused consolidation changed the existing file")
			}
		})
	}
}

// A tensor is assembled only into memory that the shard files holding
// its chunks pay for: an index whose tensor is larger than those files
// is refused before anything is allocated.
func TestShardedReadAllocatesOnlyWhatTheShardsHold(t *testing.T) {
	x, err := ParseShardedIndex(marshalIndex(t, indexDocument(false)))
	if err != nil {
		t.Fatal(err)
	}
	// w's chunks are in both shards (1000 + 1200 bytes), step's in the first.
	if err := x.checkAffordable("w", 2200); err != nil {
		t.Errorf("w of 2200 bytes: %v", err)
	}
	mustKind(t, x.checkAffordable("w", 2201), CodeFormat, "ShardMismatch")
	err = x.checkAffordable("step", 1001)
	mustKind(t, err, CodeFormat, "ShardMismatch")
	if !strings.Contains(err.Error(), `"step"`) || !strings.Contains(err.Error(), "1000 bytes") {
		t.Errorf("%v does not name the tensor and what its shards hold", err)
	}
}
